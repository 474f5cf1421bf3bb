"""Serving: the BentoML recommendation API.

Public API::

    rtrec.serving.service:Recommender    # the BentoML service (`rtrec serve`)
    Engine(settings)                      # the recommendation path without HTTP
    start_detached(settings) -> pid       # `rtrec serve --detach`
    running_server(port, env=..., log=...)  # context manager: a server subprocess (tests, bench)
    synthetic_bundle(dir, n_items=...)    # a loadable bundle over a generated catalog
    run_rate(url, path, body_for, rate=..., duration_s=...)  # open-loop load at a fixed rate

Everything is imported lazily, so ``import rtrec.serving`` loads neither BentoML nor torch.
"""

from importlib import import_module
from typing import Any

__all__ = ["Engine", "run_rate", "running_server", "start_detached", "synthetic_bundle"]

_WHERE = {
    "Engine": "rtrec.serving.retrieval",
    "start_detached": "rtrec.serving.cli",
    "running_server": "rtrec.serving.process",
    "synthetic_bundle": "rtrec.serving.synthetic",
    "run_rate": "rtrec.serving.loadgen",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(name)
