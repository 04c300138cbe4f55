"""Strategies that route: each step or turn one drafter's tree is verified, chosen by a signal
(confidence per step, entropy per prompt turn), learnt from verified outcomes (online, per step)
or read from the prompt alone (domain, per prompt turn). docs/design.md "Routing and losslessness"."""
from __future__ import annotations

import dataclasses
from typing import Mapping

from drafters.base import Drafter
from routing import (Calibration, ConfidenceRouter, DomainRouter, EntropyRouter, OnlineRouter, domain_evidence,
                     tree_gain)
from trees import StepFeedback, merge_trees

from ..lockstep import draft_units, draft_with
from ..target import drafter_features, layers_read
from .base import ComposedTree, MultiDrafterStrategy, match_rule


def drafter_tree_gains(feedback: StepFeedback) -> dict[str, float]:
    """What each drafter's own tree this step would have had accepted along the verified
    continuation (routing.tree_gain): no extra target call."""
    if not feedback.drafter_trees:
        return {}
    probs, continuation = feedback.probs(), feedback.continuation
    return {n: tree_gain(t, continuation, probs) for n, t in feedback.drafter_trees.items()}


def layers_with_router(drafters, router: DomainRouter | None) -> list[int]:
    """The target layers `drafters` read, and the domain router's: the prefill returns them all."""
    return layers_read(drafters, *(() if router is None else (router.layer,)))


CALIBRATION = "calibration"  # strategy-cache key: the Composer's routing.Calibration


class _SignalRouted(MultiDrafterStrategy):
    """Routing by a per-tree signal, calibrated by default: the Composer keeps one
    routing.Calibration across generations (its strategy cache), and every scored tree (each
    drafter's own, against the verified continuation) updates its drafter's fit.
    `calibrated=False` routes on the raw signal. Calibrated, with a domain router over these
    drafters (the Composer's, e.g. the one shipped with them), each turn's domain evidence from
    the prefill enters the fits as a second feature (routing.calibration); `domain_evidence=False`
    leaves it out."""

    options = ("calibrated", "domain_evidence")
    router_type: type = ConfidenceRouter

    @classmethod
    def create(cls, drafters, tree, cache, calibrated: bool = True, domain_evidence: bool = True, **options):
        calibration = cache.setdefault(CALIBRATION, Calibration()) if calibrated else None
        router = cache.get(Domain.ROUTER) if calibrated and domain_evidence else None
        if router is not None and Domain.missing(drafters, router) is not None:
            router = None  # a router over other drafters says nothing about these
        return cls(drafters, calibration=calibration, domain_router=router, **options)

    def __init__(self, drafters, calibration: Calibration | None = None, domain_router: DomainRouter | None = None):
        super().__init__(drafters)
        self.router = self.router_type(calibration)
        self.domain_router = domain_router if calibration is not None else None
        self.domain: dict[str, float] = {}  # this turn's evidence per drafter (empty: none)

    @property
    def target_layers(self) -> list[int]:
        return layers_with_router(self.active_drafters(), self.domain_router)

    def start(self, prompt_ids, hidden_states) -> None:
        if self.domain_router is not None:
            router = self.domain_router
            self.domain = domain_evidence(router.probabilities(router.feature(hidden_states)), self.drafters)
        super().start(prompt_ids, hidden_states)

    def observe(self, feedback: StepFeedback) -> None:
        super().observe(feedback)
        calibration = self.router.calibration
        if calibration is not None:
            for name, gain in drafter_tree_gains(feedback).items():
                calibration.update(name, feedback.drafter_trees[name], gain, self.domain.get(name, 0.0))


class Confidence(_SignalRouted):
    """Every drafter drafts each step; the most confident tree (calibrated: the highest expected
    gain) is verified; all advance. The choice looks at the drawn values, so a sampled tree is
    verified by the match rule.

    turn_bias=True (calibrated only): each drafter's expected gain is corrected by its mean
    residual over this turn's steps (realised gain minus predicted, shrunk toward 0 by `SHRINK`
    pseudo-steps), so a drafter confident outside its domain is found out within the turn."""

    name = "confidence"
    router_type = ConfidenceRouter
    lockstep = True
    options = ("calibrated", "domain_evidence", "turn_bias")
    SHRINK = 2.0

    def __init__(self, drafters, calibration: Calibration | None = None, domain_router: DomainRouter | None = None,
                 turn_bias: bool = False):
        super().__init__(drafters, calibration, domain_router)
        self.turn_bias = bool(turn_bias) and calibration is not None
        self.residual = {n: 0.0 for n in self.drafters}
        self.scored = 0

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        trees = self.draft_all(list(self.drafters), root, tree, sampling, generator)
        if self.turn_bias:
            scores = self.router.scores(trees, self.domain)
            choice = max(scores, key=lambda n: scores[n] + self.residual[n] / (self.scored + self.SHRINK))
        else:
            choice = self.router.choose(trees, self.domain)
        self.routing_log.append(choice)
        return ComposedTree(match_rule(trees[choice]), choice, trees, self.draft_groups(list(self.drafters)))

    def observe(self, feedback: StepFeedback) -> None:
        if self.turn_bias and set(feedback.drafter_trees) >= set(self.drafters):
            predicted = self.router.scores(feedback.drafter_trees, self.domain)  # before this step updates the fits
            for name, gain in drafter_tree_gains(feedback).items():
                self.residual[name] += gain - predicted[name]
            self.scored += 1
        super().observe(feedback)


