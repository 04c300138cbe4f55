"""Composer: a loaded target plus named drafters, generating with any strategy."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import PreTrainedModel

from drafters.base import Drafter
from routing import Calibration, DomainRouter
from runtime.target_dtype import require_exact_bf16, resolve_dtype

from .autotree import DEPTHS as AUTO_DEPTHS
from .autotree import MAX_NODES as AUTO_MAX_NODES
from .engine import decode
from .options import GenerateOptions
from .registry import default_strategy, make_drafter, make_strategy, strategy_class, strategy_options
from .target import TargetModel
from .threads import ThreadPolicy, default_threads
from .tree_policy import tree_policy
from .types import GenerationResult, GenerationStats

Prompt = str | Sequence[Mapping[str, str]] | torch.Tensor | Sequence[int]


class Composer:
    """`Composer(target, drafters={"math": ..., "chat": ...}, strategy="merged_tree")`.

    target: a built-in name (see runtime.assets.BUILTIN_MODELS), a local transformers folder, or
    a loaded PreTrainedModel (pass `tokenizer=` to use text prompts). drafters: name -> Drafter
    or a spec string ("early-exit:8", "lm:qwen2.5-coder-0.5b-instruct", "eagle:/path/to/ckpt").
    strategy: the default for generate() (None: compose.registry.default_strategy of the drafters).
    domain_router: the `domain` strategy's classifier (a routing.DomainRouter or its file;
    default: the one shipped with a built-in target's drafters, if any). calibration: the
    starting fits of the calibrated routing signals (a routing.Calibration or its file; default:
    the fits shipped with a built-in target's drafters, for those of them given under their
    shipped names and specs, else unfitted); they keep learning from
    every verified step of the confidence and entropy strategies (`save_calibration`).
    threads: torch intra-op threads while generating: "auto" (the cores no other process is
    running on, rechecked during the run; compose/threads.py), a number, or None (leave torch's
    setting); default $SPECMUX_THREADS, else "auto".
    dtype: the target's arithmetic: "auto" (default: bfloat16 where the hardware multiplies it
    natively and the batch-invariant forward holds, which keeps greedy output token-identical to
    plain decoding; float32 elsewhere), "float32" or "bfloat16" (refused where it would not be
    exact). A loaded model passed as `target` keeps its dtype under "auto" and is converted in
    place when another is asked for.
    Drafters keep their own dtype (compose/registry.py)."""

    def __init__(
        self,
        target: str | Path | PreTrainedModel = "smollm2-135m-instruct",
        drafters: Mapping[str, Drafter | str] | None = None,
        strategy: str | None = None,
        tokenizer=None,
        domain_router=None,
        calibration=None,
        threads: int | str | None = "default",
        dtype: str | torch.dtype = "auto",
        **defaults: Any,
    ):
        self.threads = default_threads() if threads == "default" else threads
        ThreadPolicy(self.threads)  # validates
        if isinstance(target, PreTrainedModel):
            model = target
            param = next(model.parameters())
            want = param.dtype if dtype == "auto" else resolve_dtype(dtype, param.device)
            if want == torch.bfloat16:
                require_exact_bf16(param.device)
            if param.dtype != want:
                model.to(want)
        else:
            from transformers import AutoConfig

            from runtime.assets import load_target, resolve_model_dir

            folder = resolve_model_dir(target)  # once: a built-in's cache check reads its files
            model_type = AutoConfig.from_pretrained(folder).model_type
            model, loaded_tokenizer = load_target(folder, dtype=resolve_dtype(dtype, model_type=model_type))
            tokenizer = tokenizer or loaded_tokenizer
        self.target = TargetModel(model, tokenizer)
        self.tokenizer = tokenizer
        self.drafters: dict[str, Drafter] = {}
        self._strategy_cache: dict = {}
        for name, d in (drafters or {}).items():
            self.add_drafter(name, d)
        self.strategy = strategy
        from .defaults import DOMAIN_ROUTER_FILE, shipped_calibration, shipped_routing_file

        domain_router = domain_router if domain_router is not None else shipped_routing_file(target, DOMAIN_ROUTER_FILE)
        self.domain_router = DomainRouter.load(domain_router) if isinstance(domain_router, (str, Path)) else domain_router
        if calibration is None:
            self.calibration = shipped_calibration(target, drafters or {})
        else:
            self.calibration = Calibration.load(calibration) if isinstance(calibration, (str, Path)) else calibration
        self.defaults = GenerateOptions(**defaults).model_dump(exclude_unset=True)
        self.eos_ids = _eos_ids(model, tokenizer)

    def add_drafter(self, name: str, drafter: Drafter | str) -> Drafter:
        if isinstance(drafter, str):
            drafter = make_drafter(drafter, self.target, name)
        _check_compatible(name, drafter, self.target)
        self.drafters[name] = drafter
        self._strategy_cache.clear()
        return drafter

    @property
    def strategy_cache(self) -> dict:
        """State strategies keep across generations (derived drafters, routing statistics) and the
        routing assets they read (the domain router)."""
        self._strategy_cache["domain_router"] = self.domain_router
        self._strategy_cache["calibration"] = self.calibration
        return self._strategy_cache

    def save_calibration(self, path: str | Path) -> Path:
        """Write the calibrated signals' fits (e.g. to ship beside the drafters as calibration.json)."""
        return self.calibration.save(path)

    def unavailable(self, strategy: str) -> str | None:
        """Why `strategy` cannot run with this Composer's drafters and routing assets (None: it can)."""
        return strategy_class(strategy).unavailable(self.drafters, self.strategy_cache)

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompt: Prompt, strategy: str | None = None, **options: Any) -> GenerationResult:
        stream = self._run(prompt, strategy, options)
        for _ in stream:
            pass
        return self._last_result

    def stream(self, prompt: Prompt, strategy: str | None = None, **options: Any) -> Iterator[str]:
        """Yield text as it is accepted; `last_result` holds the result afterwards, also when the
        consumer stops early (finish_reason "interrupted", the tokens generated so far)."""
        yield from self._run(prompt, strategy, options)

    @property
    def last_result(self) -> GenerationResult | None:
        return getattr(self, "_last_result", None)

    def _run(self, prompt: Prompt, strategy: str | None, options: Mapping[str, Any]) -> Iterator[str]:
        self._last_result = None  # never a previous generation's result
        strategy_name = strategy or self.strategy or default_strategy(self.drafters)
        strategy_args, generate_args = strategy_options(strategy_name, options)
        opts = GenerateOptions(**{**self.defaults, **generate_args})
        plan = make_strategy(strategy_name, self.drafters, opts.tree, self.strategy_cache, **strategy_args)
        prompt_ids = self.encode(prompt, opts.chat)
        self._check_length(prompt_ids, opts)
        generator = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None

        stats = GenerationStats(strategy=strategy_name)
        tokens: list[int] = []
        text, finish = "", None
        policy = tree_policy(self, strategy_name, plan, opts, strategy_args)  # a first tree="auto" measures the machine (not timed)
        start = time.perf_counter()
        capacity = int(prompt_ids.numel()) + opts.max_new_tokens + _max_tree_nodes(opts, len(self.drafters))
        steps = decode(self.target, plan, prompt_ids, policy, opts.sampling(), stats, generator, capacity,
                       ThreadPolicy(self.threads))
        try:
            for chunk in steps:
                tokens.extend(chunk)
                del tokens[opts.max_new_tokens :]
                if _cut_at_eos(tokens, self.eos_ids):
                    finish = "eos"
                elif len(tokens) >= opts.max_new_tokens:
                    finish = "length"
                else:
                    finish = None
                new_text = self._decode(tokens)
                if opts.stop:
                    cut = _find_stop(new_text, opts.stop, len(text))
                    if cut is not None:
                        new_text, finish = new_text[:cut], "stop"
                        tokens = _tokens_covering(tokens, cut, self._decode)
                if new_text.startswith(text) and len(new_text) > len(text):
                    piece, text = new_text[len(text) :], new_text
                    yield piece
                text = new_text
                if finish is not None:
                    break
        except GeneratorExit:  # the consumer stopped the stream: record what it received
            finish = "interrupted"
            raise
        finally:
            steps.close()
            stats.total_time = time.perf_counter() - start
            stats.new_tokens = len(tokens)
            stats.routing = plan.routing_log
            if finish is not None:
                self._last_result = GenerationResult(
                    text=text, token_ids=tokens, prompt_ids=prompt_ids.tolist(), finish_reason=finish, stats=stats
                )

    # --- prompts --------------------------------------------------------------------------------
    def encode(self, prompt: Prompt, chat: bool = False) -> torch.Tensor:
        """Prompt (text, chat messages or ids) -> int64 token ids, validated."""
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() == 2 and prompt.shape[0] != 1:
                raise ValueError(f"batch generation is not supported: pass one prompt (got a batch of {prompt.shape[0]})")
            ids = prompt.reshape(-1).to(torch.long)
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("prompt is empty")
            self._need_tokenizer()
            if chat:
                ids = self._apply_chat([{"role": "user", "content": prompt}])
            else:
                ids = torch.tensor(self.tokenizer(prompt, add_special_tokens=True)["input_ids"], dtype=torch.long)
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
            self._need_tokenizer()
            ids = self._apply_chat(list(prompt))
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(t, str) for t in prompt):
            raise ValueError(f"batch generation is not supported: pass one prompt (got a list of {len(prompt)} prompts)")
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            ids = torch.tensor(list(prompt), dtype=torch.long)
        else:
            raise ValueError(f"prompt must be text, chat messages or token ids, got {type(prompt).__name__}")
        if ids.numel() == 0:
            raise ValueError("prompt is empty")
        if (ids < 0).any() or (ids >= self.target.vocab_size).any():
            raise ValueError(f"prompt has token ids outside the target vocabulary [0, {self.target.vocab_size})")
        return ids

    def _apply_chat(self, messages: list[Mapping[str, str]]) -> torch.Tensor:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this target's tokenizer has no chat template: pass the prompt as text")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return torch.tensor(ids, dtype=torch.long).reshape(-1)

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer: pass tokenizer= or give token ids")

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""

    def _check_length(self, prompt_ids: torch.Tensor, opts: GenerateOptions) -> None:
        ctx = self.target.context_length
        if ctx is None:
            return
        n = int(prompt_ids.numel())
        if n >= ctx:
            raise ValueError(f"prompt is {n} tokens long; the target's context is {ctx} tokens")
        depth = max(AUTO_DEPTHS) if opts.tree.auto else opts.tree.depth
        need = n + opts.max_new_tokens + depth + 1
        if need > ctx:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({opts.max_new_tokens}) + draft depth "
                f"({depth + 1}) exceeds the target's context of {ctx} tokens"
            )


