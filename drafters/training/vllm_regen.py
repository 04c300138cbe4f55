"""Regeneration through vLLM (`regen_engine: "vllm"` in the suite), for a team whose target is
large and whose machines have vLLM installed: continuous batching instead of transformers'
padded `generate` (benchmarks/bench_regeneration.py measured vLLM's CPU build at 1.7x the best
batched `generate` on 2 cores; on GPUs the gap is larger). vLLM is an optional extra: nothing
imports it unless this engine is asked for, and asking without it installed is an error that
names the install, never a silent fall-back.

The generator has the signature `regenerate_corpus` calls for one batch:
    generate(prompt_ids: list[list[int]], eos: set[int], max_new_tokens, temperature, seed) -> answers
and returns each answer's token ids up to and including its first end-of-sequence token, as the
transformers path does. Greedy answers of the two engines agree up to float rounding near ties.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMGenerator:
    """One vLLM engine over the target folder, reused for every batch of the suite."""

    def __init__(self, model_path: str | Path, dtype: str = "auto", **engine_args):
        if not vllm_installed():
            raise ValueError("regen_engine 'vllm' needs vLLM: pip install vllm (on a CPU-only machine its CPU build, "
                             "in its own environment: docs/serving.md)")
        from vllm import LLM

        self.llm = LLM(model=str(model_path), dtype=dtype, **engine_args)

    def __call__(self, prompt_ids: list[list[int]], eos: set[int], max_new_tokens: int, temperature: float,
                 seed: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, stop_token_ids=sorted(eos),
                                seed=seed if temperature > 0 else None)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        return [answer_ids(out.outputs[0], eos) for out in outputs]


def answer_ids(completion, eos: set[int]) -> list[int]:
    """A completion's token ids cut after the first end-of-sequence token; vLLM leaves the token
    that stopped it out of `token_ids` in some versions, so a stop on an EOS id puts it back."""
    ids = list(completion.token_ids)
    cut = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
    if cut is not None:
        return ids[:cut]
    stop = getattr(completion, "stop_reason", None)
    if getattr(completion, "finish_reason", None) == "stop" and isinstance(stop, int) and stop in eos:
        ids.append(stop)
    return ids
