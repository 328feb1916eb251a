"""TF-IDF of item text without Spark, reproducing the ETL's fitted Spark ML pipeline.

The ETL saves the vocabulary, IDF weights and tokenizer settings as plain JSON; serving loads
them here to vectorize items that arrived after training (cold items) exactly as Spark did.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # core.artifact needs torch; the ETL imports this module without it
    from core.artifact import NewItem

# Spark's RegexTokenizer uses Java's [^\p{L}\p{N}]+; Python's [\W_]+ splits on the same set.
JAVA_TOKEN_GAPS = r"[^\p{L}\p{N}]+"
PY_TOKEN_GAPS = r"[\W_]+"


def item_text(title: str | None, description: str | None, categories: Iterable[str] | None,
              tags: Iterable[str] | None) -> str:
    """The one text an item is vectorized from (same fields, same order as the ETL)."""
    parts = [title or "", description or "", " ".join(categories if categories is not None else []),
             " ".join(tags if tags is not None else [])]
    return " ".join(parts)


@dataclass(frozen=True)
class ContentVectorizer:
    vocabulary: Sequence[str]
    idf: Sequence[float]
    stop_words: frozenset[str]
    min_token_length: int
    categories: Sequence[str]

    @classmethod
    def load(cls, path: str | Path) -> "ContentVectorizer":
        spec = json.loads(Path(path).read_text())
        return cls(vocabulary=spec["vocabulary"], idf=spec["idf"],
                   stop_words=frozenset(spec["stop_words"]),
                   min_token_length=spec["tokenizer"]["min_token_length"],
                   categories=spec["categories"])

    def tokens(self, text: str) -> list[str]:
        words = re.split(PY_TOKEN_GAPS, text.lower())
        return [w for w in words if len(w) >= self.min_token_length and w not in self.stop_words]

    def transform(self, text: str) -> tuple[list[int], list[float]]:
        """Sparse L2-normalized TF-IDF (indices ascending, values) of one text."""
        index = self._index
        counts = Counter(index[t] for t in self.tokens(text) if t in index)
        pairs = sorted((i, c * self.idf[i]) for i, c in counts.items())
        norm = math.sqrt(sum(v * v for _, v in pairs)) or 1.0
        return [i for i, _ in pairs], [v / norm for _, v in pairs]

    def category_ids(self, categories: Iterable[str]) -> list[int]:
        lookup = {c: i for i, c in enumerate(self.categories)}
        return sorted({lookup[c] for c in categories if c in lookup})

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {t: i for i, t in enumerate(self.vocabulary)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def vectorize(rows: list[dict], vectorizer: ContentVectorizer) -> list[NewItem]:
    """Catalog rows (``item_id, title, description, categories, tags``) as vectorized items, the
    way the ETL vectorized the training catalog: what add-items appends to an artifact (archives)
    and what the added-items study appends (training)."""
    from core.artifact import NewItem

    out = []
    for r in rows:
        ti, tv = vectorizer.transform(item_text(r["title"], r["description"], r["categories"],
                                                r["tags"]))
        out.append(NewItem(item_id=str(r["item_id"]), title=r["title"],
                           categories=tuple(r["categories"]),
                           category_ids=tuple(vectorizer.category_ids(r["categories"])),
                           text_indices=tuple(ti), text_values=tuple(tv)))
    return out
