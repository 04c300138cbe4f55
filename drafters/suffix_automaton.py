"""An incremental suffix automaton over token ids, with occurrence counts, and the corpus reader of
the suffix drafter (drafters/suffix.py; docs/design.md "The suffix drafter").

The automaton of a text T is the smallest automaton accepting every substring of T. Every state
stands for a set of substrings that end at exactly the same positions of T (their `endpos`), so
whatever string of a state was matched, the tokens that followed it in T are the state's
transitions, and how often a token c followed is the endpos size of the state that c leads to.
Appending a token costs amortised O(1) dictionary operations (Blumer et al. 1985), plus the count
update below; states never move, so a matcher's state stays valid while the text grows.

Counts (endpos sizes) are kept online: appending the token at position n adds n to the endpos of
every state on the suffix-link chain of the new last state (exactly the states of T's suffixes).
That chain is short in natural text (about the number of distinct occurrence counts among T's
repeated suffixes) but as long as the run in a run of one repeated token, so the walk stops
after COUNT_WALK states: past it, the shortest and most frequent suffixes are undercounted (their
scores, and the order of their children, may be off). Every drafted path is still a continuation
the text holds, and verification keeps any proposal lossless.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

COUNT_WALK = 64
SEPARATOR = -1  # between corpus documents: never proposed, and no context ever contains it


class SuffixAutomaton:
    """States are integers; 0 is the initial state (the empty string). Per state: transitions
    (token -> state), suffix link, length of its longest string, and its endpos size."""

    __slots__ = ("next", "link", "length", "count", "last", "size")

    def __init__(self, tokens: Iterable[int] = ()):
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.count: list[int] = [0]
        self.last = 0  # the state of the whole text
        self.size = 0  # tokens appended
        self.extend(tokens)

    def __len__(self) -> int:
        return self.size

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(int(token))

    def append(self, token: int) -> None:
        nxt, link, length, count = self.next, self.link, self.length, self.count
        cur = len(length)
        nxt.append({})
        link.append(0)
        length.append(length[self.last] + 1)
        count.append(0)
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:  # q's strings split: the ones of length <= len(p) + 1 now also end here
                clone = len(length)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                count.append(count[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        self.size += 1
        state, walked = cur, 0
        while state > 0 and walked < COUNT_WALK:
            count[state] += 1
            state = link[state]
            walked += 1

    def repeated_suffix(self) -> tuple[int, int]:
        """(state, length) of the longest suffix of the text that also ends earlier in it, so it
        has a continuation there; (0, 0) when none does."""
        state = self.link[self.last] if self.last else 0
        return state, self.length[state]

    def step(self, state: int, matched: int, token: int) -> tuple[int, int]:
        """Matching statistics: from the longest suffix of a token stream found in the text
        (`state`, `matched` tokens), the same after `token` is appended to the stream."""
        nxt, link = self.next, self.link
        while state and token not in nxt[state]:
            state = link[state]
            matched = self.length[state]
        if token in nxt[state]:
            return nxt[state][token], matched + 1
        return 0, 0

    def continuations(self, state: int) -> list[tuple[int, int, int]]:
        """(count, token, next state) of every token that followed the state's strings."""
        count = self.count
        return [(count[s], t, s) for t, s in self.next[state].items() if t >= 0]


# --- corpus -----------------------------------------------------------------------------------
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl",)
TEXT_FIELDS = ("response", "output", "completion", "answer", "text", "content")


def corpus_files(path: str | Path) -> list[Path]:
    """The corpus files at `path`: the file itself, or every text (.txt, .md, .text) and JSONL
    file under the folder, in sorted order. ValueError naming the path when there are none."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"suffix drafter corpus {str(path)!r} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
    if not files:
        raise ValueError(f"suffix drafter corpus folder {str(path)!r} holds no .txt, .md, .text or .jsonl files")
    return files


def corpus_documents(path: str | Path, tokenizer=None) -> list[list[int]]:
    """Token ids of every document of a corpus. JSONL records with `input_ids` (a specmux training
    corpus, drafters/training/corpus.py) give their tokens after `prompt_len` (the target's answers);
    other records give their first text field (response, output, completion, answer, text,
    content) or the assistant turns of `messages` / `conversations`; text files are one document
    each. Text is tokenised with the target's tokenizer (needed unless every record has ids)."""
    docs: list[list[int]] = []
    for file in corpus_files(path):
        if file.suffix in JSONL_SUFFIXES:
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    docs.extend(_record_documents(_json_record(file, number, line), tokenizer, file, number))
        else:
            docs.append(_tokenise(file.read_text(encoding="utf-8"), tokenizer, file))
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"suffix drafter corpus {str(path)!r} holds no text")
    return docs


def _json_record(file: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"suffix drafter corpus {file}:{number} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"suffix drafter corpus {file}:{number}: expected a JSON object per line")
    return record


def _record_documents(record: dict, tokenizer, file: Path, number: int) -> list[list[int]]:
    ids = record.get("input_ids")
    if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
        return [ids[int(record.get("prompt_len", 0)) :]]
    for key in TEXT_FIELDS:
        if isinstance(record.get(key), str):
            return [_tokenise(record[key], tokenizer, file)]
    turns = record.get("messages") or record.get("conversations")
    if isinstance(turns, list):
        texts = [t.get("content", t.get("value")) for t in turns if isinstance(t, dict)
                 and t.get("role", t.get("from")) in ("assistant", "gpt")]
        return [_tokenise(t, tokenizer, file) for t in texts if isinstance(t, str)]
    raise ValueError(f"suffix drafter corpus {file}:{number}: a record needs input_ids, one of the text fields "
                     f"{list(TEXT_FIELDS)}, or messages")


def _tokenise(text: str, tokenizer, file: Path) -> list[int]:
    if tokenizer is None:
        raise ValueError(f"suffix drafter corpus {file} holds text, and tokenising it needs the target's tokenizer "
                         "(load the target with one, or give token ids as JSONL `input_ids`)")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def corpus_automaton(documents: Sequence[Sequence[int]], vocab_size: int, max_tokens: int) -> SuffixAutomaton:
    """One automaton over all documents, SEPARATOR between them (no match spans two documents)."""
    total = sum(len(d) for d in documents)
    if total > max_tokens:
        raise ValueError(f"suffix drafter corpus has {total:,} tokens, more than max_corpus_tokens={max_tokens:,} "
                         "(the automaton is kept in memory: about 0.5 kB per token); use fewer files or raise the limit")
    sam = SuffixAutomaton()
    for i, doc in enumerate(documents):
        bad = [t for t in doc if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"suffix drafter corpus document {i} has token ids outside the vocabulary [0, {vocab_size}): "
                             f"{bad[:3]}")
        if i:
            sam.append(SEPARATOR)
        sam.extend(doc)
    return sam
