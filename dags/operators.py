"""Reusable Airflow operators for rtrec: import them into your own DAGs.

Every operator runs one step of :mod:`rtrec.dags.steps` and pushes the step's JSON result as
its XCom ``return_value`` and each top-level key as an XCom of that name, so downstream
tasks take ``op.output`` (the whole dict) or ``op.output["version"]`` (one key) as a
templated argument. Arguments listed in ``template_fields`` accept Jinja
(``"{{ params.epochs }}"``) and XComArgs; DAGs should set
``render_template_as_native_obj=True`` so numbers and dicts stay numbers and dicts.

Where a step runs is a setting, not a code change:

- ``in_process`` (default): in the task's worker, on the embedded stack;
- ``command``: ``<command> STEP 'JSON'`` in a subprocess, where ``<command>`` is e.g.
  ``python -m rtrec.dags.steps`` (default),
  ``docker run --rm rtrec:latest python -m rtrec.dags.steps`` or
  ``spark-submit --master spark://host:7077 /opt/rtrec/dags/steps.py``.

Per operator with ``run_mode=`` / ``command=``, or for every task through the Airflow
Variables ``rtrec_run_mode`` and ``rtrec_step_command`` (a JSON list).

Steps that talk to services (MLflow, Redis, Kafka, the serving API) retry with exponential
backoff by default (:data:`SERVICE_RETRIES`), so a service restart does not fail a run;
pure compute steps do not, since a retry would only repeat a deterministic failure. An
argument, DAG ``default_args`` or task ``retries=`` set by you wins. Errors that no retry
can fix (bad input, a missing file or version) fail the task at once either way.

Each task logs its arguments, our loggers at INFO (extras folded into the message) and,
when the step finishes, its result; raw stderr lines of the step (the Spark JVM's) get
the level they state instead of Airflow's error level (:func:`rtrec.logging.route_stderr`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from rtrec.dags.step_variables import _brief, _command_variable, _variable
from rtrec.dags.steps import RESULT_PREFIX, run_step

from rtrec.errors import ConfigError, InvalidInput, NotFound, RtrecError
from rtrec.logging import configure_task_logging, route_stderr, stderr_level

logger = logging.getLogger(__name__)

RunMode = Literal["in_process", "command"]
RUN_MODES: tuple[str, ...] = ("in_process", "command")
# -P: the task's working directory (the Airflow home, whose ``dags/`` folder holds user
# DAGs) must not shadow the installed ``dags`` package.
DEFAULT_COMMAND = (sys.executable, "-P", "-m", "rtrec.dags.steps")

SERVICE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=15),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}
"""Defaults of the steps that talk to services: 15 s, 30 s, 60 s between attempts, which
outlasts a restart of MLflow, Redis, the broker or the service."""

PERMANENT_ERRORS = (InvalidInput, NotFound, ConfigError)
"""rtrec errors a retry cannot fix; ``Unavailable`` (a service down) is retried."""


class RtrecStepOperator(BaseOperator):
    """Base class: run the step named ``step`` with the operator's templated arguments.

    Subclasses name the step and list their arguments in ``template_fields``; ``None``
    arguments are left to the step's defaults.
    """

    step: ClassVar[str] = ""
    talks_to_services: ClassVar[bool] = False
    """Retry with backoff by default (:data:`SERVICE_RETRIES`)."""
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        run_mode: RunMode | None = None,
        command: Sequence[str] | None = None,
        command_timeout_s: float = 6 * 3600,
        **kwargs: Any,
    ) -> None:
        if self.talks_to_services:
            defaults = kwargs.get("default_args") or {}
            for key, value in SERVICE_RETRIES.items():
                if key not in kwargs and key not in defaults:
                    kwargs[key] = value
        super().__init__(**kwargs)
        if run_mode is not None and run_mode not in RUN_MODES:
            raise InvalidInput(
                f"task {self.task_id}: run_mode {run_mode!r} is not one of {RUN_MODES}",
                field="run_mode",
            )
        self.run_mode = run_mode
        self.command = list(command) if command is not None else None
        self.command_timeout_s = command_timeout_s

    def arguments(self) -> dict[str, Any]:
        """The step's keyword arguments: the rendered template fields that are set."""
        return {
            name: getattr(self, name)
            for name in self.template_fields
            if getattr(self, name) is not None
        }

    def execute(self, context: Any) -> dict[str, Any]:
        configure_task_logging()
        args = self.arguments()
        mode = self.run_mode or _variable("rtrec_run_mode", "in_process")
        if mode not in RUN_MODES:
            raise AirflowFailException(
                f"Airflow Variable rtrec_run_mode is {mode!r}, not one of {RUN_MODES}"
            )
        logger.info("rtrec step %s (%s) with %s", self.step, mode, _brief(args))
        try:
            if mode == "in_process":
                with route_stderr():
                    result = run_step(self.step, args)
            else:
                result = self._run_command(args)
        except PERMANENT_ERRORS as exc:
            # The error tree's message names the offending field or id; retrying the same
            # arguments would only fail the same way.
            raise AirflowFailException(f"{self.step} failed: {exc}") from exc
        except RtrecError as exc:
            raise RuntimeError(f"{self.step} failed: {exc}") from exc
        logger.info("rtrec step %s result: %s", self.step, json.dumps(result, default=str))
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            # One XCom per top-level key too, so ``op.output["version"]`` works downstream.
            for key, value in result.items():
                ti.xcom_push(key=key, value=value)
        return result

    def _run_command(self, args: dict[str, Any]) -> dict[str, Any]:
        command = self.command or _command_variable()
        command = list(command or DEFAULT_COMMAND)
        proc = subprocess.run(
            [*command, self.step, json.dumps(args, default=str)],
            capture_output=True,
            text=True,
            timeout=self.command_timeout_s,
            check=False,
        )
        for line in proc.stderr.splitlines()[-50:]:
            if line.strip():
                logger.log(stderr_level(line), "[%s] %s", self.step, line)
        results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not results:
            raise RuntimeError(
                f"{self.step} via {command[0]} exited {proc.returncode} without a result: "
                f"{(proc.stderr or proc.stdout)[-2000:]}"
            )
        return json.loads(results[-1].removeprefix(RESULT_PREFIX))


