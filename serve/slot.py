"""One request inside the running batch: its own strategy (with its own drafter state), KV cache,
random generator, tree policy, statistics and text; the scheduler (serve/scheduler.py) drives it
through prefill -> [draft -> (shared forward) -> verify] ... exactly as compose/engine.py drives a
single stream, so a request's tokens, and with a seed its random draws, are those of
`Composer.generate` whatever else is in the batch."""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from compose.autotree import DEPTHS as AUTO_DEPTHS
from compose.autotree import AutoTree
from compose.composer import Composer, _cut_at_eos, _find_stop, _max_tree_nodes, _tokens_covering
from compose.lockstep import DraftUnit
from compose.options import GenerateOptions
from compose.registry import make_strategy
from compose.strategies import ComposedTree, Strategy
from compose.tree_policy import StepTimes, tree_policy
from compose.types import GenerationStats, StepRecord
from drafters import FeatureDrafterGroup
from drafters.base import Drafter
from runtime.kv import KVCache
from trees import DraftTree, StepFeedback, TreeSpec, pack_tree, process_logits, require_finite_logits, sample, verify

from .batch import Segment, SegmentOutput

# Hugging Face fast tokenizers are not safe to call from two threads at once ("Already borrowed"):
# the HTTP side encodes prompts while the scheduler thread decodes outputs
TOKENIZER_LOCK = threading.Lock()


