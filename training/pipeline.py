"""``train(settings)``: event log -> training sets -> fit -> evaluate -> bundle -> registry.

One function per step, each a library call the CLI, the Airflow DAG and the benchmarks share:

1. :func:`event_log_for` — the stream's offline log, or one written from ``--data``;
2. :func:`training.dataset.build_training_sets` (Spark, point-in-time features);
3. :func:`fit_and_evaluate` — the two-tower model (both objectives fitted, the better
   on validation kept), evaluated beside the baselines on
   validation (the gate's metric) and test (the report), saved as a bundle with its index;
4. :meth:`training.registry.ModelRegistry.log_and_register` as ``challenger`` and the
   promotion gate.
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

import pandas as pd
from tqdm.auto import tqdm

from rtrec.config import Settings
from rtrec.errors import InvalidInput, Unavailable
from training.dataset import Protocol, SplitConfig, TrainingSets, build_training_sets
from training.registry import GATE_METRIC, ModelRegistry, PromotionDecision, metric_key

logger = logging.getLogger(__name__)

MODEL_NAME = "two_tower"
"""Key of the trained model in the metrics tables (the baselines use their own names)."""


@dataclass
class FitOutput:
    """What the model side hands back: a saved bundle, metrics per model and split, report."""

    bundle_dir: Path
    val_metrics: dict[str, dict[str, float]]
    test_metrics: dict[str, dict[str, float]]
    params: dict[str, Any] = field(default_factory=dict)
    report_md: Path | None = None
    report_png: Path | None = None


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
    val_metric: float
    run_id: str | None = None
    version: str | None = None
    decision: PromotionDecision | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def test_metrics(self) -> dict[str, dict[str, float]]:
        return self.fit.test_metrics

    @property
    def report_md(self) -> Path | None:
        return self.fit.report_md

    @property
    def report_png(self) -> Path | None:
        return self.fit.report_png

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (``rtrec train --json``, DAG XComs)."""
        d = self.decision
        return {
            "protocol": self.protocol,
            "counts": self.sets.counts,
            "gate_metric": self.gate_metric,
            "val_metric": self.val_metric,
            "test_metrics": self.test_metrics,
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
    from rtrec.data import load_dataset
    from training.dataset import write_event_log

    slug = hashlib.sha1(str(data).encode()).hexdigest()[:10]
    root = settings.work_dir / "training" / "eventlogs" / slug
    return write_event_log(load_dataset(data), root)


def split_config(settings: Settings, protocol: Protocol) -> SplitConfig:
    """temporal: 80/10/10 by time; random: per-user 25 % test, 10 % of the rest validation."""
    if protocol == "random":
        return SplitConfig(protocol="random", valid_frac=0.1, test_frac=0.25, seed=settings.seed)
    return SplitConfig(protocol="temporal", seed=settings.seed)


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
        flat = _flat_metrics(fit)
        if GATE_METRIC not in flat:
            raise InvalidInput(
                f"the fitter reported no {GATE_METRIC} for {MODEL_NAME!r}; got {sorted(flat)}",
                field=GATE_METRIC,
            )
        val_metric = flat[GATE_METRIC]
        result = TrainResult(cfg.protocol, sets, fit, GATE_METRIC, val_metric, timings_s=timings)
        if register:
            with _step(bar, "register + gate", timings):
                _register(settings, result, data=data)
    logger.info("training finished: %s", result.summary())
    return result


def _flat_metrics(fit: FitOutput) -> dict[str, float]:
    """``val_ndcg_at_10`` for the model; ``<baseline>.test_ndcg_at_10`` for the others."""
    out: dict[str, float] = {}
    for prefix, table in (("val", fit.val_metrics), ("test", fit.test_metrics)):
        for model, metrics in table.items():
            head = f"{prefix}_" if model == MODEL_NAME else f"{model}.{prefix}_"
            out |= {head + metric_key(k): float(v) for k, v in metrics.items()}
    return out


def _register(settings: Settings, result: TrainResult, *, data: str | Path | None) -> None:
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
        metrics=_flat_metrics(result.fit),
        report_files=reports,
        run_name=f"two-tower-{result.protocol}",
    )
    champ = result.fit.val_metrics.get(CHAMPION_KEY, {}).get("ndcg@10")
    result.decision = registry.promote_if_better(
        result.version, metric=GATE_METRIC, champion_value=champ
    )


CHAMPION_KEY = "current_champion"


def _current_champion(settings: Settings) -> Any:
    """The registered champion's bundle, or None (no registry yet, none promoted)."""
    from training.artifacts import load_bundle

    try:
        registry = ModelRegistry(settings)
        if registry.champion_version() is None:
            return None
        return load_bundle(registry.download_bundle("champion"))
    except Exception as exc:  # no champion to compare with is not an error
        logger.info("no champion to compare with: %s", exc)
        return None


def fit_and_evaluate(
    settings: Settings,
    sets: TrainingSets,
    *,
    out_dir: Path,
    epochs: int | None = None,
    progress: bool = True,
) -> FitOutput:
    """Default fitter: the two-tower model beside the baselines, saved as one bundle.

    ``epochs`` caps every candidate objective (``trainer.candidates``); None keeps each
    preset's own schedule.

    Composes the model side's public calls (``training.trainer``, ``training.baselines``,
    ``training.evaluate``, ``training.index``, ``training.artifacts``); the metrics are
    full-ranking with each user's training items masked, on validation and on test.
    """
    try:
        from training.artifacts import save_bundle
        from training.baselines import fit_baselines
        from training.evaluate import evaluate, write_report
        from training.index import build_index
        from training.trainer import candidates, fit_best
    except ImportError as exc:  # a partial checkout: say which piece is missing
        raise Unavailable(f"the model side is incomplete: {exc}") from exc

    train_df, val_df, test_df = (sets.read(s) for s in ("train", "validation", "test"))
    # Both objectives are fitted; validation NDCG@10 keeps one (trainer.fit_best).
    configs = candidates(sets.protocol, max_epochs=epochs, seed=settings.seed)
    chosen, model, candidate_scores = fit_best(
        train_df, configs, validation=val_df, progress=progress
    )
    config = model.config
    baselines = fit_baselines(train_df, val_df)
    models = {MODEL_NAME: model, **baselines}
    val_metrics = {name: evaluate(m, train_df, val_df) for name, m in models.items()}
    champion = _current_champion(settings)
    if champion is not None:
        # The gate compares both models on this run's validation split.
        val_metrics[CHAMPION_KEY] = evaluate(champion, train_df, val_df)
    seen = pd.concat([train_df, val_df], ignore_index=True)
    test_metrics = {name: evaluate(m, seen, test_df) for name, m in models.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    report_md, report_png = write_report(test_metrics, out_dir / "report", title=sets.protocol)
    index = build_index(model.item_keys())
    popular = baselines["MostPopular"].top(200)
    bundle_dir = save_bundle(
        out_dir / "bundle",
        model=model,
        index=index,
        metrics={"validation": val_metrics, "test": test_metrics},
        popular_items=popular,
        extra={"protocol": sets.protocol},
    )
    return FitOutput(
        bundle_dir=Path(bundle_dir),
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        # The prior's weight as used (None in the config means "chosen on validation").
        params={
            **config.__dict__,
            "popularity_prior": round(float(model.net.pop_prior), 6),
            "candidate": chosen,
            **{f"candidate.{n}.val_ndcg_at_10": round(v, 6) for n, v in candidate_scores.items()},
            "index": type(index).__name__,
        },
        report_md=report_md,
        report_png=report_png,
    )
