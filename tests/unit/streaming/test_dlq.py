"""Dead letters keep the original bytes and say why, where the event came from."""

from __future__ import annotations

from types import SimpleNamespace

from rtrec.streaming.dlq import DeadLetter, decode


def test_headers_round_trip() -> None:
    letter = DeadLetter("ev", 2, 41, b"u1", b"\xff\x00raw", "invalid JSON: x", "<json>")
    record = SimpleNamespace(headers=letter.headers(), value=letter.value)
    assert decode(record) == {
        "reason": "invalid JSON: x",
        "field": "<json>",
        "source": "ev/2/41",
        "value": b"\xff\x00raw",
    }
