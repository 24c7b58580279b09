"""Lexical retrieval of the few-shot examples most similar to an utterance.

TF-IDF cosine similarity over lower-cased word tokens, computed through an
inverted index: a query only touches the postings of its own words, so its
cost grows with how common those words are, not with the size of the bank.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.domain.dialogue import Example

__all__ = ["ExampleIndex", "ScoredExample", "word_tokens"]

_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Split text into lower-cased word tokens."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class ScoredExample:
    """A retrieved example with its cosine similarity to the query, in [0, 1]."""

    example: Example
    similarity: float


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

    def _build_postings(
        self, document_counts: list[Counter[str]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for document, counts in enumerate(document_counts):
            weights = self._weigh(counts)
            for term, weight in weights.items():
                ids, values = postings.setdefault(term, ([], []))
                ids.append(document)
                values.append(weight)
        return {
            term: (np.asarray(ids, dtype=np.int32), np.asarray(values, dtype=np.float32))
            for term, (ids, values) in postings.items()
        }

    def _weigh(self, counts: Counter[str]) -> dict[str, float]:
        """Return L2-normalized sublinear TF-IDF weights of the known terms."""
        weights = {
            term: (1.0 + math.log(count)) * self._idf[term]
            for term, count in counts.items()
            if term in self._idf
        }
        norm = math.sqrt(sum(weight * weight for weight in weights.values()))
        return {term: weight / norm for term, weight in weights.items()} if norm else {}

    def __len__(self) -> int:
        return len(self.examples)

    def search(self, query: str, k: int) -> list[ScoredExample]:
        """Return up to `k` examples, most similar first.

        Examples that share no word with the query are left out, and so are
        repeats of an utterance and plan already returned.
        """
        if k <= 0:
            return []
        query_weights = self._weigh(Counter(word_tokens(query)))
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

        results: list[ScoredExample] = []
        seen: set[tuple[str, str]] = set()
        for index in top:
            score = float(scores[index])
            example = self.examples[int(index)]
            key = (example.utterance.lower(), example.plan)
            if score <= 0.0 or key in seen:
                continue
            seen.add(key)
            results.append(ScoredExample(example, min(score, 1.0)))
            if len(results) == k:
                break
        return results
