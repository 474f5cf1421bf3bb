"""Serving: the BentoML recommendation API.

Public API: ``serving.service:Recommender`` (the BentoML service), ``Engine`` (the
recommendation path, usable without HTTP for benchmarks), ``start_detached(settings)``.
"""

__all__ = ["Engine", "start_detached"]


def __getattr__(name: str):  # keep `import serving` light; BentoML loads only when asked
    if name == "Engine":
        from serving.retrieval import Engine

        return Engine
    if name == "start_detached":
        from serving.cli import start_detached

        return start_detached
    raise AttributeError(name)
