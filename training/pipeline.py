"""``train(settings)``: event log -> training sets -> select -> refit -> judge -> registry.

One function per step, each a library call the CLI, the Airflow DAG and the benchmarks share:

1. :func:`event_log_for` — the stream's offline log, or one written from ``--data``;
2. :func:`rtrec.training.dataset.build_training_sets` (Spark, point-in-time features), split in
   time order train | validation | gate slice (| test where the protocol has one);
3. :func:`fit_and_evaluate`:
   - select on validation: the objective, epochs and popularity prior (both objectives
     fitted on train, validation keeps one) and EASE's L2;
   - refit the chosen settings on train + validation: the model that is served learns
     from the freshest labelled period;
   - judge on the gate slice, touched by no selection step: the refitted model, the
     refitted baselines and the registered champion, with the same seen-item mask, per
     user (the gate's evidence, ``rtrec.training.gate``);
   - build the served index, measure its recall on the gate users' queries (a bar that
     fails the run), and save the bundle that was scored;
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
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from rtrec.training.artifacts import save_bundle
from rtrec.training.baselines import fit_baselines
from rtrec.training.dataset import Protocol, SplitConfig, TrainingSets, build_training_sets
from rtrec.training.evaluate import evaluate, rank, write_report
from rtrec.training.gate import GateEvidence, GateRule, SliceInfo, UserScores, gather_evidence
from rtrec.training.index import RECALL_KS, build_index, measure_recall
from rtrec.training.model import cold_users
from rtrec.training.registry import GATE_METRIC, ModelRegistry, PromotionDecision, metric_key
from rtrec.training.trainer import candidates, fit, fit_best, refit_config
from tqdm.auto import tqdm

from rtrec.config import Settings
from rtrec.errors import InvalidInput, RtrecError, Unavailable

logger = logging.getLogger(__name__)

MODEL_NAME = "two_tower"
"""Key of the trained model in the metrics tables (the baselines use their own names)."""


@dataclass
class FitOutput:
    """What the model side hands back: a saved bundle, metrics per model and split, the
    gate's evidence, the served index's measured recall, and the report."""

    bundle_dir: Path
    val_metrics: dict[str, dict[str, float]]
    """Selection: each model fitted on train, scored on validation."""
    gate_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each model refitted on train + validation (and the champion), on the gate slice."""
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """The refitted models on test; empty where the protocol has no test split."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """``rtrec.training.gate.GateEvidence.to_dict()``: what the promotion gate decides on."""
    index: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    report_md: Path | None = None
    report_png: Path | None = None

    @property
    def heldout(self) -> tuple[str, dict[str, dict[str, float]]]:
        """The report's table: test where there is one, else the gate slice (both untouched
        by selection)."""
        return ("test", self.test_metrics) if self.test_metrics else ("gate", self.gate_metrics)


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
        flat = _flat_metrics(fit)
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
                _register(settings, result, data=data)
    logger.info("training finished: %s", result.summary())
    return result


def _flat_metrics(fit: FitOutput) -> dict[str, float]:
    return flat_metrics(fit.val_metrics, fit.gate_metrics, fit.test_metrics)


def flat_metrics(
    val: dict[str, dict[str, float]],
    gate: dict[str, dict[str, float]],
    test: dict[str, dict[str, float]],
) -> dict[str, float]:
    """MLflow metric names: ``gate_ndcg_at_10`` for the model, ``EASE.gate_ndcg_at_10``
    for the others (``val_`` / ``gate_`` / ``test_`` by split)."""
    out: dict[str, float] = {}
    for prefix, table in (("val", val), ("gate", gate), ("test", test)):
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
    result.decision = registry.promote_on_evidence(
        result.version, GateEvidence.from_dict(result.fit.evidence)
    )


CHAMPION_KEY = "current_champion"
"""Key of the registered champion in the gate slice's metrics table."""


