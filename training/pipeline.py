"""``train(settings)``: event log -> training sets -> select -> refit -> judge -> registry.

One function per step, each a library call the CLI, the Airflow DAG and the benchmarks share:

1. :func:`event_log_for` — the stream's offline log, or one written from ``--data``;
2. :func:`rtrec.training.dataset.build_training_sets` (Spark, point-in-time features), split in
   time order train | validation | gate slice (| test where the protocol has one);
3. :func:`fit_and_evaluate`, itself named steps:
   - load the registered champion (``rtrec.training.champion``);
   - select on validation: the objective, epochs and popularity prior (both objectives
     fitted on train, validation keeps one) and EASE's L2 (``rtrec.training.selection``);
   - refit the chosen settings on train + validation: the model that is served learns
     from the freshest labelled period (ditto);
   - judge on the gate slice, touched by no selection step: the refitted model, the
     refitted baselines and the registered champion, with the same seen-item mask, per
     user (the gate's evidence; ``rtrec.training.judging``);
   - build the served index, measure its recall on the gate users' queries (a bar that
     fails the run; ``rtrec.training.served_index``), write the report and save the
     bundle that was scored;
4. :meth:`rtrec.training.registry.ModelRegistry.log_and_register` as ``challenger``, then
   :meth:`~rtrec.training.registry.ModelRegistry.promote_on_evidence`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtrec.training.artifacts import save_bundle
from rtrec.training.champion import load_champion
from rtrec.training.dataset import build_training_sets
from rtrec.training.evaluate import Ranking, evaluate, write_report
from rtrec.training.gate import GateEvidence
from rtrec.training.index import ItemIndex
from rtrec.training.judging import gate_evidence, judge
from rtrec.training.ranker_bundle import save_ranker
from rtrec.training.registry import GATE_METRIC, ModelRegistry, PromotionDecision
from rtrec.training.results import MODEL_NAME, TWO_STAGE, FitOutput, flat_metrics, json_safe
from rtrec.training.selection import Selection, refit, select_on_validation
from rtrec.training.served_index import build_served_index
from rtrec.training.sets import Frames, Protocol, SplitConfig, TrainingSets
from tqdm.auto import tqdm

from rtrec.config import Settings
from rtrec.errors import InvalidInput

__all__ = [
    "MODEL_NAME",
    "FitOutput",
    "Fitter",
    "Frames",
    "TrainResult",
    "event_log_for",
    "fit_and_evaluate",
    "flat_metrics",
    "split_config",
    "train",
]

logger = logging.getLogger(__name__)

Fitter = Callable[..., FitOutput]
"""``fitter(settings, sets, *, out_dir, epochs, progress) -> FitOutput``; default
:func:`fit_and_evaluate`. Injectable so benchmarks and tests can swap the model side."""


@dataclass
class TrainResult:
    """Everything a caller may want to print, assert on or pass downstream."""

    protocol: Protocol
    sets: TrainingSets
    fit: FitOutput
    gate_metric: str
    gate_value: float
    run_id: str | None = None
    version: str | None = None
    decision: PromotionDecision | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def test_metrics(self) -> dict[str, dict[str, float]]:
        return self.fit.test_metrics

    @property
    def heldout(self) -> tuple[str, dict[str, dict[str, float]]]:
        return self.fit.heldout

    @property
    def report_md(self) -> Path | None:
        return self.fit.report_md

    @property
    def report_png(self) -> Path | None:
        return self.fit.report_png

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (``rtrec train --json``, DAG XComs)."""
        d = self.decision
        split, table = self.heldout
        return {
            "protocol": self.protocol,
            "counts": self.sets.counts,
            "gate_metric": self.gate_metric,
            "gate_value": self.gate_value,
            "heldout_split": split,
            "heldout_metrics": table,
            "evidence": self.fit.evidence,
            "index": self.fit.index,
            "ranker": self.fit.ranker,
            "version": self.version,
            "run_id": self.run_id,
            "promoted": d.promoted if d else None,
            "reason": d.reason if d else None,
            "bundle_dir": str(self.fit.bundle_dir),
            "timings_s": self.timings_s,
        }


@contextmanager
def _step(bar: tqdm, name: str, timings: dict[str, float]) -> Iterator[None]:
    bar.set_description(name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    bar.update(1)


def event_log_for(settings: Settings, data: str | Path | None) -> Path:
    """Where the events come from: the stream's offline log, or ``data`` written as one.

    A data source gets its own directory under ``<work_dir>/training/eventlogs`` so it never
    mixes with the live log; the same source reuses it.
    """
    if data is None:
        return settings.offline_dir
    from rtrec.training.dataset import write_event_log

    from rtrec.data import load_dataset

    slug = hashlib.sha1(str(data).encode()).hexdigest()[:10]
    root = settings.work_dir / "training" / "eventlogs" / slug
    return write_event_log(load_dataset(data), root)


def split_config(settings: Settings, protocol: Protocol) -> SplitConfig:
    """The product's splits. temporal, by time: train | validation (10 %) | gate slice (the
    most recent ``settings.training.gate_frac``), no test: the gate slice is the held-out
    judge. random (per user): 25 % test, then the gate share and 10 % validation."""
    gate = settings.training.gate_frac
    if protocol == "random":
        return SplitConfig(
            protocol="random", valid_frac=0.1, gate_frac=gate, test_frac=0.25, seed=settings.seed
        )
    return SplitConfig(protocol="temporal", gate_frac=gate, test_frac=0.0, seed=settings.seed)


def train(
    settings: Settings,
    *,
    data: str | Path | None = None,
    protocol: Protocol = "temporal",
    epochs: int | None = None,
    register: bool = True,
    progress: bool = True,
    split: SplitConfig | None = None,
    fitter: Fitter | None = None,
) -> TrainResult:
    """Run the whole training pipeline once; see the module docstring for the steps."""
    timings: dict[str, float] = {}
    steps = 4 if register else 3
    with tqdm(total=steps, disable=not progress, unit="step", leave=False) as bar:
        with _step(bar, "event log", timings):
            source = event_log_for(settings, data)
        with _step(bar, "training sets (spark)", timings):
            cfg = split or split_config(settings, protocol)
            sets = build_training_sets(settings, source=source, config=cfg)
        with _step(bar, "fit + evaluate", timings):
            run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            out_dir = settings.work_dir / "training" / "runs" / run
            fit = (fitter or fit_and_evaluate)(
                settings, sets, out_dir=out_dir, epochs=epochs, progress=progress
            )
        flat = flat_metrics(fit.val_metrics, fit.gate_metrics, fit.test_metrics)
        if GATE_METRIC not in flat:
            raise InvalidInput(
                f"the fitter reported no {GATE_METRIC} for {MODEL_NAME!r}; got {sorted(flat)}",
                field=GATE_METRIC,
            )
        result = TrainResult(
            cfg.protocol, sets, fit, GATE_METRIC, flat[GATE_METRIC], timings_s=timings
        )
        if register:
            with _step(bar, "register + gate", timings):
                _register(settings, result, flat, data=data)
    logger.info("training finished: %s", result.summary())
    return result


def _register(
    settings: Settings, result: TrainResult, flat: dict[str, float], *, data: str | Path | None
) -> None:
    registry = ModelRegistry(settings)
    params = {
        **result.fit.params,
        "protocol": result.protocol,
        "data": str(data) if data is not None else "offline-event-log",
        "sets_history_len": result.sets.history_len,
        **{f"n_{k}": v for k, v in result.sets.counts.items()},
    }
    reports = [p for p in (result.fit.report_md, result.fit.report_png) if p is not None]
    result.run_id, result.version = registry.log_and_register(
        result.fit.bundle_dir,
        params=params,
        metrics=flat,
        report_files=reports,
        run_name=f"two-tower-{result.protocol}",
    )
    result.decision = registry.promote_on_evidence(
        result.version, GateEvidence.from_dict(result.fit.evidence)
    )


def fit_and_evaluate(
    settings: Settings,
    sets: TrainingSets,
    *,
    out_dir: Path,
    epochs: int | None = None,
    progress: bool = True,
) -> FitOutput:
    """Default fitter: select on validation, refit on train + validation, judge on the gate
    slice (and test where the protocol has one), build and measure the served index, save
    the bundle. ``epochs`` caps every candidate objective; None keeps each preset's own.
    """
    frames = Frames.read(sets)
    if frames.gate.empty and frames.test.empty:
        raise InvalidInput("the training sets have no gate slice and no test split", field="gate")
    # The champion is looked up first: one that exists but cannot be scored stops the run
    # before the long fit, with the reason.
    champion = load_champion(settings)
    selection = select_on_validation(
        settings, sets.protocol, frames, epochs=epochs, progress=progress
    )
    model, finals = refit(selection, frames, progress=progress)
    gate_metrics, retrieval = judge(frames, model, finals)
    test_metrics = _test_metrics(frames, model, finals)
    index = build_served_index(settings, model, frames)
    stage = _ranker_stage(settings, sets, frames, selection, model, gate_metrics)
    two_stage = stage[2] if stage else None
    evidence = gate_evidence(settings, sets, frames, retrieval, two_stage, champion, gate_metrics)
    fitted = FitOutput(
        bundle_dir=out_dir / "bundle",
        val_metrics=selection.val_metrics,
        gate_metrics=gate_metrics,
        test_metrics=test_metrics,
        evidence=evidence.to_dict(),
        index={"kind": index.kind, "nprobe": index.nprobe, **(index.measured or {})},
        params=_params(model, selection, index),
        ranker=stage[1] if stage else {},
    )
    fitted.report_md, fitted.report_png = _write(fitted, sets, model, finals, index, stage)
    return fitted


def _ranker_stage(
    settings: Settings,
    sets: TrainingSets,
    frames: Frames,
    selection: Selection,
    model: Any,
    gate_metrics: dict[str, dict[str, float]],
) -> tuple[Any, dict[str, Any], Ranking | None] | None:
    """The second stage, its figures (``rtrec.training.ranker_fit``) and its ranking of the
    gate slice, whose metrics join ``gate_metrics``. None with ``training.ranker`` off."""
    if not settings.training.ranker:
        return None
    from rtrec.training.ranker_fit import fit_ranker_stage, gate_figures

    two_stage, info = fit_ranker_stage(settings, sets, frames, selection, model)
    ranking, report = gate_figures(two_stage, frames, gate_metrics.get(MODEL_NAME, {}))
    if ranking is not None:
        gate_metrics[TWO_STAGE] = ranking.summary
    return two_stage, json_safe({**info, **report}), ranking


def _test_metrics(
    frames: Frames, model: Any, finals: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The refitted models on test, seen everything before it; empty without a test split."""
    if frames.test.empty:
        return {}
    seen = frames.before_test
    return {n: evaluate(m, seen, frames.test) for n, m in {MODEL_NAME: model, **finals}.items()}


def _params(model: Any, selection: Selection, index: ItemIndex) -> dict[str, Any]:
    """What the run logs as parameters: the served model's configuration and choices."""
    return {
        **model.config.__dict__,
        "candidate": selection.chosen,
        **{f"candidate.{n}.val_ndcg_at_10": round(v, 6) for n, v in selection.scores.items()},
        "ease_l2": selection.ease_l2,
        "index": index.kind,
        "fitted_on": "train+validation",
    }


def _write(
    fitted: FitOutput,
    sets: TrainingSets,
    model: Any,
    finals: dict[str, Any],
    index: ItemIndex,
    stage: tuple[Any, dict[str, Any], Ranking | None] | None,
) -> tuple[Path, Path]:
    """The bundle that was scored (at ``fitted.bundle_dir``) and, next to it, the report on
    the held-out split (test, else the gate slice); returns the report's files."""
    out_dir = fitted.bundle_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    held_name, held = fitted.heldout
    report = write_report(held, out_dir / "report", title=f"{sets.protocol}, {held_name} split")
    extra: dict[str, Any] = {"protocol": sets.protocol, "gate": fitted.evidence}
    if stage is not None:  # written first: the bundle's metadata declares it
        extra["ranker"] = save_ranker(fitted.bundle_dir, stage[0], model.item_ids, info=stage[1])
    save_bundle(
        fitted.bundle_dir,
        model=model,
        index=index,
        metrics={
            "validation": fitted.val_metrics,
            "gate": fitted.gate_metrics,
            "test": fitted.test_metrics,
        },
        popular_items=finals["MostPopular"].top(200),
        extra=extra,
    )
    return report
