"""The ranker's trees on one request's small matrix: the fastest engine that scores a test
matrix as ``lightgbm.Booster.predict`` does.

1. ``compiled``: lleaves compiles the booster's trees to machine code with LLVM at load
   (about 2 s for 100 trees of 31 leaves), then scores 200 rows in about 0.03 ms, a
   tenth of LightGBM's own call: LightGBM walks every tree per row through its generic
   predictor, the compiled forest is straight-line compares in cache-blocked trees. Its
   sums run in another order than LightGBM's: scores equal to 1e-12.
2. ``lightgbm_direct``: LightGBM's C API called directly (``LGBM_BoosterPredictForMat``
   with one thread), bit-identical to the wrapper. The wrapper rebuilds a predictor and
   checks its arguments on every call, about 0.2 ms of a 200-row request; this goes
   through ``lightgbm.basic``'s private library handle (``lightgbm<5`` pinned).
3. ``lightgbm``: ``booster.predict(x, num_threads=1)``, the public wrapper.

An engine that fails to build or scores differently is passed over with a WARNING
naming it and why; the engine in use is in ``/status`` (``models.<variant>.ranker.
trees``) and in the serving benchmark's output. One thread everywhere: OpenMP's threads
cost more than they save on 200 rows, and wait behind busy cores.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray], np.ndarray]
"""Scores of a float64 C-order ``[rows, features]`` matrix, one per row."""

TREES_COMPILED, DIRECT, WRAPPER = "compiled", "lightgbm_direct", "lightgbm"


def tree_scorer(booster: Any, n_features: int) -> tuple[Scorer, str]:
    """The first engine of the module doc that builds and agrees with the wrapper on a
    test matrix (missing values included), and its name."""
    x = np.random.default_rng(0).standard_normal((64, n_features))
    x[::7, ::3] = np.nan
    expected = booster.predict(x, num_threads=1)
    tried = (
        (TREES_COMPILED, lambda: compiled(booster), 1e-12),
        (DIRECT, lambda: DirectPredict(booster), 0.0),
    )
    for name, build, tol in tried:
        try:
            scorer = build()
            if np.allclose(scorer(x), expected, rtol=tol, atol=tol):
                return scorer, name
            reason = "its scores differ from the wrapper's"
        except Exception as exc:  # an engine missing or broken: the next one serves
            reason = f"{type(exc).__name__}: {exc}"
        logger.warning("ranker trees: engine %s unusable (%s); trying the next", name, reason)
    return (lambda m: booster.predict(m, num_threads=1)), WRAPPER


def compiled(booster: Any) -> Scorer:
    """The booster's trees compiled by lleaves (its model file written to a temporary
    directory for the compiler, removed once compiled)."""
    import lleaves

    with tempfile.TemporaryDirectory(prefix="rtrec-trees-") as tmp:
        path = Path(tmp) / "model.txt"
        booster.save_model(str(path))
        model = lleaves.Model(model_file=str(path))
        model.compile()

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict(x, n_jobs=1)

    return predict


class DirectPredict:
    """One ``LGBM_BoosterPredictForMat`` call per matrix (normal scores, every tree)."""

    def __init__(self, booster: Any) -> None:
        import ctypes

        from lightgbm import basic

        self._ct = ctypes
        self._lib = basic._LIB
        self._error = basic.LightGBMError
        self._handle = booster._handle
        self._dtype = ctypes.c_int(basic._C_API_DTYPE_FLOAT64)
        self._normal = ctypes.c_int(basic._C_API_PREDICT_NORMAL)
        self._param = ctypes.c_char_p(b"num_threads=1")
        self._keep = booster  # the handle lives as long as its booster

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ct = self._ct
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty(len(x), dtype=np.float64)
        got = ct.c_int64(0)
        rc = self._lib.LGBM_BoosterPredictForMat(
            self._handle,
            x.ctypes.data_as(ct.c_void_p),
            self._dtype,
            ct.c_int32(x.shape[0]),
            ct.c_int32(x.shape[1]),
            ct.c_int(1),  # row major
            self._normal,
            ct.c_int(0),  # from the first iteration
            ct.c_int(-1),  # through the last
            self._param,
            ct.byref(got),
            out.ctypes.data_as(ct.POINTER(ct.c_double)),
        )
        if rc != 0 or got.value != len(x):
            raise self._error(self._lib.LGBM_GetLastError().decode("utf-8", "replace"))
        return out
