"""The moving parts of ``bench/experiment.py``: a service to experiment on, one experiment
run to its decision by simulated users, and the impression overhead measurement."""

from __future__ import annotations

import argparse
import gc
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import api_keys_json, free_port, seed_histories, service_env

KEY = "bench-key"
CATCH_UP_S = 60.0
"""How long the stream processor may take to join every answer and click sent."""


def service_settings_env(settings: Any, *, mde: float) -> dict[str, str]:
    """The experiment services' settings, and this process's readout's: the sample size
    for ``mde``, the registry polled twice a second (a new challenger is served within a
    second), one API key, no rate limit (the simulated users are the only client)."""
    settings.monitoring.min_detectable_effect = mde
    settings.serving.ab_challenger_share = 0.5
    return {
        "RTREC_MONITORING__MIN_DETECTABLE_EFFECT": str(mde),
        "RTREC_SERVING__WATCH_INTERVAL_S": "0.5",
        "RTREC_SERVING__API_KEYS": api_keys_json(KEY),
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
    }


class Experimenter:
    """Runs experiments on one service at a time: registers a challenger, waits until the
    service splits traffic onto it, drives simulated users until the readout decides."""

    def __init__(
        self,
        settings: Any,
        truth: Any,
        args: argparse.Namespace,
        *,
        env: dict[str, str],
    ) -> None:
        from rtrec.training import ModelRegistry

        self.settings, self.truth, self.args, self.env = settings, truth, args, env
        self.registry = ModelRegistry(settings)
        self.url = ""

    @contextmanager
    def service(self, *, share: float, name: str) -> Iterator[Any]:
        """A service of the registry's champion and challenger, splitting ``share`` of
        users to the challenger (whatever this process's readout is configured for)."""
        from rtrec.serving.process import running_server

        env = {**self.env, "RTREC_SERVING__AB_CHALLENGER_SHARE": str(share)}
        log = self.settings.log_dir / f"serving-experiment-{name}.log"
        with running_server(free_port(), env=env, log=log, timeout=300) as srv:
            self.url = srv.url
            yield srv

    def experiment(self, bundle: Path, *, label: str, users: Sequence[str]) -> dict[str, Any]:
        """``bundle`` registered anew and set as challenger, then run to a decision by
        simulated ``users``."""
        _, version = self.registry.log_and_register(
            bundle, params={"bench": label}, metrics={}, run_name=f"bench-{label}"
        )
        self.registry.start_experiment(version, reason=f"bench: {label}")
        name = f"{self.registry.champion_version()}-vs-{version}"
        started = time.perf_counter()
        self._wait_served(name)
        row = self._decide(name, users, seed=zlib.crc32(label.encode()))
        row.update(label=label, seconds=round(time.perf_counter() - started, 1))
        print(
            f"  {label} {name}: {row['verdict']} after {row['impressions']} impressions "
            f"(ctr {row['ctr']}, p {row['p_value']}, srm p {row['srm_p_value']}) in "
            f"{row['seconds']} s",
            flush=True,
        )
        return row

    def _wait_served(self, name: str, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=10) as c:
            while time.monotonic() < deadline:  # /status: no answer, no impression
                models = c.get("/status").json()["models"]
                if {v: m["version"] for v, m in models.items()} == dict(
                    zip(("champion", "challenger"), name.split("-vs-"), strict=True)
                ):
                    return
                time.sleep(0.2)
        raise TimeoutError(f"the service did not start experiment {name} in {timeout_s} s")

    def _decide(self, name: str, users: Sequence[str], *, seed: int) -> dict[str, Any]:
        from rtrec.serving.simulator import ClickModel, run_until_decided

        decided = run_until_decided(
            self.settings,
            self.truth,
            base_url=self.url,
            experiment=name,
            api_key=KEY,
            users=users,
            threads=self.args.threads,
            click_model=ClickModel(self.args.attraction, self.args.position_decay),
            seed=seed,
            catch_up_s=CATCH_UP_S,
            exclude_seen=False,  # see bench/experiment.py's docstring
        )
        return _row(decided.readout, decided.sent)


def _row(judged: dict[str, Any], sent: dict[str, int]) -> dict[str, Any]:
    arms = judged["variants"]
    return {
        "experiment": judged["experiment"],
        "verdict": judged["verdict"],
        "impressions": sum(a["impressions"] for a in arms.values()),
        "sent": sent,
        "users": {v: a["users"] for v, a in arms.items()},
        "ctr": {v: round(a["ctr_per_impression"]["rate"] or 0.0, 4) for v, a in arms.items()},
        "design_effect": {v: a.get("design_effect") for v, a in arms.items()},
        "lift": judged["lift"],
        "p_value": round(judged["p_value"], 5),
        "srm_p_value": round(judged["srm_p_value"], 5),
        "required_impressions": judged["required_impressions"],
    }