class BuildTrainingSetOperator(RtrecStepOperator):
    """Spark point-in-time training sets. XCom: ``root``, ``counts``, ``protocol``.

    :param data: a data set (``synthetic:small``, a saved directory, MovieLens); default
        the stream's offline event log.
    :param protocol: ``temporal`` (train on the past) or ``random``.
    """

    step = "build_training_set"
    template_fields: Sequence[str] = ("data", "protocol")

    def __init__(self, *, data: str | None = None, protocol: str = "temporal", **kwargs: Any):
        super().__init__(**kwargs)
        self.data, self.protocol = data, protocol


class TrainTwoTowerOperator(RtrecStepOperator):
    """Select on validation, refit on train + validation, judge on the gate slice beside
    the baselines and the champion, build the served index and measure its recall (a run
    whose index misses ``settings.training.min_index_recall`` fails here).

    XCom: ``bundle_dir``, ``val_metrics``, ``gate_metrics``, ``test_metrics``,
    ``heldout_split``, ``heldout_metrics``, ``evidence`` (the gate's), ``index``, ``params``.

    :param training_sets: the training-set root (``build.output["root"]``).
    :param epochs: training epochs; ``None`` for the trainer's default.
    """

    step = "train_two_tower"
    template_fields: Sequence[str] = ("training_sets", "epochs")

    def __init__(self, *, training_sets: Any, epochs: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.training_sets, self.epochs = training_sets, epochs


class EvaluateAndRegisterOperator(RtrecStepOperator):
    """Check the gate metric, log the run to MLflow and register the challenger.

    XCom: ``version``, ``run_id``, ``gate_metric``, ``gate_value``.

    :param fit: the training step's result (``train.output``).
    :param reason: why this run happened (e.g. the drift verdict); logged as a tag.
    """

    step = "evaluate_and_register"
    talks_to_services = True
    template_fields: Sequence[str] = ("fit", "reason")

    def __init__(self, *, fit: Any, reason: Any = "", **kwargs: Any):
        super().__init__(**kwargs)
        self.fit, self.reason = fit, reason


class PromoteOperator(RtrecStepOperator):
    """The promotion gate on the fit's evidence (challenger vs the champion it scored on
    the gate slice, paired bootstrap over users; rule and margin in ``settings.training``).

    XCom: ``promoted`` (bool), ``reason``, ``evidence`` (slice, size, time range, both
    scores, gain and its interval), ``margin``, ``champion_version``, ``ab_test`` (passed,
    and became the challenger of an A/B test: ``training.promotion`` ``ab``).

    :param version: the registered challenger (``register.output["version"]``).
    :param fit: the training step's result (``train.output``), which carries the evidence.
    """

    step = "promote"
    talks_to_services = True
    template_fields: Sequence[str] = ("version", "fit")

    def __init__(self, *, version: Any, fit: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.version, self.fit = version, fit


class TellServingOperator(RtrecStepOperator):
    """Confirm the service swapped to the new champion (it watches the MLflow alias).

    XCom: ``notified``, ``serving_version``, ``reason``. Never fails for a stopped service.
    """

    step = "tell_serving"
    talks_to_services = True
    template_fields: Sequence[str] = ("version", "timeout_s")

    def __init__(self, *, version: Any, timeout_s: Any = 30.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.version, self.timeout_s = version, timeout_s


class MaterializeFeaturesOperator(RtrecStepOperator):
    """Rebuild the online store's user, item and trending stream features from the offline
    log through the stream processor's aggregation (``rtrec.streaming.backfill_online_store``)
    and materialize the catalog and profile views; XCom: ``users``, ``items``, ``events``,
    ``hours``, ``end_ms``, ``trending_epoch_ms``, ``batch_views``.

    :param end_ms: end of the replay (ms); default just after the newest logged event.
    :param days: replay only the last ``days`` before ``end_ms``; None (default) replays the
        whole log, which the features need to equal what the stream wrote (histories and
        trending scores reach back to the first event; see the step).
    """

    step = "materialize_features"
    talks_to_services = True
    template_fields: Sequence[str] = ("end_ms", "days")

    def __init__(self, *, end_ms: Any = None, days: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.end_ms, self.days = end_ms, days


class DriftCheckOperator(RtrecStepOperator):
    """One Evidently drift check; XCom: the verdict (``drifted``, ``drift_share``, ``reason``,
    ``columns``, ``outcome``). Branch or short-circuit on ``output["drifted"]``.

    :param now_ms: end of the current window (ms); default the newest logged event.
    :param reference_days, window_days: window lengths.
    :param scores: also score both windows with the champion (score drift columns).
    :param alert: send an alert (Kafka alerts topic + log) when drifted.
    """

    step = "drift_check"
    talks_to_services = True
    template_fields: Sequence[str] = ("now_ms", "reference_days", "window_days", "scores", "alert")

    def __init__(
        self,
        *,
        now_ms: Any = None,
        reference_days: Any = 7.0,
        window_days: Any = 1.0,
        scores: Any = True,
        alert: Any = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.now_ms, self.reference_days, self.window_days = now_ms, reference_days, window_days
        self.scores, self.alert = scores, alert


class ExperimentDecisionOperator(RtrecStepOperator):
    """Decide the running A/B test on its readout (``rtrec.monitoring.decide_experiment``):
    promote the challenger when it wins, archive it when the champion wins, alert on a
    sample ratio mismatch, else nothing. XCom: ``decision`` (``promoted``, ``archived``,
    ``alerted``, ``none``), ``reason``, ``promoted`` (bool), ``experiment``, ``verdict``,
    ``champion_version``, ``challenger_version``, ``readout``."""

    step = "experiment_decision"
    talks_to_services = True
    template_fields: Sequence[str] = ()


def is_drifted(verdict: dict[str, Any] | None) -> bool:
    """Short-circuit callable: continue downstream only on a drifted verdict."""
    return bool(verdict and verdict.get("drifted"))


def is_promoted(decision: dict[str, Any] | None) -> bool:
    """Short-circuit callable: tell serving only when the gate promoted the challenger."""
    return bool(decision and decision.get("promoted"))
