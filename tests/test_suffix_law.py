"""The suffix drafter's proposals are deterministic (a function of the committed text), so they are
verified by the match rule: lossless alone and merged with sampled neural trees, whose proposal
rows are verified first at a shared node (docs/design.md "Verification rules").

Strategy level (full power, tree_law.check_law: >= 0.99 at total variation 0.02, alpha
1e-3): the real strategies from the compose registry over a suffix drafter that has read a fixed
history and a simulated sampled drafter (strategy_law.TableDrafter). Engine level: a tiny
transformers target, sampled early-exit trees merged with the suffix drafter's, end to end."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import Composer
from compose.options import TreeOptions
from drafters.lm import EarlyExitDrafter
from drafters.suffix import SuffixDrafter
from trees import SamplingSpec, TreeSpec, verify_batch

from law import chi_square_power, chi_square_pvalue, exact_law
from strategy_law import DrafterShape, strategy_case, table_drafters
from tiny_models import tiny_model
from test_strategies_law import steps_of
from tree_law import assert_lossless, check_law, random_logits, targets


class ReadSuffix(SuffixDrafter):
    """A suffix drafter that has read `history` at every turn start (the law harness starts turns
    with a placeholder prompt), drafting from root 0 as the table drafters do."""

    def __init__(self, vocab: int, history: list[int], name: str = "sfx"):
        self.history = history
        super().__init__(vocab, name=name, min_match=1, min_prob=0.05)

    def start(self, prompt_ids, hidden) -> None:
        super().start(torch.tensor(self.history, dtype=torch.long), hidden)


HISTORY = [0, 0, 0, 0, 0, 1]  # + root 0: two children at the root and two below the first
CASES = [  # (strategy, registry keyword arguments, tree options, turn start)
    ("single", dict(drafter="sfx"), {}, False),
    ("merged_tree", {}, dict(merge_budget="sum"), False),
    ("merged_tree", {}, dict(merge_budget="equal", budget=3), False),
    ("confidence", {}, {}, False),
    ("entropy", {}, {}, True),
]


def suffix_case(name, kwargs, tree_options, turn_start, vocab, k, depth, history, shapes, target_logits, sampling):
    drafters = {"sfx": ReadSuffix(vocab, history), **table_drafters(vocab, depth, shapes)}
    if name == "single":
        drafters = {"sfx": drafters["sfx"]}
    tree = TreeOptions(depth=depth, top_k=2, budget=4, sampled=True).model_copy(update=tree_options)
    return strategy_case(vocab, k, depth, target_logits, sampling,
                         lambda: steps_of(name, drafters, tree, sampling, kwargs, turn_start))


SHAPES = [DrafterShape(seed=3, scale=1.5, count=2, expand=0.5)]


def test_the_history_gives_a_deep_branching_tree():
    """The law cases below are only as strong as the suffix tree they verify."""
    tree = ReadSuffix(2, HISTORY).propose(0, TreeSpec(depth=2, top_k=2, budget=4), SamplingSpec(0.9))
    assert tree.parents.tolist() == [-1, 0, 1, 0, 1] and tree.proposals is None


def marked(case):
    """Merging costs ~1.5 ms a step and a full-power check takes ~20k steps: under `slow`."""
    return pytest.param(*case, marks=pytest.mark.slow) if case[0] == "merged_tree" else case


@pytest.mark.parametrize("name, kwargs, tree_options, turn_start", [marked(c) for c in CASES])
def test_suffix_drafter_is_lossless_alone_and_composed_with_sampled_trees(name, kwargs, tree_options, turn_start):
    """Two tokens, trees 2 deep, first 2 tokens: 4 cells."""
    case = suffix_case(name, kwargs, tree_options, turn_start, 2, 2, 2, HISTORY, SHAPES,
                       random_logits(2, 2, 9, 1.2), SamplingSpec(temperature=0.9))
    assert_lossless(check_law(verify_batch, case))


@pytest.mark.slow
@settings(max_examples=6, derandomize=True, deadline=None, database=None)
@given(data=st.data(), case_index=st.integers(0, len(CASES) - 1))
def test_suffix_drafter_is_lossless_hypothesis(data, case_index):
    """Random histories, sampled drafters, tree depths and target processing."""
    name, kwargs, tree_options, turn_start = CASES[case_index]
    vocab, k = data.draw(st.sampled_from([(2, 2), (3, 2), (4, 1)]))
    depth = data.draw(st.integers(1, 3))
    history = data.draw(st.lists(st.integers(0, vocab - 1), min_size=4, max_size=24))
    shapes = [DrafterShape(seed=data.draw(st.integers(0, 2**20)), scale=data.draw(st.floats(0.5, 3.0)),
                           count=data.draw(st.integers(1, 3)), expand=data.draw(st.floats(0.1, 0.8)))
              for _ in range(data.draw(st.integers(1, 2)))]
    logits, sampling = data.draw(targets(vocab, k, depth))
    case = suffix_case(name, kwargs, tree_options, turn_start, vocab, k, depth, history, shapes, logits, sampling)
    assert_lossless(check_law(verify_batch, case))


# --- end to end on a tiny transformers target ---------------------------------------------------
PROMPT = [3, 1, 2, 3, 1, 2, 0, 3, 1]  # repeats itself: the suffix drafter drafts from the first step
SMALL = tiny_model("qwen2", vocab=4, layers=2, seed=5, init_std=0.1)
FAST_N, SLOW_N = 1200, 9600
FAST_TV, SLOW_TV = 0.14, 0.05  # power >= 0.99 at these total variations for up to 64 cells (asserted below)


@pytest.mark.parametrize("n, tv", [(FAST_N, FAST_TV), pytest.param(SLOW_N, SLOW_TV, marks=pytest.mark.slow)])
@pytest.mark.parametrize("strategy, drafters", [
    ("single", lambda: {"sfx": SuffixDrafter(4, min_match=1)}),
    ("merged_tree", lambda: {"ee": EarlyExitDrafter(SMALL, 1), "sfx": SuffixDrafter(4, min_match=1)}),
])
def test_engine_sampling_law_with_the_suffix_drafter(n, tv, strategy, drafters):
    composer = Composer(SMALL, drafters=drafters())
    sampling = SamplingSpec(1.0, 0, 0.95)
    law = exact_law(composer.target.model, PROMPT, 3, sampling)
    tree = dict(depth=3, top_k=2, budget=5, sampled=True)
    samples, drafted = [], 0
    for i in range(n):
        r = composer.generate(PROMPT, strategy=strategy, max_new_tokens=3, temperature=1.0, top_p=0.95, seed=i, tree=tree)
        samples.append(tuple(r.token_ids))
        drafted += sum(s.tree_size > 1 for s in r.stats.steps)
    assert drafted > n // 2, "the suffix drafter must actually draft in this check"
    pvalue, cells = chi_square_pvalue(samples, law)
    assert chi_square_power(n, cells, tv=tv, alpha=1e-3) >= 0.99, "sample size too small for the stated power"
    assert pvalue > 1e-3, f"{strategy} with the suffix drafter: sampling law differs from the target's (p={pvalue:.2e})"


def test_the_check_sees_suffix_children_verified_as_if_sampled(monkeypatch):
    """Power on this drafter's trees: its top children verified by the p/q ratio, as if they were
    draws from its empirical law, emit the most frequent continuation too often; the same check
    must reject that."""
    from trees import Proposals

    made = {}  # the history is fixed, so is the tree: build its rows once

    def with_rows(self, root_token, tree, sampling, generator=None):
        if root_token in made:
            return made[root_token]
        draft = made[root_token] = SuffixDrafter.propose(self, root_token, tree, sampling, generator)
        kids = torch.arange(1, len(draft))
        parents = draft.parents[kids]
        q = torch.zeros(len(kids), self.vocab_size)
        for row, (parent, child) in enumerate(zip(parents.tolist(), kids.tolist())):
            siblings = (draft.parents == parent).nonzero().flatten()
            weights = (draft.scores[siblings] - draft.scores[parent]).exp()  # the drafter's conditional law
            q[row, draft.tokens[siblings]] = weights / weights.sum()
        draft.proposals = Proposals(parent=parents, child=kids, q=q)
        return draft

    case = suffix_case("single", dict(drafter="sfx"), {}, False, 2, 2, 2, HISTORY, SHAPES,
                       random_logits(2, 2, 9, 1.2), SamplingSpec(temperature=0.9))
    assert_lossless(check_law(verify_batch, case))
    monkeypatch.setattr(ReadSuffix, "propose", with_rows)
    wrong = check_law(verify_batch, case)
    assert wrong.rejects, f"the law check missed suffix children verified by the ratio rule: {wrong}"
