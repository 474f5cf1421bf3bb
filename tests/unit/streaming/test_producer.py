"""Producer pacing: a target rate, or the events' own timestamps sped up."""

from __future__ import annotations

import time

from rtrec.streaming.producer import publish

from rtrec.config import load_settings


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, float]] = []

    def send(self, topic: str, *, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value, time.perf_counter()))

    def flush(self) -> None:
        pass


def test_rate_paces_and_keys_are_kept(tmp_path) -> None:
    settings = load_settings(work_dir=tmp_path)
    fake = FakeProducer()
    pairs = [(f"u{i % 3}".encode(), f'{{"n": {i}}}'.encode()) for i in range(200)]
    out = publish(settings, pairs, rate=1000, progress=False, producer=fake)
    assert out["published"] == 200
    assert [(k, v) for _, k, v, _ in fake.sent] == pairs
    assert {t for t, *_ in fake.sent} == {settings.kafka.events_topic}
    span = fake.sent[-1][3] - fake.sent[0][3]
    assert 0.17 <= span <= 0.6  # 199 gaps at 1 ms each, some slack for a busy machine


def test_speedup_replays_event_time_faster(tmp_path) -> None:
    settings = load_settings(work_dir=tmp_path)
    fake = FakeProducer()
    ts = [0, 1000, 1000, 3000]  # ms of event time
    publish(
        settings,
        [(b"u", b"{}")] * 4,
        timestamps=ts,
        speedup=10.0,
        progress=False,
        producer=fake,
    )
    times = [t for *_, t in fake.sent]
    assert 0.08 <= times[1] - times[0] <= 0.25  # 1 s of event time at 10x
    assert 0.25 <= times[3] - times[0] <= 0.6  # 3 s at 10x
