"""The model registry: with its client (``rtrec.training.registry_client``) the only code
that talks to MLflow.

A training run logs its params, metrics, report and bundle (``rtrec.training.artifacts``)
as one ``mlflow.pyfunc`` model under ``settings.mlflow.model_name``. The promotion gate
(:meth:`ModelRegistry.promote_on_evidence`) judges the run's gate-slice evidence
(``rtrec.training.gate``); every decision (slice, both scores, the gain's interval) and every
rollback is written as version tags, so the registry itself is the audit log. Serving
fetches the champion with :func:`download_bundle`.

Two aliases, and what each step does to them (``rtrec model list`` shows them; serving
loads ``champion``, and ``challenger`` only for its A/B split or shadow scoring). With
``training.promotion`` ``direct`` (the default):

- **registered** (:meth:`ModelRegistry.log_and_register`): ``challenger`` -> the new
  version while the gate has not decided. A newer registration takes the alias over.
- **promoted** (the gate passed, or :meth:`ModelRegistry.promote` by hand): ``champion``
  -> the version, and ``challenger`` is deleted when it pointed there. A successful
  training run therefore leaves no ``challenger``: none is waiting for a decision.
- **refused** (the gate kept the champion): ``challenger`` stays on (or returns to) the
  refused version, unless a newer registered version holds it, so the last model that
  lost is there to inspect, A/B test or promote by hand. The next refused one replaces it.
- **rolled back** (:meth:`ModelRegistry.rollback`): ``champion`` -> the previous champion;
  the demoted version keeps no alias (its tags say why).

With ``ab``, ``challenger`` means "in an A/B test": registering sets no alias, a version
that passes the gate takes ``challenger`` (decision ``ab_test``; the first model, with no
champion to test against, is promoted), a refused one gets none. The experiment's decision
(``rtrec.monitoring.decide_experiment``) then promotes it (:meth:`ModelRegistry.promote`)
or archives it (:meth:`ModelRegistry.archive_challenger`: ``challenger`` deleted).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rtrec.training.gate import GateEvidence, evidence_tags
from rtrec.training.promotion import (
    GATE_METRIC,
    TAG_DECIDED_AT,
    TAG_DECISION,
    TAG_PREVIOUS,
    TAG_REASON,
    TAG_RESTORED,
    TAG_ROLLED_BACK,
    PromotionDecision,
    decide_promotion,
    metric_key,
    now,
    to_ab_test,
)
from rtrec.training.pyfunc import BUNDLE_KEY, pyfunc_model, quiet_mlflow, requirements
from rtrec.training.registry_client import RegistryClient

from rtrec.config import Settings
from rtrec.errors import InvalidInput, NotFound

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the CLI lists it."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class ModelRegistry(RegistryClient):
    """Registry operations for one settings object (tracking URI, model name, margin)."""

    # ---- logging and registration ----------------------------------------------------------
    def log_and_register(
        self,
        bundle_dir: str | Path,
        *,
        params: Mapping[str, object],
        metrics: Mapping[str, float],
        report_files: Sequence[str | Path] = (),
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> tuple[str, str]:
        """Log one training run and register its bundle as the challenger.

        Returns ``(run_id, version)``. Metric names are made MLflow-legal with
        :func:`metric_key`; the bundle directory travels as the pyfunc's ``bundle`` artifact.
        """
        bundle = Path(bundle_dir)
        if not bundle.is_dir():
            raise NotFound(f"bundle directory {bundle} does not exist")
        import mlflow.pyfunc

        with self._tracking() as mlflow_mod:
            exp_id = self._experiment_id()
            with mlflow_mod.start_run(experiment_id=exp_id, run_name=run_name) as run:
                mlflow_mod.log_params({k: str(v)[:500] for k, v in params.items()})
                mlflow_mod.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
                if tags:
                    mlflow_mod.set_tags(dict(tags))
                for file in report_files:
                    mlflow_mod.log_artifact(str(file), artifact_path="report")
                with quiet_mlflow():
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=pyfunc_model(),
                        artifacts={BUNDLE_KEY: str(bundle)},
                        pip_requirements=requirements(),
                    )
            version = mlflow_mod.register_model(info.model_uri, self.name).version
        version = str(version)
        if self.settings.training.promotion == "direct":
            # Under ``ab`` the alias means "in an A/B test": serving would split traffic
            # onto a version the gate has not judged yet.
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        logger.info("registered %s version %s (run %s)", self.name, version, run.info.run_id)
        return run.info.run_id, version

    # ---- aliases and the gate --------------------------------------------------------------
    def champion_version(self) -> str | None:
        return self._alias_version(CHAMPION)

    def challenger_version(self) -> str | None:
        return self._alias_version(CHALLENGER)

    def promote_on_evidence(
        self, version: str | int, evidence: GateEvidence, *, margin: float | None = None
    ) -> PromotionDecision:
        """Promote ``version`` to champion when ``evidence`` passes the gate's rule.

        The evidence must be about the champion serving now: if the ``champion`` alias
        moved since the training run scored it, the challenger is kept, saying so. No
        champion: the version is promoted. ``margin`` defaults to
        ``settings.training.gate_margin``; the decision and the evidence become tags.
        """
        version = str(version)
        self._version(version)  # NotFound for an unknown version
        margin = self.settings.training.gate_margin if margin is None else margin
        current = self.champion_version()
        decision = decide_promotion(version, evidence, current=current, margin=margin)
        ab = self.settings.training.promotion == "ab"
        if ab:
            decision = to_ab_test(decision, share=self.settings.serving.ab_challenger_share)
        self._tag(version, evidence_tags(evidence, margin=margin))
        if decision.promoted:
            self._move_champion(version, decision.reason)
        elif decision.ab_test:
            self._decided(version, "ab_test", decision.reason)
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        elif current != version:  # the champion itself keeps the record of its promotion
            self._decided(version, "refused" if ab else "kept_challenger", decision.reason)
            if not ab:  # under ``ab`` only a version that passed the gate is tested
                self._keep_challenger(version)
        logger.info(
            "promotion gate for v%s: promoted=%s (%s)", version, decision.promoted, decision.reason
        )
        return decision

    def _move_champion(self, version: str, reason: str) -> None:
        previous = self.champion_version()
        tags: dict[str, object] = {
            TAG_DECISION: "promoted",
            TAG_REASON: reason[:4000],
            TAG_DECIDED_AT: now(),
        }
        if previous is not None and previous != version:
            tags[TAG_PREVIOUS] = previous
        self._tag(version, tags)
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        if self.challenger_version() == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    def _decided(self, version: str, decision: str, reason: str) -> None:
        self._tag(
            version, {TAG_DECISION: decision, TAG_REASON: reason[:4000], TAG_DECIDED_AT: now()}
        )

    def archive_challenger(self, version: str | int, *, reason: str) -> None:
        """The champion won the A/B test against ``version``: record why and take the
        ``challenger`` alias from it while it holds it, so serving stops splitting traffic
        at its next poll. The champion and the version itself stay as they are."""
        version = str(version)
        self._version(version)  # NotFound for an unknown version
        self._decided(version, "archived", reason)
        if self.challenger_version() == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        logger.info("archived challenger v%s of %s (%s)", version, self.name, reason)

    def start_experiment(self, version: str | int, *, reason: str = "manual A/B test") -> None:
        """Make ``version`` the ``challenger`` against the champion now, whatever the gate
        said (an operator's call, recorded as such): serving splits traffic at its next
        poll and the A/B readout judges it, as for a version the ``ab`` gate sent there."""
        version = str(version)
        self._version(version)  # NotFound for an unknown version
        if self.champion_version() == version:
            raise InvalidInput(f"v{version} is the champion: it cannot also be its challenger")
        self._decided(version, "ab_test", reason)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)

    def _keep_challenger(self, version: str) -> None:
        """A refused version holds ``challenger`` unless a newer registration took it over
        (that one is still waiting for its own decision)."""
        holder = self.challenger_version()
        if holder == version or (holder is not None and int(holder) > int(version)):
            return
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)

    def promote(self, version: str | int, *, reason: str = "manual promotion") -> PromotionDecision:
        """Make ``version`` champion unconditionally (an operator's call, recorded as such)."""
        version = str(version)
        self._version(version)  # NotFound for an unknown version
        self._move_champion(version, reason)
        return PromotionDecision(version, True, reason, GATE_METRIC, margin=None)

    def rollback(self, *, reason: str = "manual rollback") -> str:
        """Move ``champion`` back to the version it replaced; returns that version."""
        current = self.champion_version()
        if current is None:
            raise NotFound(f"model {self.name!r} has no champion to roll back")
        previous = self._version(current).tags.get(TAG_PREVIOUS)
        if not previous:
            raise NotFound(f"champion v{current} of {self.name!r} has no previous champion")
        self._version(previous)
        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
        self._tag(
            current, {TAG_ROLLED_BACK: previous, "rollback.reason": reason, "rollback.at": now()}
        )
        self._tag(previous, {TAG_RESTORED: current, "rollback.at": now()})
        logger.warning(
            "rolled back %s champion v%s -> v%s (%s)", self.name, current, previous, reason
        )
        return previous

    # ---- listing and fetching --------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        """Every version, newest first, with aliases, run metrics and tags."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException:
            return []
        aliases: dict[str, list[str]] = {}
        for alias, version in self.client.get_registered_model(self.name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        out = []
        for mv in sorted(found, key=lambda m: int(m.version), reverse=True):
            run = self.client.get_run(mv.run_id) if mv.run_id else None
            out.append(
                VersionInfo(
                    version=str(mv.version),
                    aliases=sorted(aliases.get(str(mv.version), [])),
                    run_id=mv.run_id,
                    created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    metrics=dict(run.data.metrics) if run else {},
                    tags=dict(mv.tags),
                )
            )
        return out

    def resolve(self, alias_or_version: str | int) -> str:
        """``champion`` / ``challenger`` / ``3`` -> a version number (NotFound if none)."""
        text = str(alias_or_version)
        if text.isdigit():
            return str(self._version(text).version)
        version = self._alias_version(text)
        if version is None:
            raise NotFound(f"model {self.name!r} has no version with alias {text!r}")
        return version

    def download_bundle(
        self, alias_or_version: str | int = CHAMPION, *, dst: str | Path | None = None
    ) -> Path:
        """Fetch a version's bundle directory (cached per version) for ``load_bundle``."""
        version = self.resolve(alias_or_version)
        target = (
            Path(dst)
            if dst is not None
            else self.settings.work_dir / "models" / f"{self.name}-v{version}"
        )
        if target.is_dir() and any(target.iterdir()):
            return target
        from mlflow.models import Model

        target.parent.mkdir(parents=True, exist_ok=True)
        with self._tracking() as mlflow_mod, tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = Path(
                mlflow_mod.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp
                )
            )
            spec = Model.load(str(local)).flavors["python_function"]["artifacts"][BUNDLE_KEY]
            bundle = local / spec["path"]
            if not bundle.is_dir():
                raise NotFound(
                    f"version {version} of {self.name!r} carries no bundle at {spec['path']}"
                )
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(bundle), target)
        logger.info("downloaded %s v%s bundle to %s", self.name, version, target)
        return target


def download_bundle(settings: Settings, alias_or_version: str | int = CHAMPION) -> Path:
    """Serving's one call: the local bundle directory of ``champion`` (or a version)."""
    return ModelRegistry(settings).download_bundle(alias_or_version)