def _max_tree_nodes(opts: GenerateOptions, n_drafters: int) -> int:
    """Most nodes one verified tree can have (a `sum` merge keeps every drafter's budget)."""
    return 1 + (AUTO_MAX_NODES if opts.tree.auto else opts.tree.budget) * max(1, n_drafters)


def _eos_ids(model: PreTrainedModel, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> bool:
    """Truncate after the first EOS (kept, as transformers' generate keeps it)."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            del tokens[i + 1 :]
            return True
    return False


def _find_stop(text: str, stops: list[str], searched: int) -> int | None:
    # a stop string may straddle the previous chunk, so look back by the longest stop's length
    begin = max(0, searched - max(len(s) for s in stops))
    hits = [i for s in stops if (i := text.find(s, begin)) >= 0]
    return min(hits) if hits else None


def _tokens_covering(tokens: list[int], n_chars: int, decode) -> list[int]:
    """The shortest token prefix whose text reaches `n_chars` characters."""
    for k in range(len(tokens) + 1):
        if len(decode(tokens[:k])) >= n_chars:
            return tokens[:k]
    return tokens


def _check_compatible(name: str, drafter: Drafter, target: TargetModel) -> None:
    if drafter.vocab_size != target.vocab_size:
        raise ValueError(
            f"drafter {name!r} proposes into a vocabulary of {drafter.vocab_size} tokens but the "
            f"target's has {target.vocab_size}: it was built for another target"
        )
    if drafter.target_hidden_size is not None and drafter.target_hidden_size != target.hidden_size:
        raise ValueError(
            f"drafter {name!r} reads target hidden states of size {drafter.target_hidden_size} but "
            f"the target's hidden size is {target.hidden_size}: it was built for another target"
        )
    for layer in drafter.target_layers or ():
        if not -target.num_layers - 1 <= layer <= target.num_layers:
            raise ValueError(f"drafter {name!r} reads target layer {layer}, which this target does not have")
