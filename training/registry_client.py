"""The MLflow client under :class:`rtrec.training.registry.ModelRegistry`: tracking URI,
experiment, aliases and tags of one registered model.

Split from the registry so that the registry module holds the decisions (registration, the
gate, A/B tests, rollbacks) and this one the plumbing; these two modules are the only ones
that talk to MLflow's registry.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rtrec.config import Settings
from rtrec.errors import NotFound, Unavailable

# MLflow's fluent API keeps its URIs in module globals *and* exports them to the
# environment (so that subprocesses inherit them). One lock per process serialises the
# fluent sections, and each restores both exactly as it found them.
_FLUENT_LOCK = threading.RLock()
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _fluent_uri(mlflow: Any, uri: str) -> Iterator[None]:
    """Set MLflow's tracking and registry URIs for the duration, then put back the globals
    and the environment as they were.

    Why not ``set_*_uri(previous)``: the getters return a *resolved* URI, and the setters
    export it to ``os.environ``; restoring through them pinned the process (and every
    process it started later, such as an Airflow scheduler and its tasks) to whatever
    registry happened to be current the first time, a leak that sent a later client
    without an explicit registry URI to a store that no longer existed.
    """
    from mlflow.tracking import _model_registry, _tracking_service

    tracking_mod, registry_mod = _tracking_service.utils, _model_registry.utils
    with _FLUENT_LOCK:
        env = {k: os.environ.get(k) for k in _URI_ENV}
        saved = (tracking_mod._tracking_uri, registry_mod._registry_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])  # None also resets the tracer provider
            registry_mod._registry_uri = saved[1]
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class RegistryClient:
    """MLflow access for one settings object (tracking URI, model name)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.mlflow.model_name
        self._client: Any = None

    # ---- plumbing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tracking(self) -> Iterator[Any]:
        """Point the fluent API at our tracking URI for the duration, then restore it."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        uri = str(self.settings.mlflow.tracking_uri)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with _fluent_uri(mlflow, uri):
            yield mlflow

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._tracking():
                from mlflow import MlflowClient

                uri = str(self.settings.mlflow.tracking_uri)
                try:
                    self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                    self._client.search_registered_models(max_results=1)
                except Exception as exc:  # MLflow raises many types for a dead store
                    raise Unavailable(f"MLflow registry at {uri} is unreachable: {exc}") from exc
        return self._client

    def _experiment_id(self) -> str:
        """The experiment's id, created on first use. Against an HTTP tracking server its
        artifacts go where the server says (served artifacts: uploaded through it), not
        to a local ``mlflow.artifact_root`` that the server's other clients cannot see."""
        name = self.settings.mlflow.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if str(self.settings.mlflow.tracking_uri).startswith(("http://", "https://")):
            return self.client.create_experiment(name)
        root = Path(str(self.settings.mlflow.artifact_root))
        root.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(name, artifact_location=root.as_uri())

    def _alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def _version(self, version: str | int) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise NotFound(f"model {self.name!r} has no version {version}") from exc

    def _tag(self, version: str, tags: Mapping[str, object]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def _metric(self, version: str, metric: str) -> float | None:
        run_id = self._version(version).run_id
        return self.client.get_run(run_id).data.metrics.get(metric) if run_id else None
