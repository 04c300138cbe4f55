"""The suffix drafter (drafters/suffix.py): its automaton counts what it should, its trees are
what the text says and obey the tree spec, its incremental state equals a fresh build, its corpus
and spec errors name the problem, and every strategy stays greedy-lossless with it."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import drafters.suffix as suffix_module
from compose import Composer
from compose.registry import make_drafter
from compose.target import TargetModel
from drafters.lm import EarlyExitDrafter
from drafters.suffix import SuffixDrafter
from drafters.suffix_automaton import SuffixAutomaton, corpus_documents
from trees import SamplingSpec, TreeSpec
from tiny_models import tiny_model

SETTINGS = settings(max_examples=60, derandomize=True, deadline=None, database=None)
GREEDY = SamplingSpec()
WIDE = TreeSpec(depth=6, top_k=4, budget=24)


def occurrences(text: list[int], s: list[int]) -> int:
    return sum(text[i : i + len(s)] == s for i in range(len(text) - len(s) + 1))


def walk(sam: SuffixAutomaton, s: list[int]) -> int:
    state = 0
    for t in s:
        state = sam.next[state][t]
    return state


@SETTINGS
@given(st.lists(st.integers(0, 3), max_size=40))
def test_automaton_counts_every_substrings_occurrences(text):
    sam = SuffixAutomaton(text)
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            assert sam.count[walk(sam, text[i:j])] == occurrences(text, text[i:j])
            followers = {text[a + j - i] for a in range(len(text) - (j - i)) if text[a : a + j - i] == text[i:j]}
            assert set(sam.next[walk(sam, text[i:j])]) == followers


@SETTINGS
@given(st.lists(st.integers(0, 2), max_size=30))
def test_repeated_suffix_is_the_longest_suffix_seen_earlier(text):
    state, length = SuffixAutomaton(text).repeated_suffix()
    expected = max((m for m in range(1, len(text)) if occurrences(text[:-1], text[len(text) - m :]) > 0), default=0)
    assert length == expected


@SETTINGS
@given(st.lists(st.integers(0, 2), min_size=1, max_size=30), st.lists(st.integers(0, 2), max_size=15))
def test_matching_statistics_follow_a_stream(text, stream):
    sam = SuffixAutomaton(text)
    state, matched = 0, 0
    for i, t in enumerate(stream):
        state, matched = sam.step(state, matched, t)
        seen = stream[: i + 1]
        longest = max((m for m in range(1, len(seen) + 1) if occurrences(text, seen[len(seen) - m :]) > 0), default=0)
        assert matched == longest


def test_counts_stay_bounded_in_a_long_run_of_one_token():
    """A run of one token makes the suffix-link chain as long as the run; the count walk stops
    after COUNT_WALK states, so appending stays cheap, and the long contexts stay exact."""
    sam = SuffixAutomaton([5] * 500)
    assert sam.count[walk(sam, [5] * 480)] == 21  # within the walk: exact
    assert sam.count[walk(sam, [5])] < 500  # past it: undercounted, never over


def test_drafts_the_continuation_of_a_repeated_phrase():
    d = SuffixDrafter(50)
    d.start(torch.tensor([1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 6, 7, 1, 2]), None)
    tree = d.propose(3, WIDE, GREEDY).validate(50)
    # "1 2 3" occurred twice, followed by 4 both times, then 5 once and 6 once
    assert tree.tokens[1] == 4 and tree.parents[1] == 0
    kids_of_4 = set(tree.tokens[tree.parents == 1].tolist())
    assert kids_of_4 == {5, 6}
    assert float(tree.scores[1].exp()) == pytest.approx(2 / (2 + 2 / 3))  # alpha = 2 / (3 matched + depth 0)
    assert torch.isfinite(tree.entropies[0]) and (tree.scores[1:] <= 0).all()
    assert d.match_length() == 3


def test_nothing_matched_means_the_root_alone():
    d = SuffixDrafter(50, min_match=2)
    d.start(torch.tensor([1, 2, 3, 4]), None)
    assert len(d.propose(9, WIDE, GREEDY)) == 1
    d.advance(torch.tensor([9]), None)
    assert len(d.propose(7, WIDE, GREEDY)) == 1  # "4 9 7": "7" never occurred


def test_a_one_token_match_drafts_unless_min_match_asks_for_more():
    prompt = torch.tensor([1, 2, 7, 8])
    strict, loose = SuffixDrafter(50, min_match=2), SuffixDrafter(50)
    for d in (strict, loose):
        d.start(prompt, None)
    assert len(strict.propose(1, WIDE, GREEDY)) == 1
    assert loose.propose(1, WIDE, GREEDY).tokens.tolist()[:2] == [1, 2]


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=2, max_size=60), st.integers(1, 5), st.integers(1, 4), st.integers(1, 12),
       st.floats(0.0, 0.5))
def test_trees_obey_the_spec_and_rank_parents_first(text, depth, top_k, budget, min_prob):
    d = SuffixDrafter(4, min_match=1, min_prob=min_prob)
    d.start(torch.tensor(text[:-1]), None)
    tree = d.propose(text[-1], TreeSpec(depth=depth, top_k=top_k, budget=budget), GREEDY).validate(4)
    assert len(tree) - 1 <= budget and int(tree.depths.max()) <= depth
    assert all(int((tree.parents == i).sum()) <= top_k for i in range(len(tree)))
    assert (tree.scores[1:] <= tree.scores[tree.parents[1:]]).all()
    assert (tree.scores[1:].exp() >= min_prob - 1e-6).all()
    for node in range(1, len(tree)):  # every path from the root is in the text (root = its last token)
        assert occurrences(text, tree.tokens[tree.path_to(node)].tolist()) > 0


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=20),
       st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=4), st.booleans()), max_size=12))
def test_incremental_state_equals_a_fresh_build(prompt, steps):
    """Steps of (root, accepted tokens, drafted?): after any history, the tree equals the one a
    drafter started on the committed text gives (no-draft steps are tree="auto"'s root-only ones)."""
    d = SuffixDrafter(4, min_match=1)
    d.start(torch.tensor(prompt), None)
    committed = list(prompt)
    for root, accepted, drafted in steps:
        if drafted:
            d.propose(root, WIDE, GREEDY)
        d.advance(torch.tensor([root] + accepted), None)
        committed += [root] + accepted
    fresh = SuffixDrafter(4, min_match=1)
    fresh.start(torch.tensor(committed), None)
    a, b = d.propose(2, WIDE, GREEDY), fresh.propose(2, WIDE, GREEDY)
    assert a.tokens.tolist() == b.tokens.tolist() and a.parents.tolist() == b.parents.tolist()
    assert torch.allclose(a.scores, b.scores)


def test_start_forgets_the_previous_request():
    """A new request (or turn) drafts from its own prompt only, as a fresh drafter would."""
    d = SuffixDrafter(50)
    d.start(torch.tensor([1, 2, 3, 4, 1, 2]), None)
    d.propose(3, WIDE, GREEDY)
    d.advance(torch.tensor([3, 4, 1, 2, 3]), None)
    d.propose(4, WIDE, GREEDY)  # pending root, never advanced: the request stopped here
    d.start(torch.tensor([7, 8, 9, 7]), None)
    assert d.committed == [7, 8, 9, 7] and d.pending is None
    fresh = SuffixDrafter(50)
    fresh.start(torch.tensor([7, 8, 9, 7]), None)
    for root in (8, 1):
        a, b = d.propose(root, WIDE, GREEDY), fresh.propose(root, WIDE, GREEDY)
        assert a.tokens.tolist() == b.tokens.tolist() and torch.equal(a.scores, b.scores)
    assert d.propose(1, WIDE, GREEDY).tokens.tolist() == [1]  # "1 2 3 4" belonged to the last request


def test_drafting_again_from_another_root_without_an_advance():
    """The cost profiler drafts repeatedly without advancing; another root must not leave the
    first one in the text."""
    d = SuffixDrafter(50)
    d.start(torch.tensor([1, 2, 3, 1, 2, 4, 1]), None)
    first = d.propose(2, WIDE, GREEDY)
    assert d.propose(2, WIDE, GREEDY).tokens.tolist() == first.tokens.tolist()
    other = d.propose(5, WIDE, GREEDY)
    fresh = SuffixDrafter(50)
    fresh.start(torch.tensor([1, 2, 3, 1, 2, 4, 1]), None)
    assert other.tokens.tolist() == fresh.propose(5, WIDE, GREEDY).tokens.tolist()
    d.advance(torch.tensor([5, 3]), None)
    assert d.committed == [1, 2, 3, 1, 2, 4, 1, 5, 3]


def test_a_step_never_rebuilds_the_automaton(monkeypatch):
    """Per step the drafter appends the new tokens; only `start` builds an automaton."""
    d = SuffixDrafter(100)
    d.start(torch.arange(60) % 17, None)
    built = []
    monkeypatch.setattr(suffix_module, "SuffixAutomaton", lambda *a: built.append(a))
    for root in range(40):
        d.propose(root % 17, WIDE, GREEDY)
        d.advance(torch.tensor([root % 17, (root + 1) % 17]), None)
    assert built == []


# --- corpus -------------------------------------------------------------------------------------
class WordTokenizer:
    """Whitespace words -> ids (enough to test the corpus reader)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}


def test_corpus_folder_of_text_and_jsonl(tmp_path):
    tok = WordTokenizer()
    (tmp_path / "a.txt").write_text("the cat sat on the mat")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"input_ids": [40, 41, 42, 43, 44], "prompt_len": 2}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "dog ran"}]}) + "\n"
        + json.dumps({"response": "cat sat"}) + "\n")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    docs = corpus_documents(tmp_path, tok)
    v = tok.vocab
    assert docs == [[v["the"], v["cat"], v["sat"], v["on"], v["the"], v["mat"]], [42, 43, 44],
                    [v["dog"], v["ran"]], [v["cat"], v["sat"]]]
    d = SuffixDrafter(64, corpus=tmp_path, tokenizer=tok, min_match=2)
    d.start(torch.tensor([60, v["the"]]), None)
    tree = d.propose(v["cat"], WIDE, GREEDY)  # "the cat" is in the corpus: "sat on the mat" follows
    assert tree.tokens[1:5].tolist() == [v["sat"], v["on"], v["the"], v["mat"]]
    d.advance(torch.tensor([v["cat"]]), None)
    assert d.propose(42, WIDE, GREEDY).tokens.tolist() == [42]  # "cat 42": no document holds it
    d.advance(torch.tensor([42]), None)
    assert d.propose(43, WIDE, GREEDY).tokens.tolist() == [43, 44]  # and documents do not run together


def test_the_live_text_drafts_when_its_match_is_longer(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"input_ids": [1, 2, 9]}) + "\n")
    d = SuffixDrafter(16, corpus=tmp_path / "c.jsonl")
    d.start(torch.tensor([5, 1, 2, 3, 0, 5, 1]), None)
    assert d.propose(2, WIDE, GREEDY).tokens[1] == 3  # live "5 1 2" beats the corpus's "1 2"
    e = SuffixDrafter(16, corpus=tmp_path / "c.jsonl")
    e.start(torch.tensor([0, 1]), None)
    assert e.propose(2, WIDE, GREEDY).tokens[1] == 9


def written(folder, name: str, text: str):
    (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda p: SuffixDrafter(10, corpus=p / "missing"), "does not exist"),
    (lambda p: SuffixDrafter(10, corpus=p), "holds no .txt"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "x.txt", "words")), "needs the target's tokenizer"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "x.jsonl", "{oops\n")), "x.jsonl:1 is not valid JSON"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "x.jsonl", '{"other": 1}\n')), "a record needs input_ids"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "x.jsonl", '{"input_ids": [3, 12]}\n')), "outside the vocabulary"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "x.jsonl", '{"input_ids": [1, 2, 3]}\n'), max_corpus_tokens=2),
     "max_corpus_tokens"),
    (lambda p: SuffixDrafter(10, corpus=written(p, "e.txt", "") / "e.txt", tokenizer=WordTokenizer()), "holds no text"),
    (lambda p: SuffixDrafter(10, min_match=0), "min_match"),
    (lambda p: SuffixDrafter(10, min_prob=1.0), "min_prob"),
])
def test_corpus_and_option_errors_name_the_problem(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path)


# --- registry and strategies ----------------------------------------------------------------------
TARGET = tiny_model("llama", vocab=32, layers=2, seed=11, init_std=0.3)
LOOPING = [3, 7, 1, 4, 3, 7, 1, 5, 3, 7, 1]  # a prompt that repeats itself


def test_spec_strings(tmp_path):
    target = TargetModel(TARGET, None)
    d = make_drafter("suffix", target, "sfx")
    assert isinstance(d, SuffixDrafter) and d.name == "sfx" and d.vocab_size == 32 and d.corpus is None
    (tmp_path / "c.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
    assert make_drafter(f"suffix:{tmp_path}", target, "s").corpus is not None
    with pytest.raises(ValueError, match="expected suffix or suffix:<corpus"):
        make_drafter("suffix:", target, "s")
    with pytest.raises(ValueError, match="does not exist"):
        make_drafter(f"suffix:{tmp_path / 'nope'}", target, "s")
    with pytest.raises(ValueError, match="suffix\\[:<corpus>\\]"):
        make_drafter("suffixes", target, "s")


def plain_greedy(prompt, n):
    return TARGET.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


STRATEGIES = [
    ("single", {}, dict(depth=6, top_k=2, budget=8)),
    ("merged_tree", {}, dict(depth=4, top_k=2, budget=6)),
    ("merged_tree", {}, dict(depth=4, top_k=2, budget=6, merge_budget="equal")),
    ("confidence", {}, dict(depth=3, top_k=2, budget=5)),
    ("entropy", {}, dict(depth=3, top_k=2, budget=5)),
    ("online", dict(probe_every=2), dict(depth=3, top_k=2, budget=5)),
    ("single", {}, "auto"),
    ("merged_tree", {}, "auto"),
]


@pytest.mark.parametrize("strategy, options, tree", STRATEGIES)
def test_every_strategy_with_the_suffix_drafter_is_greedy_lossless(strategy, options, tree):
    drafters = {"sfx": "suffix"} if strategy == "single" else {"ee": EarlyExitDrafter(TARGET, 1), "sfx": "suffix"}
    composer = Composer(TARGET, drafters=drafters)
    for prompt in (LOOPING, [5, 9, 2]):
        result = composer.generate(prompt, strategy=strategy, max_new_tokens=40, tree=tree, **options)
        assert result.token_ids == plain_greedy(prompt, 40)
    shares = result.stats.proposer_counts()
    if strategy == "single" and tree != "auto":
        assert result.stats.tau > 1.2 and shares.get("sfx", 0) > 0  # the tiny model loops: the drafter must see it


def test_entropy_and_confidence_read_the_match_statistics():
    d = SuffixDrafter(50)
    d.start(torch.tensor([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2]), None)
    sure = d.propose(3, WIDE, GREEDY)
    e = SuffixDrafter(50)
    e.start(torch.tensor([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 6, 1, 2]), None)
    unsure = e.propose(3, WIDE, GREEDY)
    from routing.signals import tree_confidence, tree_entropy

    assert tree_confidence(sure) > tree_confidence(unsure)
    assert tree_entropy(sure) < tree_entropy(unsure)


def test_auto_profiles_a_network_beside_the_suffix_drafter(monkeypatch):
    """tree="auto" times one drafting unit; the suffix drafter's (near zero) must not stand for
    the merged drafters' cost."""
    import compose.tree_policy as tree_policy

    profiled = []
    real = tree_policy.machine_profile
    monkeypatch.setattr(tree_policy, "machine_profile", lambda target, unit: profiled.append(unit) or real(target, unit))
    composer = Composer(TARGET, drafters={"sfx": "suffix", "ee": EarlyExitDrafter(TARGET, 1)})
    composer.generate(LOOPING, strategy="merged_tree", max_new_tokens=4, tree="auto")
    composer.generate(LOOPING, strategy="single", drafter="sfx", max_new_tokens=4, tree="auto")
    assert [u.names for u in profiled] == [["ee"], ["sfx"]]


def test_auto_sizes_merged_trees_by_the_network_drafters_alone():
    """The suffix drafter adds a few likely nodes, not a full budget: tree="auto" must size the
    networks' trees as it would without it (width counts networks), or it shrinks them for nodes
    that never come."""
    from compose.strategies import STRATEGIES as REGISTRY

    ee, ee2, sfx = EarlyExitDrafter(TARGET, 1), EarlyExitDrafter(TARGET, 1), SuffixDrafter(TARGET.config.vocab_size)
    merged = REGISTRY["merged_tree"]
    assert merged({"ee": ee, "sfx": sfx}).tree_width() == 1
    assert merged({"ee": ee, "ee2": ee2, "sfx": sfx}).tree_width() == 2
    assert merged({"ee": ee, "ee2": ee2}).tree_width() == 2
    assert merged({"ee": ee, "ee2": ee2, "sfx": sfx}, merge_budget="equal").tree_width() == 1
    composer = Composer(TARGET, drafters={"ee": ee, "sfx": "suffix"})
    composer.generate(LOOPING, strategy="merged_tree", max_new_tokens=4, tree="auto")
    (policy,) = [v for k, v in composer.strategy_cache.items() if isinstance(k, tuple) and k[0] == "autotree"]
    assert policy.width == 1
