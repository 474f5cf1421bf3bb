"""Id <-> index vocabularies. Index 0 is reserved for unknown ids and padding."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

OOV = 0


class Vocab:
    """A frozen mapping from string ids to dense indices ``1..n`` (0 = unknown/padding)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids: list[str] = list(ids)
        self._index = {v: i + 1 for i, v in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")

    @classmethod
    def build(cls, values: Iterable[str]) -> Vocab:
        """Sorted unique ids: the same data always gives the same indices."""
        return cls(sorted({str(v) for v in values}))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        """Rows an embedding table needs (ids + the reserved 0)."""
        return len(self.ids) + 1

    def __contains__(self, value: str) -> bool:
        return value in self._index

    def index(self, value: str) -> int:
        return self._index.get(value, OOV)

    def encode(self, values: Iterable[str]) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(v, OOV) for v in values), dtype=np.int64)

    def encode_lists(self, lists: Iterable[Sequence[str] | None], length: int) -> np.ndarray:
        """Ragged id lists -> ``[n, length]`` indices, truncated, right-padded with 0."""
        rows = list(lists)
        out = np.zeros((len(rows), length), dtype=np.int64)
        get = self._index.get
        for r, values in enumerate(rows):
            if values is None:
                continue
            for c, v in enumerate(values[:length]):
                out[r, c] = get(v, OOV)
        return out

    def decode(self, indices: Iterable[int]) -> list[str | None]:
        return [self.ids[i - 1] if 0 < i <= len(self.ids) else None for i in indices]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls(json.loads(path.read_text()))
