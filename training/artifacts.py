"""The model bundle: the one place that spells artifact file names.

A bundle directory carries both towers' weights and config, the encoders (vocabularies,
item categories, dense feature names), the item embedding table, the FAISS index and
``metadata.json`` (metrics, creation time, popular items for fallbacks, and a SHA-256 of
every other file). :func:`load_bundle` checks all of it and raises
:class:`rtrec.errors.InvalidInput` / :class:`rtrec.errors.NotFound` for a broken bundle,
so serving can refuse it and keep the previous one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rtrec.training.examples import InputEncoder, dense_matrix
from rtrec.training.fast_tower import FastUserTower
from rtrec.training.index import ItemIndex
from rtrec.training.model import TwoTower, TwoTowerConfig, rank_cold_by_popularity
from rtrec.training.vocab import Vocab

from rtrec.errors import InvalidInput, NotFound

WEIGHTS = "weights.pt"
MODEL_CONFIG = "model_config.json"
ITEM_EMBEDDINGS = "item_embeddings.npy"
INDEX = "index.faiss"
INDEX_META = "index.json"
METADATA = "metadata.json"
USER_VOCAB = "users.json"
ITEM_VOCAB = "items.json"
CATEGORY_VOCAB = "categories.json"
ITEM_CATEGORIES = "item_categories.npy"
ENCODER_META = "encoders.json"
"""The input encoder's dense feature names and history length."""
ENCODER_FILES = (USER_VOCAB, ITEM_VOCAB, CATEGORY_VOCAB, ITEM_CATEGORIES, ENCODER_META)
PRIOR_BUFFERS = ("item_log_pop", "log_pop_scale", "pop_prior")
"""Weights a bundle saved before the popularity prior lacks (loaded as a zero prior)."""
FILES = (WEIGHTS, MODEL_CONFIG, ITEM_EMBEDDINGS, INDEX, INDEX_META, *ENCODER_FILES)
RANKER_DIR = "ranker"
"""The second stage, when the bundle has one (``rtrec.training.ranker_bundle``): its
metadata, the LightGBM model as text and the served tables. Checked on its own: a broken
ranker leaves the retrieval stage servable (serving falls back to retrieval order)."""
RANKER_META = "ranker.json"
RANKER_MODEL = "lightgbm.txt"
RANKER_TABLES = "tables.npz"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_encoder(enc: InputEncoder, directory: Path) -> None:
    enc.users.save(directory / USER_VOCAB)
    enc.items.save(directory / ITEM_VOCAB)
    enc.categories.save(directory / CATEGORY_VOCAB)
    np.save(directory / ITEM_CATEGORIES, enc.item_categories)
    (directory / ENCODER_META).write_text(
        json.dumps({"dense": enc.dense, "history_len": enc.history_len})
    )


def _load_encoder(directory: Path) -> InputEncoder:
    meta = json.loads((directory / ENCODER_META).read_text())
    return InputEncoder(
        Vocab.load(directory / USER_VOCAB),
        Vocab.load(directory / ITEM_VOCAB),
        Vocab.load(directory / CATEGORY_VOCAB),
        list(meta["dense"]),
        int(meta["history_len"]),
        np.load(directory / ITEM_CATEGORIES),
    )


def save_bundle(
    directory: Path,
    *,
    model: Any,
    index: ItemIndex,
    metrics: dict[str, Any] | None = None,
    popular_items: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a :class:`~rtrec.training.trainer.TrainedModel`) and ``index``
    to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v.detach().cpu() for k, v in model.net.state_dict().items()}, directory / WEIGHTS
    )
    (directory / MODEL_CONFIG).write_text(json.dumps(model.net.cfg.to_dict()))
    _save_encoder(model.encoders, directory)
    np.save(directory / ITEM_EMBEDDINGS, model.item_embeddings().astype(np.float32))
    index.save(directory / INDEX, directory / INDEX_META)
    meta = {
        "created_ts": int(time.time() * 1000),
        "metrics": metrics or {},
        "popular_items": list(popular_items),
        "train_config": model.config.to_dict(),
        "index": {
            "kind": index.kind,
            "nprobe": index.nprobe,
            "recall": index.recall,
            "measured": index.measured,
        },
        **(extra or {}),
        "sha256": {name: _sha256(directory / name) for name in FILES},
    }
    (directory / METADATA).write_text(json.dumps(meta, default=str))
    return directory


