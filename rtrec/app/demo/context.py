"""What the demo's steps share: the settings and options, the warm DAG runner, and what
each step leaves for the later ones and for the summary and the report."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtrec.config import Settings

if TYPE_CHECKING:
    from rtrec.app.dag_runs import DagRunner, DagRunResult, Profile, SchedulerRunner
    from rtrec.data import Dataset


@dataclass(frozen=True)
class DataSplit:
    """The demo's data cut where the distribution shifts: ``before`` is replayed and
    trained on first, ``after`` arrives on the stream later."""

    dataset: Dataset
    before: Dataset
    after: Dataset
    cut: int
    """Event time (ms) of the shift."""


@dataclass
class DemoContext:
    """One demo run: its inputs, then each step's results as the steps fill them in.

    Steps run in a fixed order and an error stops the run, so a step finds what the
    earlier ones left; the ``need_*`` accessors say which step was meant to leave it
    should that order ever be broken.
    """

    settings: Settings
    runner: DagRunner | SchedulerRunner
    """The one warm DAG runner every DAG run goes through (Airflow, torch and the Spark
    JVM loaded once); in the cluster profile Airflow's own scheduler, over its REST API."""
    profile: Profile = "embedded"
    """Which engines run the loop: the embedded default, or the cluster profile's
    (``rtrec demo --profile cluster``, :mod:`rtrec.app.demo.cluster`)."""
    quick: bool = False
    data: str = "synthetic"
    epochs: int | None = None
    """Cap on training epochs passed to every training run (None: each preset's own)."""
    background: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    """Work that overlaps the steps (the DAG runner's start while the events stream)."""
    extras: dict[str, Any] = field(default_factory=lambda: {"gates": []})
    """What the summary and the HTML report show beyond the steps' own outputs: quality
    tables, the gates' decisions, latencies, the drift verdict, the report's path."""
    split: DataSplit | None = None
    runner_ready: Future[Any] | None = None
    first: DagRunResult | None = None
    """The first training run."""
    second: DagRunResult | None = None
    """The training run the drift monitor triggered, once it ran."""
    feedback_ts: list[int] = field(default_factory=list)
    """Event times of the clicks the burst posted as feedback."""
    retrain_queued: bool = False
    no_retrain: str | None = None
    """Why no retraining will run, once the drift check has said so."""
    ab_skipped: str | None = None
    """Why this run has no A/B phase (``--quick``, MovieLens data), or None."""
    ab_decision: dict[str, Any] | None = None
    """What ``rtrec_experiment_decision`` decided, once it ran."""

    def need_split(self) -> DataSplit:
        """The data, which the "generate data" step makes."""
        if self.split is None:
            raise RuntimeError("no data yet: the demo's 'generate data' step makes it")
        return self.split

    def wait_runner(self) -> None:
        """Block until the DAG runner started in the replay step is up (its error, if
        starting it failed)."""
        if self.runner_ready is None:
            raise RuntimeError("the DAG runner was never started: the replay step starts it")
        self.runner_ready.result()