def partly_trained_bundle(trained: Path, out: Path, *, progress: float, seed: int) -> Path:
    """The trained bundle's two-tower moved back toward a fresh initialisation: every
    trained parameter at ``init + progress * (trained - init)``, the popularity prior and
    encoders kept, item vectors and the served (exact) index rebuilt from the result.

    A model part of the way along the straight path from its initial to its trained
    weights is a controlled stand-in for an undertrained one: the pipeline's epoch
    selection keeps the best epoch (often the first), so fewer epochs do not make a worse
    model, while ``progress`` sets how much worse, from untrained (0) to trained (1)."""
    import torch
    from rtrec.training.artifacts import load_bundle, save_bundle
    from rtrec.training.index import build_index
    from rtrec.training.model import TwoTower
    from rtrec.training.train_config import TrainConfig
    from rtrec.training.trained_model import TrainedModel

    done = load_bundle(trained, use_gpu=False)
    torch.manual_seed(seed)
    fresh = TwoTower(done.net.cfg).state_dict()
    trained_params = {name for name, _ in done.net.named_parameters()}
    state = {
        k: fresh[k] + progress * (v - fresh[k]) if k in trained_params else v
        for k, v in done.net.state_dict().items()
    }
    done.net.load_state_dict(state)
    model = TrainedModel(done.net, done.encoders, TrainConfig(**done.metadata["train_config"]))
    index = build_index(model.item_keys(), kind="flat")
    return save_bundle(
        out,
        model=model,
        index=index,
        popular_items=done.popular_items,
        extra={"partly_trained": {"from": str(trained), "progress": progress, "seed": seed}},
    )


def impression_overhead(settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    """p99 at 200 req/s of the serving benchmark's mix and model: impressions off, on with
    the default sender (a child process) and on with the in-service thread, three
    services measured in turn, the order rotating per round."""
    from rtrec.serving.process import running_server
    from rtrec.training.artifacts import load_bundle

    from bench import serving as sb

    sargs = sb.parse_args(["--duration", str(args.overhead_duration)])
    bundle_dir = sb.resolve_bundle(sargs)
    bundle = load_bundle(bundle_dir, use_gpu=False)
    pop, _, hist = sb.population(bundle, sargs.click_users, sargs.seed)
    seed_histories(settings, hist)
    del bundle
    gc.collect()
    warm = argparse.Namespace(**{**vars(sargs), "duration": sargs.warmup, "seed": sargs.seed + 1})
    base = service_env(bundle_dir, sb.KEY)
    variants = {
        "off": {"RTREC_SERVING__IMPRESSIONS": "false"},
        "on": {"RTREC_SERVING__IMPRESSION_SENDER": "process"},
        "on_thread": {"RTREC_SERVING__IMPRESSION_SENDER": "thread"},
    }
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                running_server(
                    free_port(),
                    env={**base, **extra},
                    log=settings.log_dir / f"serving-imp-{name}.log",
                    timeout=300,
                )
            )
            for name, extra in variants.items()
        }
        for srv in servers.values():
            sb.measure_rate(srv, pop, 100.0, warm)
        names = list(servers)
        for n in range(args.overhead_rounds):
            for name in names[n % 3 :] + names[: n % 3]:
                row = sb.measure_rate(servers[name], pop, float(sb.AT_RATE), sargs)
                rows[name].append(row)
                print(f"  impressions {name}: {sb.progress_line(row)}", flush=True)
    p99 = {k: [r["recommend"]["p99_ms"] for r in v] for k, v in rows.items()}

    def overhead(name: str) -> float:
        diffs = [a - b for a, b in zip(p99[name], p99["off"], strict=True)]
        return round(float(np.median(diffs)), 3)

    return {
        "impression_overhead_p99_ms": overhead("on"),
        "impression_overhead_p99_ms_thread": overhead("on_thread"),
        "p99_ms": p99,
        "cpu_s_per_request": {k: [r["cpu_s_per_request"] for r in v] for k, v in rows.items()},
        "errors": sum(r["errors"] for v in rows.values() for r in v),
        "rate_rps": sb.AT_RATE,
        "duration_s": args.overhead_duration,
        "model": f"synthetic {sargs.items}-item bundle ({bundle_dir})",
    }
