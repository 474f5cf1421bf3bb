"""The ranker stage in a model bundle: written beside the retrieval stage at training time,
loaded by serving on its own.

``<bundle>/ranker/`` holds ``ranker.json`` (format and library versions, the ranker's
features, prior weight and tree settings, the sources' parameters, what its fit measured,
and a SHA-256 of the two other files), the LightGBM model as text (absent when the prior
alone ranks) and the served tables (``rtrec.training.served_tables``). The bundle's own
``metadata.json`` declares the stage (its version and the SHA-256 of ``ranker.json``): a
bundle that declares one and cannot load it is a degraded two-stage bundle, one that
declares none is a single-stage bundle. :func:`load_ranker` raises
:class:`rtrec.errors.InvalidInput` for every way a declared ranker can be broken.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rtrec.training.artifacts import RANKER_DIR, RANKER_META, RANKER_MODEL, RANKER_TABLES
from rtrec.training.candidates import CategoryTrendingSource
from rtrec.training.learned_sources import ItemItemSource
from rtrec.training.ranker import TwoStage
from rtrec.training.served_rank import RankerModel, ServedRanker
from rtrec.training.served_sources import SOURCES, ServedSources, SourceParams
from rtrec.training.served_tables import ServedTables, tables_from

from rtrec.errors import InvalidInput

FORMAT = 1
"""Bumped when the files' meaning changes; a service refuses a format it does not know."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_params(model: TwoStage) -> SourceParams:
    """What the fitted generator asks of its sources, as the served sources need it."""
    gen = model.generator
    ii = next(s for s in gen.sources if isinstance(s, ItemItemSource))
    cat = next(s for s in gen.sources if isinstance(s, CategoryTrendingSource))
    names = [s.name for s in gen.sources]
    if sorted(names) != sorted(SOURCES) or gen.cold_source != "popular":
        raise InvalidInput(f"the served ranker needs the sources {SOURCES}, got {names}")
    return SourceParams(
        per_source=gen.per_source,
        n=model.n,
        weights={k: float(v) for k, v in gen.weights.items()},
        ii_recent=ii.recent,
        cat_recent=cat.recent,
        history_limit=gen.history_limit,
    )


def save_ranker(
    bundle_dir: Path, model: TwoStage, model_ids: list[str], *, info: dict[str, Any]
) -> dict[str, Any]:
    """Write ``model`` (fitted on the served model's events) under ``bundle_dir``; returns
    the declaration for the bundle's metadata (``save_bundle(extra={"ranker": ...})``)."""
    ranker = model.ranker
    fitted = RankerModel(
        list(ranker.features),
        float(ranker.prior_weight),
        bool(ranker.chosen.get("from_prior", True)),
        getattr(ranker, "booster", None),
        bool(ranker.cold_trees),
    )
    params = {k: v for k, v in ranker.chosen.items() if k != "from_prior"}
    tables = tables_from(model.generator, model_ids)
    return write_ranker(bundle_dir, tables, fitted, source_params(model), params, info)


def write_ranker(
    bundle_dir: Path,
    tables: ServedTables,
    model: RankerModel,
    sources: SourceParams,
    params: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    """The ranker's files under ``bundle_dir`` (see module doc); returns the declaration."""
    import lightgbm

    out = Path(bundle_dir) / RANKER_DIR
    out.mkdir(parents=True, exist_ok=True)
    tables.save(out / RANKER_TABLES)
    files = [RANKER_TABLES]
    if model.booster is not None:
        (out / RANKER_MODEL).write_text(model.booster.model_to_string())
        files.append(RANKER_MODEL)
    sums = {name: _sha256(out / name) for name in files}
    version = hashlib.sha256("".join(sums[n] for n in sorted(sums)).encode()).hexdigest()[:12]
    meta = {
        "format": FORMAT,
        "version": version,
        "lightgbm": lightgbm.__version__,
        "created_ts": int(time.time() * 1000),
        "features": model.features,
        "prior_weight": model.prior_weight,
        "from_prior": model.from_prior,
        "cold_trees": model.cold_trees,
        "trees": int(model.booster.num_trees()) if model.booster is not None else 0,
        "params": params,
        "sources": sources.__dict__,
        "fit": info,
        "sha256": sums,
    }
    (out / RANKER_META).write_text(json.dumps(meta, default=str))
    declared = {k: meta[k] for k in ("format", "version", "lightgbm", "trees")}
    states = info.get("ranker_states")
    if isinstance(states, dict) and "source" in states:
        # Where its training states came from (Feast's historical retrieval or the event
        # log), beside the version: the bundle says how its second stage was trained.
        declared["training_states"] = states["source"]
    return declared | {"sha256": _sha256(out / RANKER_META)}


def ranker_declared(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The ranker a bundle's metadata declares (None: a single-stage bundle)."""
    value = metadata.get("ranker")
    return value if isinstance(value, dict) else None


def load_ranker(bundle: Any) -> ServedRanker:
    """The declared ranker of a loaded ``ModelBundle``, verified (see module doc)."""
    decl = ranker_declared(bundle.metadata)
    if decl is None:
        raise InvalidInput("the bundle declares no ranker", field="ranker")
    directory = Path(bundle.directory) / RANKER_DIR
    meta = _verified_meta(directory, decl)
    try:
        booster = None
        if meta["trees"]:
            import lightgbm

            booster = lightgbm.Booster(model_str=(directory / RANKER_MODEL).read_text())
        tables = ServedTables.load(directory / RANKER_TABLES)
        params = SourceParams(**meta["sources"])
        model = RankerModel(
            list(meta["features"]),
            float(meta["prior_weight"]),
            bool(meta["from_prior"]),
            booster,
            bool(meta.get("cold_trees", True)),  # written before cold_trees: trees ranked all
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        why = f"ranker in {directory} cannot be loaded: {exc}"
        raise InvalidInput(why, field="ranker") from None
    if tables.size != len(bundle.item_ids):
        raise InvalidInput(
            f"ranker tables cover {tables.size} items, the model {len(bundle.item_ids)}",
            field="ranker",
        )
    if booster is not None and booster.num_feature() != len(model.features):
        raise InvalidInput(
            f"the ranker's trees read {booster.num_feature()} features, its metadata names "
            f"{len(model.features)}",
            field="ranker",
        )
    return ServedRanker(ServedSources(tables, params), model, bundle.item_keys)


def _verified_meta(directory: Path, decl: dict[str, Any]) -> dict[str, Any]:
    """``ranker.json``, checked against the bundle's declaration and its files' sums."""
    path = directory / RANKER_META
    if not path.is_file():
        raise InvalidInput(f"the bundle declares a ranker but {path} is missing", field="ranker")
    if _sha256(path) != decl.get("sha256"):
        raise InvalidInput(f"{path} fails its checksum", field="ranker")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise InvalidInput(f"ranker format {meta.get('format')} is not {FORMAT}", field="ranker")
    for name, digest in meta.get("sha256", {}).items():
        file = directory / name
        if not file.is_file():
            raise InvalidInput(f"ranker file {file} is missing", field="ranker")
        if _sha256(file) != digest:
            raise InvalidInput(f"ranker file {name} fails its checksum", field="ranker")
    if meta.get("trees") and RANKER_MODEL not in meta.get("sha256", {}):
        raise InvalidInput("the ranker has trees but no model file", field="ranker")
    return meta