@dataclass(frozen=True)
class Frames:
    """The splits as pandas, and the ``seen`` frame each held-out split is judged against."""

    train: pd.DataFrame
    validation: pd.DataFrame
    gate: pd.DataFrame
    test: pd.DataFrame

    @classmethod
    def read(cls, sets: TrainingSets) -> Frames:
        return cls(*(sets.read(s) for s in ("train", "validation", "gate", "test")))

    @cached_property
    def fit_part(self) -> pd.DataFrame:
        """What the served model is fitted on: train + validation (selection is over).
        Cached: the refit, the gate and the index all read it."""
        return pd.concat([self.train, self.validation], ignore_index=True)

    @cached_property
    def before_test(self) -> pd.DataFrame:
        return pd.concat([self.train, self.validation, self.gate], ignore_index=True)


def current_champion(settings: Settings) -> tuple[str, Any] | None:
    """``(version, bundle)`` of the registered champion; None only when there is none.

    A champion that exists but cannot be loaded is an error: the gate would otherwise
    compare against nothing, or against a figure from another split.
    """
    from rtrec.training.artifacts import load_bundle

    registry = ModelRegistry(settings)
    version = registry.champion_version()
    if version is None:
        return None
    try:
        return version, load_bundle(registry.download_bundle(version))
    except Exception as exc:
        raise Unavailable(f"champion v{version} exists but cannot be scored: {exc}") from exc


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
    champion = current_champion(settings)
    selection = _select(settings, sets.protocol, frames, epochs=epochs, progress=progress)
    model, finals = _refit(selection, frames, progress=progress)
    gate_metrics, evidence = _judge(settings, sets, frames, model, finals, champion)
    seen = frames.before_test
    test_metrics = (
        {}
        if frames.test.empty
        else {n: evaluate(m, seen, frames.test) for n, m in {MODEL_NAME: model, **finals}.items()}
    )
    index = _served_index(settings, model, frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_name, held = ("test", test_metrics) if test_metrics else ("gate", gate_metrics)
    report_md, report_png = write_report(
        held, out_dir / "report", title=f"{sets.protocol}, {held_name} split"
    )
    bundle_dir = save_bundle(
        out_dir / "bundle",
        model=model,
        index=index,
        metrics={"validation": selection.val_metrics, "gate": gate_metrics, "test": test_metrics},
        popular_items=finals["MostPopular"].top(200),
        extra={"protocol": sets.protocol, "gate": evidence.to_dict()},
    )
    return FitOutput(
        bundle_dir=Path(bundle_dir),
        val_metrics=selection.val_metrics,
        gate_metrics=gate_metrics,
        test_metrics=test_metrics,
        evidence=evidence.to_dict(),
        index={"kind": index.kind, "nprobe": index.nprobe, **(index.measured or {})},
        params={
            **model.config.__dict__,
            "candidate": selection.chosen,
            **{f"candidate.{n}.val_ndcg_at_10": round(v, 6) for n, v in selection.scores.items()},
            "ease_l2": selection.ease_l2,
            "index": index.kind,
            "fitted_on": "train+validation",
        },
        report_md=report_md,
        report_png=report_png,
    )


@dataclass
class Selection:
    """What validation chose: the candidate, its tuned model (fitted on train), EASE's L2,
    and every model's validation metrics."""

    chosen: str
    tuned: Any
    scores: dict[str, float]
    ease_l2: float
    val_metrics: dict[str, dict[str, float]]


def _select(
    settings: Settings, protocol: str, frames: Frames, *, epochs: int | None, progress: bool
) -> Selection:
    """Every choice made on validation: the objective, epochs and prior (``fit_best``) and
    EASE's L2; nothing here sees the gate slice or test."""
    configs = candidates(protocol, max_epochs=epochs, seed=settings.seed)
    train, validation = frames.train, frames.validation
    chosen, tuned, scores = fit_best(train, configs, validation=validation, progress=progress)
    baselines = fit_baselines(train, validation)
    models = {MODEL_NAME: tuned, **baselines}
    val_metrics = {n: evaluate(m, train, validation) for n, m in models.items()}
    ease_l2 = baselines["EASE"].l2
    if ease_l2 is None:
        raise RuntimeError("fit_baselines left EASE unfitted")
    return Selection(chosen, tuned, scores, float(ease_l2), val_metrics)


def _refit(selection: Selection, frames: Frames, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    """The served model and the baselines, refitted on train + validation with the chosen
    settings, so the freshest labelled period is learned from."""
    data = frames.fit_part
    model = fit(data, refit_config(selection.tuned), progress=progress)
    finals = fit_baselines(data, None, ease_l2=selection.ease_l2)
    return model, finals


def _judge(
    settings: Settings,
    sets: TrainingSets,
    frames: Frames,
    model: Any,
    finals: dict[str, Any],
    champion: tuple[str, Any] | None,
) -> tuple[dict[str, dict[str, float]], GateEvidence]:
    """Every model on the gate slice with the same seen-item mask; the gate's evidence
    (challenger vs champion, per user) from the same ranking."""
    seen, gate = frames.fit_part, frames.gate
    ranking = rank(model, seen, gate)
    metrics = {
        MODEL_NAME: ranking.summary,
        **{n: evaluate(m, seen, gate) for n, m in finals.items()},
    }
    span = sets.ts_range.get("gate") or [None, None]
    info = SliceInfo("gate", len(gate), len(ranking.per_user), span[0], span[1])
    rule = GateRule(
        margin=settings.training.gate_margin,
        confidence=settings.training.gate_confidence,
        samples=settings.training.gate_samples,
        seed=settings.seed,
    )
    challenger = UserScores.from_ranking(ranking)
    if champion is None:
        return metrics, gather_evidence(info, challenger, None, champion_version=None, rule=rule)
    if ranking.per_user.empty:
        raise InvalidInput(
            f"the gate slice has no user with an unseen item to judge champion v{champion[0]} "
            "against the challenger: more events are needed",
            field="gate",
        )
    version, bundle = champion
    champ_ranking = rank(bundle, seen, gate)
    metrics[CHAMPION_KEY] = champ_ranking.summary
    evidence = gather_evidence(
        info,
        challenger,
        UserScores.from_ranking(champ_ranking),
        champion_version=version,
        rule=rule,
    )
    return metrics, evidence


MAX_RECALL_QUERIES = 1000


def _served_index(settings: Settings, model: Any, frames: Frames) -> Any:
    """The index the bundle carries, tuned on validation users' queries and measured on
    the gate users' (queries that did not tune it); below the recall bar the run fails
    before anything is registered."""
    keys = model.item_keys()
    tuning = _queries(model, frames.train, frames.validation, seed=settings.seed)
    index = build_index(
        keys,
        exact_max=settings.training.index_exact_max_items,
        target_recall=settings.training.min_index_recall,
        k=max(RECALL_KS),
        queries=tuning if len(tuning) else None,
        seed=settings.seed,
    )
    queries, source = _queries(model, frames.fit_part, frames.gate, seed=settings.seed), "gate"
    if not len(queries):  # no warm user in the gate slice: validation's, said so
        queries, source = tuning, "validation"
    measured = measure_recall(
        index, keys, queries, source=f"{len(queries)} {source}-slice users' query vectors"
    )
    floor = settings.training.min_index_recall
    got = measured.get(f"recall@{max(RECALL_KS)}", float("nan"))
    if not got >= floor:  # NaN (no queries at all) fails too
        raise RtrecError(
            f"the {index.kind} index reaches recall@{max(RECALL_KS)} {got:.4f} against exact "
            f"search ({measured['source']}), below settings.training.min_index_recall "
            f"{floor}; not registering it"
        )
    return index


def _queries(model: Any, seen: pd.DataFrame, target: pd.DataFrame, *, seed: int) -> Any:
    """Retrieval queries of ``target``'s warm users as of ``seen`` (cold users are served
    by the fallback, never by the index); at most ``MAX_RECALL_QUERIES``, sampled."""
    import numpy as np

    users = sorted(target["user_id"].astype(str).unique())
    if len(users) > MAX_RECALL_QUERIES:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(users, size=MAX_RECALL_QUERIES, replace=False))
    user, history, dense = model.encoders.user_state(seen, users)
    warm = ~cold_users(user, history)
    return model.user_vectors(user[warm], history[warm], dense[warm])