class ModelBundle:
    """A loaded, verified bundle: user vectors, retrieval, similar items, fallbacks."""

    def __init__(
        self,
        directory: Path,
        net: TwoTower,
        encoders: InputEncoder,
        item_embeddings: np.ndarray,
        index: ItemIndex,
        metadata: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.net = net.eval()
        self.fast_tower = FastUserTower(self.net)
        self.encoders = encoders
        self.item_embeddings = item_embeddings
        with torch.inference_mode():
            self.item_keys: np.ndarray = net.keys(
                torch.as_tensor(item_embeddings), torch.arange(1, len(item_embeddings) + 1)
            ).numpy()
        """What the index holds: each embedding plus its log popularity (TwoTower.keys)."""
        self.index = index
        self._ids_or_none = np.array([*encoders.items.ids, None], dtype=object)
        """Item ids by index row, then ``None``: one fancy index maps a whole result matrix
        in :meth:`search`. Built at load, not on the first request (a 1M catalog)."""
        self.metadata = metadata
        self.version: str | None = metadata.get("version")
        cats = encoders.categories.ids
        self.item_categories: dict[str, list[str]] = {
            item: [cats[c - 1] for c in row if c > 0]
            for item, row in zip(encoders.items.ids, encoders.item_categories[1:], strict=True)
        }

    @property
    def item_ids(self) -> list[str]:
        return self.encoders.items.ids

    @property
    def dense_names(self) -> list[str]:
        return self.encoders.dense

    @property
    def history_len(self) -> int:
        return self.encoders.history_len

    @property
    def popular_items(self) -> list[str]:
        return list(self.metadata.get("popular_items", []))

    def user_vectors(
        self,
        user_ids: Sequence[str],
        histories: Sequence[Sequence[str]],
        dense: np.ndarray | Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        """One retrieval query per user (TwoTower.query: the L2-normalised user vector and
        the popularity prior's weight); unknown users get one from their history."""
        enc = self.encoders
        if dense is None:
            dense_arr = dense_matrix(_frame([{} for _ in user_ids]), enc.dense)
        elif isinstance(dense, np.ndarray):
            dense_arr = dense.astype(np.float32, copy=False)
        else:
            dense_arr = dense_matrix(_frame(list(dense)), enc.dense)
        if dense_arr.shape != (len(user_ids), len(enc.dense)):
            raise InvalidInput(
                f"dense features have shape {dense_arr.shape}, expected "
                f"({len(user_ids)}, {len(enc.dense)})",
                field="dense",
            )
        users = enc.users.encode(user_ids)
        history = enc.items.encode_lists(histories, enc.history_len)
        if len(user_ids) <= FastUserTower.MAX_BATCH:  # a request: numpy, same arithmetic
            return self.fast_tower(users, history, dense_arr)
        with torch.inference_mode():
            out = self.net.user_tower(
                torch.as_tensor(users), torch.as_tensor(history), torch.as_tensor(dense_arr)
            )
            return self.net.query(out).numpy()

    def search_rows(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, item rows) per vector; row -1 where the index had no result."""
        if self.index.dim == vectors.shape[1] - 1:  # a pre-prior bundle: its prior is 0
            vectors = vectors[:, :-1]
        return self.index.search(vectors, k)

    def ids_of(self, rows: np.ndarray) -> list:
        """The item ids of index rows, in ``rows``' shape; ``None`` for row -1 (FAISS's
        mark for no result, which indexes the table's trailing ``None``)."""
        return self._ids_or_none[rows].tolist()

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str | None]]]:
        """Top-``k`` (scores, item ids) per vector; ``None`` where the index had no result."""
        scores, rows = self.search_rows(vectors, k)
        return scores, self.ids_of(rows)

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        j = self.encoders.items.index(item_id)
        if not j:
            raise NotFound(f"item {item_id!r} is not in the model's catalog")
        # Cosine between the items: the key's popularity column is met with a zero.
        query = np.append(self.item_embeddings[j - 1], 0.0).astype(np.float32)[None, :]
        scores, ids = self.search(query, k + 1)
        return [
            (i, float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i and i != item_id
        ][:k]

    def queries(self, seen: Any, user_ids: list[str]) -> np.ndarray:
        """Each user's retrieval query ``[users, dim + 1]`` from its ``seen`` rows (its
        latest items and dense features, as the online store holds them)."""
        return self._queries(*self.encoders.user_state(seen, user_ids))

    def _queries(self, user: np.ndarray, history: np.ndarray, dense: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net.query(
                self.net.user_tower(
                    torch.as_tensor(user), torch.as_tensor(history), torch.as_tensor(dense)
                )
            ).numpy()

    def score(self, seen: Any, user_ids: list[str]) -> np.ndarray:
        """Evaluator interface: scores of every catalog item from each user's ``seen`` rows;
        cold users (unknown, no history) get the popularity ranking, as serving answers them."""
        user, history, dense = self.encoders.user_state(seen, user_ids)
        scores = self._queries(user, history, dense) @ self.item_keys.T
        return rank_cold_by_popularity(scores, user, history, self.item_keys[:, -1])

    def recommend(self, user_ids: Sequence[str], k: int = 10) -> list[list[str]]:
        """Ids only, no online features (for batch scoring through the MLflow pyfunc)."""
        vecs = self.user_vectors(user_ids, [[] for _ in user_ids])
        _, ids = self.search(vecs, k)
        return [[i for i in row if i] for row in ids]


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def load_bundle(directory: Path | str, *, use_gpu: bool | str = "auto") -> ModelBundle:
    """Load and verify a bundle; any missing, altered or inconsistent file is refused."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"model bundle {directory} does not exist")
    meta_path = directory / METADATA
    if not meta_path.is_file():
        raise InvalidInput(f"model bundle {directory} has no {METADATA}", field=METADATA)
    try:
        metadata = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{meta_path} is not valid JSON: {exc}", field=METADATA) from None
    sums = metadata.get("sha256", {})
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise InvalidInput(f"model bundle {directory} lacks {name}", field=name)
        if sums.get(name) != _sha256(path):
            raise InvalidInput(f"model bundle file {name} fails its checksum", field=name)
    try:
        cfg = TwoTowerConfig(**json.loads((directory / MODEL_CONFIG).read_text()))
        net = TwoTower(cfg)
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(PRIOR_BUFFERS):
            raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
        encoders = _load_encoder(directory)
        emb = np.load(directory / ITEM_EMBEDDINGS)
        index = ItemIndex.load(
            directory / INDEX,
            directory / INDEX_META,
            use_gpu=use_gpu,  # type: ignore[arg-type]
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InvalidInput(
            f"model bundle {directory} cannot be loaded: {exc}", field="bundle"
        ) from None
    n = len(encoders.items)
    consistent = emb.shape == (n, cfg.dim) and cfg.n_items == encoders.items.size
    # A bundle from before the popularity prior has no prior buffers (so a zero prior) and
    # an index over the bare embeddings; ModelBundle.search drops the zero column for it.
    legacy = bool(missing) and index.dim == cfg.dim
    if not consistent or index.ntotal != n or (index.dim != cfg.dim + 1 and not legacy):
        raise InvalidInput(
            f"model bundle {directory} is inconsistent: {n} items, embeddings {emb.shape}, "
            f"index {index.ntotal} x {index.dim} (expected dim {cfg.dim + 1})",
            field="bundle",
        )
    return ModelBundle(directory, net, encoders, emb, index, metadata)
