"""`specmux route`: fit the `domain` strategy's classifier for a target from its drafters'
training domains (the prompt sources drafters.training.suite trains on), report its accuracy on held-out training
prompts and on the evaluation benchmarks (GSM8K -> math, MT-Bench -> chat), and store it beside
the drafters."""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from routing import fit_domain_router
from routing.domain import DomainRouter, prompt_features

EVAL_DOMAINS = {"gsm8k": "math", "mt_bench": "chat"}  # evaluation benchmark -> the domain it belongs to


def default_domains(target: str) -> dict[str, str]:
    """Drafter name -> training domain of every shipped drafter of `target` trained on one domain."""
    from drafters.pretrained import PRETRAINED_DIR, pretrained_index

    out = {}
    for name in pretrained_index().get(target, []):
        config = json.loads((PRETRAINED_DIR / target / name / "config.json").read_text())
        domain = (config.get("training") or {}).get("domain", name)  # the recipe it was trained with
        if domain in ("math", "chat"):
            out[name] = domain
    return out


def training_prompts(domain: str, n: int, seed: int) -> list:
    """Prompts of a drafter training domain from the sources the shipped drafters were trained on
    (drafters.training.suite): math = templated word problems (3/4) and reasoning-gym questions (1/4);
    chat = ShareGPT turns (some with their conversation so far, as message lists)."""
    from drafters.training.data import chat_turns, math_prompts
    from drafters.training.word_problems import word_problems

    if domain == "math":
        return word_problems(n - n // 4, seed) + math_prompts(n // 4, seed)
    if domain == "chat":
        return chat_turns(n, seed)
    raise ValueError(f"a domain router is fitted from 'math' or 'chat' prompts, got domain {domain!r}")


def prompt_ids(tokenizer, prompt) -> torch.Tensor:
    """A user prompt (text, or a conversation ending with the user's turn) through the chat template."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return torch.tensor(ids["input_ids"] if isinstance(ids, dict) else ids)


def domain_features(model, tokenizer, domain: str, n: int, seed: int, layer: int) -> torch.Tensor:
    return prompt_features(model, [prompt_ids(tokenizer, p) for p in training_prompts(domain, n, seed)], layer)


def accuracy(router: DomainRouter, features: dict[str, torch.Tensor]) -> float:
    hits = total = 0
    for name, rows in features.items():
        for row in rows:
            probs = router.probabilities(row)
            hits += max(probs, key=probs.get) == name
            total += 1
    return hits / total if total else float("nan")


def eval_accuracy(router: DomainRouter, model, tokenizer, domains: dict[str, str], layer: int) -> dict[str, float]:
    """Per evaluation benchmark: the share of its prompts routed to the drafter of its domain."""
    from drafters.training.data import eval_prompts

    prompts = eval_prompts()
    by_domain = {d: n for n, d in domains.items()}
    return {f"{bench} -> {by_domain[domain]}": accuracy(router, {by_domain[domain]: prompt_features(
                model, [prompt_ids(tokenizer, p) for p in prompts[bench]], layer)})
            for bench, domain in EVAL_DOMAINS.items() if domain in by_domain and prompts.get(bench)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="specmux route", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--drafter", action="append", default=[], metavar="NAME=DOMAIN",
                   help="a drafter and its training domain, e.g. math=math (repeatable; default: the shipped ones)")
    p.add_argument("--prompts", type=int, default=200, help="training prompts per domain")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (0: the drafters' own training prompts)")
    p.add_argument("--layer", type=int, default=-1, help="target hidden-state layer (-1: final)")
    p.add_argument("--out", type=Path, default=None, help="default: beside the target's shipped drafters")
    args = p.parse_args(argv)

    from .defaults import DOMAIN_ROUTER_FILE
    from runtime.assets import load_target

    try:
        domains = dict(d.split("=", 1) for d in args.drafter) if args.drafter else default_domains(args.target)
        if len(domains) < 2:
            raise ValueError(f"a domain router needs at least two drafters with a training domain, got {domains}")
        out = args.out
        if out is None:
            from drafters.pretrained import PRETRAINED_DIR

            out = PRETRAINED_DIR / args.target / DOMAIN_ROUTER_FILE
        model, tokenizer = load_target(args.target)
        feats = {n: domain_features(model, tokenizer, d, args.prompts, args.seed, args.layer) for n, d in domains.items()}
    except ValueError as e:
        print(f"specmux route: error: {e}", file=sys.stderr)
        return 2
    held = {n: random.Random(args.seed).sample(range(len(f)), len(f) // 5) for n, f in feats.items()}
    train = {n: f[[i for i in range(len(f)) if i not in set(held[n])]] for n, f in feats.items()}
    report = {"held_out_accuracy": accuracy(fit_domain_router(train, args.layer), {n: f[held[n]] for n, f in feats.items()})}
    router = fit_domain_router(feats, args.layer)
    report["eval_accuracy"] = eval_accuracy(router, model, tokenizer, domains, args.layer)
    router.save(out)
    print(json.dumps({"domains": domains, "prompts_per_domain": args.prompts, **report, "saved": str(out)}, indent=2))
    return 0
