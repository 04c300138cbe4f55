"""The suffix drafter: training-free drafting from what the text has already said
(SuffixDecoding, arXiv 2411.04975; docs/design.md "The suffix drafter").

Two sources, each a suffix automaton (drafters/suffix_automaton.py):
- live: the prompt and every token committed since, rebuilt at `start` (one request or turn);
- corpus (optional, `suffix:<folder or file>`): past outputs, built once and shared by every
  request; a matcher follows the committed tokens through it.
At each step the context (committed tokens + the root) is matched: the longest suffix of it that
occurred earlier in the live text, and the longest that occurs in the corpus. The source with the
longer match (the live one on a tie) drafts, if the match is at least `min_match` tokens: its
continuations become a tree, expanded best first by score, the cumulative log of

    p(token | path) = count(path + token) / (count of the path's continuations + alpha),
    alpha = smoothing / (matched tokens + depth),

an empirical next-token frequency that trusts a long match more than a short one (one earlier
occurrence after a 20-token match scores 0.91, after a 1-token match 0.33). Children per node are
capped by the tree's top_k, nodes by its budget, levels by its depth; a path whose probability
falls below `min_prob` (or the tree's stop_below) is not drafted, so a weak match costs the
verifier a node or two, not a full budget.

The proposal is deterministic (a function of the committed tokens), so it is verified by the
match rule: lossless alone, and merged with sampled trees (their proposal rows are verified
first at a node; the residual draw may then descend into one of this drafter's children).
Routing reads its scores (confidence: mean path probability) and the entropies of its empirical
distributions (entropy routing), so both signals are its match statistics.
"""
from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Sequence

import torch

from trees import DraftTree, SamplingSpec, TreeSpec

from .base import Drafter
from .suffix_automaton import SuffixAutomaton, corpus_automaton, corpus_documents

NAN = float("nan")


