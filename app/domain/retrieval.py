"""Lexical retrieval of the few-shot examples most similar to an utterance.

TF-IDF cosine similarity over lower-cased word tokens, computed through an
inverted index: a query only touches the postings of its own words, so its
cost grows with how common those words are, not with the size of the bank.

Short replies ("yes", "ok, thanks") match hundreds of examples equally well,
and what they mean depends on the turn before. So the best-matching examples
are ranked again with the similarity of their previous turn (utterance and
the assistant's reply) to the request's previous turn.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.domain.dialogue import Example, Turn

__all__ = ["CONTEXT_WEIGHT", "ExampleIndex", "ScoredExample", "word_tokens"]

_WORD = re.compile(r"\w+")

# How much the previous turn's similarity counts against the utterance's own. Measured
# on the 2,026 SMCalFlow dev turns against the 9,490-example bank, the nearest example's
# plan matched 23.4% of turns with 0 and 27.6% with 0.1; 0.2 to 0.5 did no better.
CONTEXT_WEIGHT = 0.1
# Examples ranked again by context: this many times k, and at least _MIN_POOL.
_POOL_FACTOR = 4
_MIN_POOL = 32


def previous_turn_text(turn: Turn | None) -> str:
    """Return the text of a previous turn that context similarity compares."""
    if turn is None:
        return ""
    return f"{turn.utterance} {turn.agent_reply or ''}"


def word_tokens(text: str) -> list[str]:
    """Split text into lower-cased word tokens."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class ScoredExample:
    """A retrieved example with its cosine similarities to the query, in [0, 1].

    `similarity` compares the utterances and `context_similarity` the previous
    turns: 1.0 when neither has one, 0.0 when only one has.
    """

    example: Example
    similarity: float
    context_similarity: float = 0.0

    @property
    def score(self) -> float:
        """The ranking score: utterance similarity plus weighted context similarity."""
        return self.similarity + CONTEXT_WEIGHT * self.context_similarity


class ExampleIndex:
    """An in-memory TF-IDF index over the utterances of an example bank."""

    def __init__(self, examples: Sequence[Example]) -> None:
        if not examples:
            raise ValueError("the example bank is empty")
        self.examples = list(examples)
        document_counts = [Counter(word_tokens(example.utterance)) for example in self.examples]

        document_frequency: Counter[str] = Counter()
        for counts in document_counts:
            document_frequency.update(counts.keys())
        total = len(self.examples)
        # Smoothed IDF, as scikit-learn computes it: ln((1 + n) / (1 + df)) + 1.
        self._idf = {
            term: math.log((1 + total) / (1 + frequency)) + 1.0
            for term, frequency in document_frequency.items()
        }
        self._postings = self._build_postings(document_counts)
        # Examples that repeat an utterance (in any case) and a plan count once in a result.
        self._dedup_keys = [(example.utterance.lower(), example.plan) for example in self.examples]
        # Previous turns get their own vocabulary statistics: agent replies use other words.
        self._context_idf, self._context_vectors = _context_vectors(self.examples)

    def _build_postings(
        self, document_counts: list[Counter[str]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for document, counts in enumerate(document_counts):
            weights = _weigh(counts, self._idf)
            for term, weight in weights.items():
                ids, values = postings.setdefault(term, ([], []))
                ids.append(document)
                values.append(weight)
        return {
            term: (np.asarray(ids, dtype=np.int32), np.asarray(values, dtype=np.float32))
            for term, (ids, values) in postings.items()
        }

    def __len__(self) -> int:
        return len(self.examples)

    def fingerprint(self) -> str:
        """Return a digest of the bank's examples: it changes when any example does."""
        digest = hashlib.sha256()
        for example in self.examples:
            previous = example.previous
            fields = [example.id, example.utterance, example.plan]
            if previous is not None:
                fields += [previous.utterance, previous.plan or "", previous.agent_reply or ""]
            digest.update("\x1f".join(fields).encode())
            digest.update(b"\x1e")
        return digest.hexdigest()[:16]

    def search(self, query: str, k: int, previous: Turn | None = None) -> list[ScoredExample]:
        """Return up to `k` examples, best first by utterance and previous-turn similarity.

        `previous` is the request's previous turn, if any. Examples that share
        no word with the query are left out, and so are repeats of an utterance
        and plan already returned.
        """
        if k <= 0:
            return []
        pool = self._search_utterances(query, max(_POOL_FACTOR * k, _MIN_POOL))
        query_context = _weigh(
            Counter(word_tokens(previous_turn_text(previous))), self._context_idf
        )
        ranked = [
            ScoredExample(
                scored.example,
                scored.similarity,
                self._context_similarity(index, query_context, previous is not None),
            )
            for index, scored in pool
        ]
        ranked.sort(key=lambda scored: scored.score, reverse=True)
        return ranked[:k]

    def _context_similarity(
        self, index: int, query_context: dict[str, float], has_previous: bool
    ) -> float:
        example_context = self._context_vectors[index]
        if example_context is None:
            return 0.0 if has_previous else 1.0
        if not has_previous:
            return 0.0
        return min(
            sum(weight * example_context.get(term, 0.0) for term, weight in query_context.items()),
            1.0,
        )

    def search_utterances(self, query: str, k: int) -> list[ScoredExample]:
        """Return up to `k` examples by utterance similarity alone, most similar first."""
        return [scored for _, scored in self._search_utterances(query, k)] if k > 0 else []

    def _search_utterances(self, query: str, k: int) -> list[tuple[int, ScoredExample]]:
        """Return up to `k` (bank position, example) pairs by utterance similarity alone."""
        query_weights = _weigh(Counter(word_tokens(query)), self._idf)
        if not query_weights:
            return []

        scores = np.zeros(len(self.examples), dtype=np.float32)
        for term, query_weight in query_weights.items():
            ids, weights = self._postings[term]
            scores[ids] += weights * query_weight

        # Take extra candidates so that dropping duplicates still leaves k.
        candidates = min(len(scores), 2 * k)
        top = np.argpartition(-scores, candidates - 1)[:candidates]
        top = top[np.argsort(-scores[top], kind="stable")]

        results: list[tuple[int, ScoredExample]] = []
        seen: set[tuple[str, str]] = set()
        for index, score in zip(top.tolist(), scores[top].tolist(), strict=True):
            if score <= 0.0:
                break  # sorted best first: the rest share no word with the query
            key = self._dedup_keys[index]
            if key in seen:
                continue
            seen.add(key)
            results.append((index, ScoredExample(self.examples[index], min(score, 1.0))))
            if len(results) == k:
                break
        return results


def _weigh(counts: Counter[str], idf: dict[str, float]) -> dict[str, float]:
    """Return L2-normalized sublinear TF-IDF weights of the terms that are in `idf`."""
    weights = {
        term: (1.0 + math.log(count)) * idf[term] for term, count in counts.items() if term in idf
    }
    norm = math.sqrt(sum(weight * weight for weight in weights.values()))
    return {term: weight / norm for term, weight in weights.items()} if norm else {}


def _context_vectors(
    examples: Sequence[Example],
) -> tuple[dict[str, float], list[dict[str, float] | None]]:
    """Return the IDF of previous-turn words and each example's previous-turn vector."""
    counts = [
        Counter(word_tokens(previous_turn_text(example.previous))) if example.previous else None
        for example in examples
    ]
    frequency: Counter[str] = Counter()
    for count in counts:
        if count:
            frequency.update(count.keys())
    total = len(examples)
    idf = {term: math.log((1 + total) / (1 + df)) + 1.0 for term, df in frequency.items()}
    return idf, [None if count is None else _weigh(count, idf) for count in counts]
