"""Constants and helpers the cluster profile's test modules share (fixtures: conftest.py)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from rtrec.app import cluster_airflow
from rtrec.config import Settings

PROFILE_FILE = Path(__file__).resolve().parents[2] / "infra" / "rtrec.local-cluster.yaml"
RATE = 20
"""Requests per second per API key, across the replicas."""
CLIENT_TIMEOUT_S = 1.0
LOAD_KEY, BURST_KEY = secrets.token_hex(16), secrets.token_hex(16)
FAULT_KEYS = [secrets.token_hex(16) for _ in range(4)]
"""The Redis node fault test's keys: each its own rate bucket, so it may ask 4x RATE."""
API_KEYS = [LOAD_KEY, BURST_KEY, *FAULT_KEYS]
REPLICAS = {"serving-1", "serving-2"}
FIRST_BUNDLE = "first-bundle"
"""The synthetic bundle (in the work dir) registered as the first champion."""


def wait_replicas_serve(settings: Settings, version: str, timeout_s: float = 120) -> dict:
    """Until every replica's own ``/status`` names ``version`` as champion (each polls the
    alias every ``serving.watch_interval_s``); returns what each reported."""
    from rtrec.app.demo.engines import replica_versions

    deadline = time.monotonic() + timeout_s
    while set((seen := replica_versions(settings)).values()) != {str(version)}:
        assert time.monotonic() < deadline, f"after {timeout_s:.0f} s replicas serve {seen}"
        time.sleep(0.5)
    return seen


def url(s: Settings) -> str:
    return f"http://{s.serving.host}:{s.serving.port}"


def recommend(c: httpx.Client, key: str, user: str = "u1") -> httpx.Response:
    return c.post("/recommend", json={"user_id": user, "k": 5}, headers={"X-API-Key": key})


def airflow_processes(settings: Settings) -> list[int]:
    """Live processes whose environment names the profile's Airflow home: task processes
    (which leave the scheduler's session) and their Spark drivers. Airflow's processes that
    set their title lose their environment with it; they are in the recorded tree."""
    home = str(cluster_airflow.home(settings))
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AIRFLOW_HOME") == home and proc.is_running():
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def work_dir_strays(settings: Settings) -> list[int]:
    """Processes other than this one and its children that name the work dir on their
    command line. This process's own Spark driver JVM names the work dir too (its log4j
    file); it is the test's, not the profile's."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    work = str(settings.work_dir)
    return [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.info["pid"] not in ours and any(work in a for a in (p.info["cmdline"] or []))
    ]


def profile_processes(settings: Settings) -> list[int]:
    """Every process of the profile still running (see the two helpers above)."""
    return sorted({*work_dir_strays(settings), *airflow_processes(settings)})


def committed(settings: Settings) -> int:
    """Offsets the processors' consumer group committed on the events topic, summed: the
    events applied and durable. (Tansu's end offsets are not the count of records sent:
    tests count what they published instead.)"""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        group = settings.kafka.consumer_group
        offsets = admin.list_group_offsets([group]).get(group, {})  # kafka-python 3
    finally:
        admin.close()
    topic = settings.kafka.events_topic
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset >= 0)


def own_users_events(
    prefix: str, *, seed: int, start_ts: int, n_users: int = 40, n_events: int = 1200
) -> Any:
    """A small synthetic data set whose users are its own (``prefix`` + id) and whose events
    start at ``start_ts``: its users' online features can be compared with ones computed
    from its events alone, whatever other tests streamed before."""
    import dataclasses

    from rtrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig.small(
        seed=seed, n_users=n_users, n_items=60, n_events=n_events, start_ts=start_ts
    )
    data = generate(cfg)
    rename = {"user_id": lambda f: prefix + f["user_id"].astype(str)}
    return dataclasses.replace(
        data, events=data.events.assign(**rename), users=data.users.assign(**rename)
    )