class Entropy(_SignalRouted):
    """Per prompt turn: every drafter is probed (prefill + first tree); the one with the lowest
    mean draft entropy (calibrated: the highest expected gain predicted from it) drafts the rest
    of the turn, alone. The probe's choice looks at the drawn values, so the probe step's tree is
    verified by the match rule; later trees are fresh draws made after the choice and keep their
    rejection-sampling rows."""

    name = "entropy"
    router_type = EntropyRouter

    def __init__(self, drafters, calibration: Calibration | None = None, domain_router: DomainRouter | None = None):
        super().__init__(drafters, calibration, domain_router)
        self.chosen: str | None = None

    def active_drafters(self) -> list[Drafter]:
        return super().active_drafters() if self.chosen is None else [self.drafters[self.chosen]]

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        if self.chosen is None:
            trees = self.draft_all(list(self.drafters), root, tree, sampling, generator)
            self.chosen = self.router.choose(trees, self.domain)
            self.routing_log.append(self.chosen)
            return ComposedTree(match_rule(trees[self.chosen]), self.chosen, trees)
        draft = dataclasses.replace(self.drafters[self.chosen].propose(root, tree, sampling, generator),
                                    drafter_names=(self.chosen,))
        return ComposedTree(draft, self.chosen, {self.chosen: draft})


class Online(MultiDrafterStrategy):
    """Full-information online routing (routing.OnlineRouter): the leader drafts alone and its
    tree is verified; on probe rounds every drafter drafts, and after verification each is scored
    by what its own tree would have had accepted along the verified continuation. On probe rounds
    the target verifies the `sum` merge of all trees (probe_tree="merged", the default: the
    verified continuation is as long as the best drafter's, so every drafter's greedy gain is
    exact) or the leader's tree alone (probe_tree="leader": fewer verified tokens). Lossless as
    it stands: the verified tree is chosen before anything is drawn, and the merge keeps every
    proposal row.
    Every drafter advances every step (cheap: drafters queue accepted tokens until they draft).

    Weights are per turn. A turn starts from `prior` (log-weights) when given; with
    prior="domain" (what "auto", the default, picks when the Composer has a domain router over
    these drafters), from the domain router's choice over the prompt (routing.DomainRouter):
    every other drafter starts `carry` behind it, and the turn's first probe round waits
    `probe_every` steps, since the leader is already informed; else ("carry") from the previous turn's
    final log-weights (kept in the Composer's strategy cache) with every gap to its leader capped
    at `carry`: the last leader leads until this turn's first probe round says otherwise, so a
    conversation does not relearn its leader every turn, yet a new domain does not inherit a lead
    it must first unlearn."""

    name = "online"
    options = ("eta", "probe_every", "probe_tree", "prior", "carry", "confident")
    CARRIED = "online_log_weights"  # strategy-cache key

    @classmethod
    def create(cls, drafters, tree, cache, prior: Mapping[str, float] | str = "auto", carry: float = 0.5,
               **options):
        if not carry >= 0:
            raise ValueError(f"carry must be >= 0 (log-weight units), got {carry}")
        router = cache.get(Domain.ROUTER)
        reason = "no domain router is loaded" if router is None else Domain.missing(drafters, router)
        if prior == "auto":  # measured: the domain prior routes turns better at equal τ (docs/design.md)
            prior = "carry" if reason is not None else "domain"
        if prior == "domain":
            if reason is not None:
                raise ValueError(f"online with prior='domain' needs a domain router over its drafters: {reason} "
                                 "(`specmux route` fits one; Composer(domain_router=...))")
        else:
            router = None
        if isinstance(prior, str):
            if prior not in ("domain", "carry"):
                raise ValueError(f"prior must be log-weights per drafter, 'auto', 'domain' or 'carry', got {prior!r}")
            prior = None
        last = cache.get(cls.CARRIED, {})
        if prior is None and router is None and last and set(last) == set(drafters):
            # at most `carry` tokens' worth of gain behind: the last turn's leader leads, and one
            # probe round of this turn can overturn it (the domain may have changed)
            top = max(last.values())
            prior = {n: max(-carry, v - top) for n, v in last.items()}
        strategy = cls(drafters, prior=prior, domain_router=router, carry=carry, **options)
        strategy.carried = cache
        return strategy

    def __init__(self, drafters, eta: float = 1.0, probe_every: int = 4, probe_tree: str = "merged",
                 prior: Mapping[str, float] | None = None, domain_router: DomainRouter | None = None,
                 carry: float = 0.5, confident: float = 0.95):
        super().__init__(drafters)
        if probe_tree not in ("leader", "merged"):
            raise ValueError(f"probe_tree must be 'leader' or 'merged', got {probe_tree!r}")
        self.probe_tree = probe_tree
        self.router = OnlineRouter(list(self.drafters), eta=eta, probe_every=probe_every, prior=prior,
                                   confident=confident)
        self.domain_router, self.carry = domain_router, carry
        self.carried: dict = {}
        # probe rounds draft feature drafters of one architecture in lockstep (one batched forward
        # per level); the leader drafts alone. Both runners keep up with the accepted tokens.
        self.probe_units = draft_units(self.drafters, lockstep=True)

    def active_drafters(self) -> list:
        runners = [u.runner for u in self.units + self.probe_units]
        return list({id(r): r for r in runners}.values())

    @property
    def target_layers(self) -> list[int]:
        return layers_with_router(self.active_drafters(), self.domain_router)

    def start(self, prompt_ids, hidden_states) -> None:
        if self.domain_router is not None:
            chosen = self.domain_router.choose(hidden_states)
            self.router.restart({n: 0.0 if n == chosen else -self.carry for n in self.drafters},
                                first_probe=self.router.probe_every)
        super().start(prompt_ids, hidden_states)

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        leader = self.router.leader()
        self.routing_log.append(leader)
        if not self.router.probing():
            draft = self.draft_all([leader], root, tree, sampling, generator)
            return ComposedTree(draft[leader], leader, draft)
        names = list(self.drafters)
        trees = draft_with(self.probe_units, names, root, tree, sampling, generator)
        groups = [u.names for u in self.probe_units]
        if self.probe_tree == "merged":
            return ComposedTree(merge_trees(list(trees.values()), mode="sum"), None, trees, groups)
        return ComposedTree(trees[leader], leader, trees, groups)

    def observe(self, feedback: StepFeedback) -> None:
        super().observe(feedback)
        full = set(feedback.drafter_trees) >= set(self.drafters)
        self.router.record(drafter_tree_gains(feedback) if full else {})
        self.carried[self.CARRIED] = dict(self.router.log_weights)


