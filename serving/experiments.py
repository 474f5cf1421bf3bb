"""Sticky A/B assignment and shadow scoring of the challenger."""

from __future__ import annotations

import hashlib

CHAMPION = "champion"
CHALLENGER = "challenger"


def variant_for(user_id: str, challenger_share: float, *, salt: str = "rtrec-ab") -> str:
    """The same user always gets the same variant (hash of the id, not random per request)."""
    if challenger_share <= 0:
        return CHAMPION
    h = int.from_bytes(hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest(), "big")
    return CHALLENGER if h / 2**64 < challenger_share else CHAMPION
