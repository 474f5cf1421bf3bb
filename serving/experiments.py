"""Sticky A/B assignment and shadow scoring of the challenger."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"


def variant_for(user_id: str, challenger_share: float, *, salt: str = "rtrec-ab") -> str:
    """The same user always gets the same variant (hash of the id, not random per request).

    The service salts the hash with the experiment (:func:`experiment_id`), so each new
    experiment draws its arms afresh: with one fixed salt the same users would be the
    challenger's in every experiment, and whatever set them apart (heavier users, a
    taste the last challenger trained them into) would carry over from one test into the
    next instead of averaging out. Within one experiment the assignment is sticky, and
    growing the share only moves champion users over."""
    if challenger_share <= 0:
        return CHAMPION
    h = int.from_bytes(hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest(), "big")
    return CHALLENGER if h / 2**64 < challenger_share else CHAMPION


def experiment_id(models: Mapping[str, Any], challenger_share: float) -> str | None:
    """The experiment an answer belongs to: ``<champion version>-vs-<challenger version>``
    while both are loaded and the split gives the challenger users, else None. Named by
    the pair, so a new challenger (or a new champion) starts a new experiment whose
    counts are not mixed with the last one's; the impression carries it, and the stream
    processor keeps its aggregates under it (``rtrec.streaming.attribution``)."""
    champion, challenger = models.get(CHAMPION), models.get(CHALLENGER)
    if champion is None or challenger is None or challenger_share <= 0:
        return None
    return f"{champion.version or 'unversioned'}-vs-{challenger.version or 'unversioned'}"