class Domain(MultiDrafterStrategy):
    """Per prompt turn, at no drafting cost: a classifier over the target's prefill hidden state
    (routing.DomainRouter, fitted from the drafters' training prompts) picks the drafter that
    drafts the whole turn alone. The router comes from `router=` (a DomainRouter or its file) or
    the Composer's (`Composer(domain_router=...)`, by default the one shipped with the target's
    drafters). The choice looks at the prompt only, so trees keep their rejection-sampling rows."""

    name = "domain"
    options = ("router",)
    ROUTER = "domain_router"  # strategy-cache key the Composer fills

    @classmethod
    def unavailable(cls, drafters, cache=None):
        """Without a cache (the constructor's check) the router is judged by the constructor."""
        if cache is None:
            return super().unavailable(drafters)
        router = cache.get(cls.ROUTER)
        if router is None:
            return ("strategy 'domain' needs a fitted domain router (`specmux route` writes one; pass "
                    "router= or Composer(domain_router=...))")
        return cls.missing(drafters, router) or super().unavailable(drafters, cache)

    @staticmethod
    def missing(drafters, router: DomainRouter) -> str | None:
        unknown = [n for n in router.names if n not in drafters]
        return f"the domain router picks among {router.names} but drafters {unknown} are not loaded" if unknown else None

    @classmethod
    def create(cls, drafters, tree, cache, router: DomainRouter | str | None = None, **options):
        if router is None:
            reason = cls.unavailable(drafters, cache)
            if reason is not None:
                raise ValueError(reason)
            router = cache[cls.ROUTER]
        return cls(drafters, DomainRouter.load(router) if not isinstance(router, DomainRouter) else router)

    def __init__(self, drafters, router: DomainRouter):
        super().__init__(drafters)
        reason = self.missing(self.drafters, router)
        if reason is not None:
            raise ValueError(reason)
        self.router = router
        self.chosen: str | None = None

    @property
    def target_layers(self) -> list[int]:
        # every drafter may be chosen at the prefill, which must also return the router's layer
        return layers_read(super().active_drafters(), self.router.layer)

    def active_drafters(self) -> list[Drafter]:
        return [] if self.chosen is None else [self.drafters[self.chosen]]

    def start(self, prompt_ids, hidden_states) -> None:
        self.chosen = self.router.choose(hidden_states)
        self.routing_log.append(self.chosen)
        d = self.drafters[self.chosen]
        d.start(prompt_ids, drafter_features(d, hidden_states, slice(None)))

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        draft = self.draft_all([self.chosen], root, tree, sampling, generator)
        return ComposedTree(draft[self.chosen], self.chosen, draft)