class SuffixDrafter(Drafter):
    """`suffix` (prompt and generated tokens) or `suffix:<corpus>` (and a corpus of past outputs).

    min_match: shortest matched context (tokens, the root included) that drafts. min_prob: path
    probability below which nothing is drafted. smoothing: the alpha numerator above.
    max_corpus_tokens: refuse larger corpora (the automaton lives in memory)."""

    target_layers = None
    almost_free = True  # drafting costs well under 1% of a target forward

    def __init__(self, vocab_size: int, corpus: str | Path | None = None, tokenizer=None, name: str = "suffix",
                 min_match: int = 1, min_prob: float = 0.1, smoothing: float = 2.0,
                 max_corpus_tokens: int = 2_000_000):
        if min_match < 1:
            raise ValueError(f"suffix drafter min_match must be >= 1, got {min_match}")
        if not 0.0 <= min_prob < 1.0:
            raise ValueError(f"suffix drafter min_prob must be in [0, 1), got {min_prob}")
        if not smoothing > 0:
            raise ValueError(f"suffix drafter smoothing must be > 0, got {smoothing}")
        self.name, self.vocab_size = name, int(vocab_size)
        self.min_match, self.min_prob, self.smoothing = min_match, min_prob, smoothing
        self.corpus_path = None if corpus is None else str(corpus)
        self.corpus: SuffixAutomaton | None = None
        if corpus is not None:
            self.corpus = corpus_automaton(corpus_documents(corpus, tokenizer), self.vocab_size, max_corpus_tokens)
        self.start(torch.zeros(0, dtype=torch.long), None)

    def architecture_key(self) -> tuple:
        return ("suffix",)

    # --- the Drafter protocol -------------------------------------------------------------------
    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None) -> None:
        """A new request: the live text is the prompt; the corpus matcher restarts on it."""
        self.committed: list[int] = [int(t) for t in torch.as_tensor(prompt_ids).reshape(-1).tolist()]
        self._rebuild(None)

    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> None:
        new = [int(t) for t in torch.as_tensor(tokens).reshape(-1).tolist()]
        if self.pending is not None:
            if not new or new[0] != self.pending:  # not the root we drafted from: start over from the text
                self.committed.extend(new)
                self._rebuild(None)
                return
            new = new[1:]  # the root is in the automaton already (fed at `propose`)
            self.committed.append(self.pending)
            self.pending = None
        self.committed.extend(new)
        self._feed(new)

    def propose(self, root_token: int, tree: TreeSpec, sampling: SamplingSpec,
                generator: torch.Generator | None = None) -> DraftTree:
        root_token = int(root_token)
        if self.pending is None:
            # the root is always committed (it heads the accepted path), so it joins the text now
            self.pending = root_token
            self._feed([root_token])
        elif self.pending != root_token:  # drafted again from another root without an advance
            self._rebuild(root_token)
        source, state, matched = self._match()
        if matched < self.min_match:
            return _tree([root_token], [-1], [0.0], [0], [NAN], self.name)
        return self._expand(root_token, source, state, matched, tree)

    # --- matching -------------------------------------------------------------------------------
    def _rebuild(self, root: int | None) -> None:
        text = self.committed + ([root] if root is not None else [])
        self.live = SuffixAutomaton(text)
        self.pending = root
        self.corpus_match = (0, 0)
        if self.corpus is not None:
            self._follow_corpus(text)

    def _feed(self, tokens: Sequence[int]) -> None:
        self.live.extend(tokens)
        if self.corpus is not None:
            self._follow_corpus(tokens)

    def _follow_corpus(self, tokens: Sequence[int]) -> None:
        state, matched = self.corpus_match
        for t in tokens:
            state, matched = self.corpus.step(state, matched, t)
        self.corpus_match = (state, matched)

    def match_length(self) -> int:
        """Tokens of the context (root included, once proposed) matched by the drafting source."""
        return self._match()[2]

    def _match(self) -> tuple[SuffixAutomaton, int, int]:
        state, matched = self.live.repeated_suffix()
        if self.corpus is not None and self.corpus_match[1] > matched:
            return self.corpus, *self.corpus_match
        return self.live, state, matched

    # --- the tree -------------------------------------------------------------------------------
    def _expand(self, root: int, sam: SuffixAutomaton, state: int, matched: int, spec: TreeSpec) -> DraftTree:
        """Best-first: the highest-scoring candidate joins next; scores fall along a path, so a
        parent always joins before its children (the node set is ancestor-closed)."""
        floor = math.log(max(self.min_prob, spec.stop_below, 1e-30))
        tokens, parents, scores, depths, entropies = [root], [-1], [0.0], [0], [NAN]
        heap: list[tuple[float, int, int, int, int]] = []  # (-score, order, parent node, token, state)
        order = 0

        def offer(node: int, state: int) -> None:
            nonlocal order
            depth = depths[node]
            if depth >= spec.depth:
                return
            options = sam.continuations(state)
            if not options:
                return
            total = sum(c for c, _, _ in options)
            alpha = self.smoothing / (matched + depth)
            denom = total + alpha
            entropies[node] = _entropy([c for c, _, _ in options], alpha, denom)
            # most frequent first; ties to the smaller token id, so trees are deterministic
            for c, t, s in heapq.nsmallest(spec.top_k, options, key=lambda o: (-o[0], o[1])):
                score = scores[node] + math.log(c / denom)
                if score >= floor:
                    heapq.heappush(heap, (-score, order, node, t, s))
                    order += 1

        offer(0, state)
        while heap and len(tokens) <= spec.budget:
            neg, _, parent, token, child_state = heapq.heappop(heap)
            tokens.append(token)
            parents.append(parent)
            scores.append(-neg)
            depths.append(depths[parent] + 1)
            entropies.append(NAN)
            offer(len(tokens) - 1, child_state)
        return _tree(tokens, parents, scores, depths, entropies, self.name)


def _entropy(counts: list[int], alpha: float, denom: float) -> float:
    """Entropy (nats) of the empirical next-token law, the smoothing mass alpha as one more outcome."""
    h = -sum(c / denom * math.log(c / denom) for c in counts)
    return h - alpha / denom * math.log(alpha / denom)


def _tree(tokens, parents, scores, depths, entropies, name: str) -> DraftTree:
    n = len(tokens)
    return DraftTree(
        tokens=torch.tensor(tokens, dtype=torch.long), parents=torch.tensor(parents, dtype=torch.long),
        scores=torch.tensor(scores, dtype=torch.float32), proposers=torch.ones(n, dtype=torch.long),
        drafter_names=(name,), depths=torch.tensor(depths, dtype=torch.long),
        entropies=torch.tensor(entropies, dtype=torch.float32),
    )