class RequestError(Exception):
    """A request that cannot be served, with the HTTP status its client gets."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


@dataclass
class Event:
    """What the scheduler thread tells the HTTP side about one request."""

    kind: str  # "text" (a new piece), "done" (finished: `slot` holds the result) or "error"
    text: str = ""
    error: RequestError | None = None


@dataclass
class Slot:
    prompt_ids: torch.Tensor
    strategy_name: str
    strategy_args: dict[str, Any]
    opts: GenerateOptions
    emit: Callable[[Event], None]  # thread-safe delivery to the request's HTTP handler
    seed: int  # the request's seed, or a fresh random one: every request draws from its own generator
    stream: bool = True  # False: the client takes the whole text at the end ("text" events are not sent)
    cancelled: bool = False  # set by the HTTP side when the client goes away
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` sent as "text" events
    finish: str | None = None  # "eos" | "stop" | "length"
    created: float = field(default_factory=time.perf_counter)

    # --- set up in the scheduler thread -----------------------------------------------------------
    def setup(self, composer: Composer, new_cache: Callable[[int], KVCache] | None = None) -> None:
        """Build this request's strategy over private copies of the drafters (their state is
        per request, their weights shared), its tree policy and its cache (from `new_cache`:
        the scheduler's pool)."""
        self.composer = composer
        self.target = composer.target
        plan = make_strategy(self.strategy_name, composer.drafters, self.opts.tree, composer.strategy_cache,
                             **self.strategy_args)
        self.plan = own_drafter_state(plan)
        self.tree = tree_policy(composer, self.strategy_name, self.plan, self.opts, self.strategy_args)
        self.auto = self.tree if isinstance(self.tree, AutoTree) else None
        self.sampling = self.opts.sampling()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.stats = GenerationStats(strategy=self.strategy_name)
        self.layers = self.plan.target_layers
        n = int(self.prompt_ids.numel())
        capacity = n + self.opts.max_new_tokens + _max_tree_nodes(self.opts, len(composer.drafters))
        self.cache = (new_cache or self.target.decoder.new_cache)(max(capacity, n + 64))
        self.root: int | None = None
        self.start = time.perf_counter()
        # a `sum` merge verifies every drafter's tree: a cap on the verified nodes splits between them
        self.width = self.plan.tree_width()
        self.node_cap: int | None = None  # set by the scheduler each step (serve/scheduler.py BatchTrees)
        self.batched = 1

    @property
    def prefilled(self) -> bool:
        return self.root is not None

    # --- one step: the rows this request adds to the shared forward, then what it does with them ---
    def segment(self) -> Segment:
        if not self.prefilled:
            n = int(self.prompt_ids.numel())
            return Segment(self.prompt_ids, torch.arange(n), self.cache, None, slice(n - 1, n), self.layers)
        t0 = time.perf_counter()
        chosen = self.tree.choose()
        self.spec = cap_tree(chosen, self.node_cap // self.width) if self.node_cap is not None else chosen
        # tree="auto" learns acceptance and costs from single-stream steps only: a capped tree is
        # not one it chose, and a batched forward's time is not its own
        self.chosen = chosen
        self.learn = self.auto is not None and self.spec == chosen and self.batched == 1
        if self.spec is None:
            self.proposal = ComposedTree(DraftTree.root_only(self.root))
        else:
            self.proposal = self.plan.compose_tree(self.root, self.spec, self.sampling, self.generator)
        self.t_draft = time.perf_counter() - t0
        self.prefix_len = self.cache.length
        packed = pack_tree(self.proposal.tree, self.prefix_len, self.target.dtype)
        n = int(packed.input_ids.numel())
        return Segment(packed.input_ids, packed.position_ids, self.cache, None if n == 1 else packed.attention_mask,
                       None, self.layers)

    def consume(self, out: SegmentOutput, t_forward: float) -> None:
        if not self.prefilled:
            require_finite_logits(out.logits[-1:], "the target's prefill forward")
            self.root = int(sample(process_logits(out.logits[-1], self.sampling), self.generator))
            self.plan.start(self.prompt_ids, out.hidden_states or None)
            self.stats.prefill_time = time.perf_counter() - self.start
            self._add([self.root])
            return
        t0 = time.perf_counter()
        tree, hidden = self.proposal.tree, out.hidden_states or None
        result = verify(tree, out.logits, self.sampling, self.generator)
        self.cache.keep(self.prefix_len, result.path.to(torch.long))
        self.plan.advance(result.tokens, hidden, result.path)
        self.plan.observe(StepFeedback(
            tree=tree, path=result.path, tokens=result.tokens, bonus=result.bonus, logits=out.logits,
            sampling=self.sampling, drafter_trees=self.proposal.drafter_trees, hidden_states=hidden,
            prefix_length=self.prefix_len))
        t_verify = time.perf_counter() - t0
        if self.learn:
            self.auto.observe(self.spec, tree, result.path, StepTimes(self.t_draft, t_forward, t_verify))
        elif self.auto is not None and self.spec is not None and self.spec == self.chosen:
            self.auto.acceptance.observe(tree, result.path)  # acceptance does not depend on the batch
        path = result.path.tolist()
        self.stats.steps.append(StepRecord(
            accepted=result.accepted, tree_size=len(tree), drafter=self.proposal.drafter,
            accepted_by=[sorted(tree.proposers_of(n)) for n in path[1:]],
            draft_groups=self.proposal.draft_groups if self.proposal.draft_groups is not None
            else [[n] for n in self.proposal.drafter_trees],
            t_draft=self.t_draft, t_verify=t_verify, t_forward=t_forward))
        self.root = result.bonus
        self._add(result.tokens[1:].tolist() + [self.root])

    def _add(self, chunk: list[int]) -> None:
        """Append emitted tokens and send the new text; sets `finish` (as Composer.generate does:
        EOS kept in the tokens, a stop string cut from the text and its tokens)."""
        opts, tokens = self.opts, self.tokens
        tokens.extend(chunk)
        del tokens[opts.max_new_tokens :]
        if _cut_at_eos(tokens, self.composer.eos_ids):
            self.finish = "eos"
        elif len(tokens) >= opts.max_new_tokens:
            self.finish = "length"
        with TOKENIZER_LOCK:
            new_text = self.composer._decode(tokens)
            if opts.stop:
                cut = _find_stop(new_text, opts.stop, len(self.text))
                if cut is not None:
                    new_text, self.finish = new_text[:cut], "stop"
                    self.tokens = _tokens_covering(tokens, cut, self.composer._decode)
        self.text = new_text
        # a stream cannot take back what it sent: hold back a tail that may still turn out to be
        # the start of a stop string, or an incomplete UTF-8 sequence (decoded as U+FFFD for now)
        hold = 0
        if self.finish is None:
            hold = max((len(s) for s in opts.stop), default=1) - 1
            hold = max(hold, len(new_text) - len(new_text.rstrip("\ufffd")))
        upto = len(new_text) - hold
        if upto > self.sent and self.stream:
            self.emit(Event("text", new_text[self.sent : upto]))
            self.sent = upto
        if self.finish is not None:
            self.stats.new_tokens = len(self.tokens)
            self.stats.total_time = time.perf_counter() - self.start
            self.emit(Event("done"))

    # --- what the response reports ----------------------------------------------------------------
    def usage(self) -> dict[str, Any]:
        steps = self.stats.steps
        drafted = sum(s.tree_size - 1 for s in steps)
        accepted = sum(s.accepted for s in steps)
        prompt = int(self.prompt_ids.numel())
        tau = self.stats.tau
        return {
            "prompt_tokens": prompt, "completion_tokens": len(self.tokens), "total_tokens": prompt + len(self.tokens),
            "drafted": drafted, "accepted": accepted, "tau": None if tau != tau else round(tau, 4), "steps": len(steps),
        }


def cap_tree(spec: TreeSpec | None, nodes: int) -> TreeSpec | None:
    """`spec` cut to at most `nodes` draft nodes (None: no drafting, the root alone). A sampled
    tree is kept as asked: its shape decides which random draws its verification consumes, so
    changing it with the batch would make a seeded request's output depend on its neighbours. A
    top-k tree's shape never changes a seeded output (each emitted token is the inverse CDF of one
    uniform at its own prefix, drafted or not), so it may shrink freely."""
    if spec is None or spec.sampled:
        return spec
    if nodes < 1:
        return None
    return dataclasses.replace(spec, depth=min(spec.depth, nodes), top_k=min(spec.top_k, nodes),
                               budget=min(spec.budget, nodes))


def own_drafter_state(plan: Strategy) -> Strategy:
    """Give `plan` its own shallow copy of every drafter (and lockstep group) it holds: weights
    stay shared, but `start` gives each copy its own cache and queues, so concurrent requests
    never see each other's drafting state. One object registered under several names (or held
    both in `drafters` and in a draft unit) maps to one copy, as the strategy expects."""
    memo: dict[int, Any] = {}

    def own(obj):
        if isinstance(obj, (Drafter, FeatureDrafterGroup)):
            if id(obj) not in memo:
                memo[id(obj)] = copy.copy(obj)
            return memo[id(obj)]
        if isinstance(obj, DraftUnit):
            runner = own(obj.runner)
            return obj if runner is obj.runner else DraftUnit(list(obj.names), runner)
        if isinstance(obj, (list, tuple)):
            items = [own(v) for v in obj]
            return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
        if isinstance(obj, dict):
            items = {k: own(v) for k, v in obj.items()}
            return obj if all(items[k] is v for k, v in obj.items()) else items
        return obj

    for name, value in list(vars(plan).items()):
        setattr(plan, name, own(value))
    return plan


def new_slot(composer: Composer, prompt, strategy: str | None, emit: Callable[[Event], None],
             options: dict[str, Any], fit_context: bool = False, stream: bool = True) -> Slot:
    """A request validated as `Composer.generate` validates its arguments (ValueError: the
    request is malformed): strategy name and options, generate options over the Composer's
    defaults, the prompt (text, chat messages or ids) and its length against the context.
    fit_context: max_new_tokens was not asked for, so the default is cut to what the context
    leaves after the prompt (an explicit one past the context is an error). stream: whether the
    client reads the text as it comes (else only the "done" or "error" event is sent)."""
    from compose.registry import default_strategy, strategy_class, strategy_options

    name = strategy or composer.strategy or default_strategy(composer.drafters)
    strategy_class(name)  # unknown names fail here, before anything is queued
    reason = composer.unavailable(name)
    if reason is not None:
        raise ValueError(reason)
    strategy_args, generate_args = strategy_options(name, options)
    drafter = strategy_args.get("drafter")
    if drafter is not None and drafter not in composer.drafters:
        raise ValueError(f"unknown drafter {drafter!r}; this server's drafters: {sorted(composer.drafters)}")
    opts = GenerateOptions(**{**composer.defaults, **generate_args})
    with TOKENIZER_LOCK:
        prompt_ids = composer.encode(prompt, opts.chat)
    ctx = composer.target.context_length
    if fit_context and ctx is not None:
        depth = max(AUTO_DEPTHS) if opts.tree.auto else opts.tree.depth
        room = ctx - int(prompt_ids.numel()) - depth - 1
        if 1 <= room < opts.max_new_tokens:
            opts = opts.model_copy(update={"max_new_tokens": room})
    composer._check_length(prompt_ids, opts)
    seed = opts.seed if opts.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    return Slot(prompt_ids, name, strategy_args, opts, emit, seed, stream=stream)
