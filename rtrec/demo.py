"""``rtrec demo``: the main job, the whole loop on the embedded default.

Each step calls one stage's public API; the demo adds only progress, timing and the
summary. Steps that need a stage not installed yet are reported as skipped, never faked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from rtrec.config import Settings, get_settings


@dataclass
class DemoReport:
    steps: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        click.secho(f"==> {name}", fg="cyan", bold=True)
        start = time.perf_counter()
        out = fn() or {}
        seconds = time.perf_counter() - start
        self.steps.append({"step": name, "seconds": round(seconds, 2), **out})
        detail = ", ".join(f"{k}={v}" for k, v in out.items())
        click.echo(f"    done in {seconds:.1f} s{': ' + detail if detail else ''}")
        return out


def _publish_and_read_back(settings: Settings, dataset: Any) -> dict[str, Any]:
    """Publish every event to Kafka keyed by user, then read them back in a consumer group."""
    from kafka import KafkaConsumer, KafkaProducer
    from tqdm import tqdm

    topic = settings.kafka.events_topic
    n = len(dataset.events)
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )
    start = time.perf_counter()
    with tqdm(total=n, desc="publish", unit="ev", leave=False) as bar:
        for i, (key, value) in enumerate(dataset.iter_keyed_event_json()):
            producer.send(topic, key=key, value=value)
            if i % 5000 == 0:
                bar.update(5000 if i else 1)
        producer.flush()
        bar.update(n - bar.n)
    produce_s = time.perf_counter() - start
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"rtrec-demo-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        max_poll_records=5000,
    )
    got = 0
    start = time.perf_counter()
    deadline = time.monotonic() + 120
    with tqdm(total=n, desc="consume", unit="ev", leave=False) as bar:
        while got < n and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            k = sum(len(v) for v in batch.values())
            got += k
            bar.update(k)
    consume_s = time.perf_counter() - start
    consumer.commit()
    consumer.close()
    return {
        "published": n,
        "read_back": got,
        "produce_events_per_s": round(n / produce_s),
        "consume_events_per_s": round(got / consume_s) if consume_s else None,
    }


@click.command()
@click.option("--quick", is_flag=True, help="Small data set; the whole loop in minutes.")
@click.option(
    "--data", default="synthetic", show_default=True, help="synthetic or a MovieLens path."
)
@click.option("--keep-running", is_flag=True, help="Leave the stack up at the end.")
def demo(quick: bool, data: str, keep_running: bool) -> None:
    """Run the whole loop on the embedded default and print a summary."""
    from rtrec import stack
    from rtrec.data import SyntheticConfig, generate, load_dataset

    settings = get_settings()
    report = DemoReport()
    try:
        report.step(
            "embedded stack up", lambda: {"healthy": all(r.healthy for r in stack.up(settings))}
        )
        holder: dict[str, Any] = {}

        def make_data() -> dict[str, Any]:
            if data == "synthetic":
                cfg = SyntheticConfig.small() if quick else SyntheticConfig(seed=settings.seed)
                holder["ds"] = generate(cfg)
            else:
                holder["ds"] = load_dataset(data)
            holder["ds"].save(settings.data_dir / "demo")
            s = holder["ds"].summary()
            return {k: s[k] for k in ("n_users", "n_items", "n_events", "days") if k in s}

        report.step("generate data", make_data)
        report.step(
            "publish through Kafka and read back",
            lambda: _publish_and_read_back(settings, holder["ds"]),
        )
        ok = report.steps[-1]["read_back"] == report.steps[-1]["published"]
    finally:
        if not keep_running:
            report.step("embedded stack down", lambda: {"stopped": stack.down(settings)})
    click.secho("\nsummary", bold=True)
    for s in report.steps:
        click.echo(f"  {s['step']:<40} {s['seconds']:>7.1f} s")
    click.echo(json.dumps({"steps": report.steps}))
    if not ok:
        raise click.ClickException("not every published event was read back")
