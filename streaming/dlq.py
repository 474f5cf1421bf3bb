"""Dead letters: the original bytes of a rejected event plus why it was rejected.

Sent (and acknowledged) before the batch's state commit, so a rejected event is never
lost; a batch that fails after the send and is replayed sends its letters again
(at least once: ``rtrec-source`` names topic/partition/offset, so consumers can dedupe).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DLQ_HEADERS = ("rtrec-reason", "rtrec-field", "rtrec-source")


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    field: str | None

    def headers(self) -> list[tuple[str, bytes]]:
        source = f"{self.topic}/{self.partition}/{self.offset}"
        return [
            ("rtrec-reason", self.reason.encode()[:2048]),
            ("rtrec-field", (self.field or "").encode()),
            ("rtrec-source", source.encode()),
        ]


def send(producer: Any, dlq_topic: str, letters: list[DeadLetter]) -> None:
    """Publish dead letters (value = the original bytes, unchanged) and wait for the acks."""
    futures = [
        producer.send(dlq_topic, key=d.key, value=d.value, headers=d.headers()) for d in letters
    ]
    for f in futures:
        f.get(timeout=30)


def decode(record: Any) -> dict[str, Any]:
    """A consumed DLQ record as a dict (reason, field, source, original bytes)."""
    headers = {k: v.decode(errors="replace") for k, v in (record.headers or [])}
    return {
        "reason": headers.get("rtrec-reason", ""),
        "field": headers.get("rtrec-field") or None,
        "source": headers.get("rtrec-source", ""),
        "value": record.value,
    }


def as_json(record: Any) -> str:
    d = decode(record)
    d["value"] = d["value"][:200].decode(errors="replace")
    return json.dumps(d)
