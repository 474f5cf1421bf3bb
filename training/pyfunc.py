"""A model bundle as an MLflow ``pyfunc`` model: the wrapper MLflow stores with it, its pip
requirements, and quiet logging. MLflow is imported only when a model is logged."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

BUNDLE_KEY = "bundle"
"""Name of the bundle directory inside the pyfunc model's ``artifacts``."""


def pyfunc_model() -> Any:
    """A fresh pyfunc wrapper: loads the bundle from the model's ``bundle`` artifact and
    maps user ids to their top-k item ids."""
    return _pyfunc_model_class()()


def _pyfunc_model_class() -> type:
    """The pyfunc wrapper, built lazily so importing this module never imports MLflow."""
    import mlflow.pyfunc

    class BundleModel(mlflow.pyfunc.PythonModel):
        """Loads the bundle; ``predict`` maps user ids to their top-k item ids."""

        def load_context(self, context):
            from rtrec.training.artifacts import load_bundle

            self.bundle = load_bundle(context.artifacts[BUNDLE_KEY])

        def predict(self, model_input: list[str], params: dict | None = None) -> list[list[str]]:
            k = int((params or {}).get("k", 10))
            return self.bundle.recommend(list(model_input), k=k)

    return BundleModel


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence log_model's notices about cloudpickle and predict type hints (by design here)."""
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        quiet.setLevel(level)


def requirements() -> list[str]:
    """Explicit pins: MLflow's inference would pin ``torch==X`` without the ``+cpu`` local tag."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "numpy", "pandas", "pyarrow", "faiss-cpu", "mlflow"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs
