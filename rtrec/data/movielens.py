"""MovieLens loaders (ml-100k, ml-1m, ml-latest / ml-20m) into the :class:`Dataset` schema.

Why: real interaction data for honest offline figures. Every rating becomes a ``rating``
event with its value; unix seconds become ms. Ids are prefixed (``u196``, ``i242``) like
the synthetic ones, so the two sources never mix ids by accident. MovieLens has no
signup or catalog dates: ``signup_ts`` is a user's first rating, ``created_ts`` the
earlier of the release date (clipped at the epoch) and the item's first rating, so no
event precedes its item or user.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from rtrec.data.dataset import Dataset
from rtrec.errors import InvalidInput, NotFound

logger = logging.getLogger(__name__)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
_RATINGS_FILES = {"u.data": "100k", "ratings.dat": "1m", "ratings.csv": "latest"}
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _detect(path: Path) -> tuple[Path, str]:
    """(directory, format) for a MovieLens directory, its ratings file, or a parent folder."""
    if path.is_file():
        if path.name not in _RATINGS_FILES:
            raise InvalidInput(
                f"{path} is not a MovieLens ratings file (expected one of "
                f"{', '.join(_RATINGS_FILES)})",
                field="source",
            )
        return path.parent, _RATINGS_FILES[path.name]
    if not path.is_dir():
        raise NotFound(f"MovieLens path {path} does not exist")
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        for name, fmt in _RATINGS_FILES.items():
            if (candidate / name).is_file():
                return candidate, fmt
    raise NotFound(f"no MovieLens ratings file ({', '.join(_RATINGS_FILES)}) in {path}")


def _ms(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype(np.int64) * 1000


def _read_ratings(file: Path, sep: str, header: bool) -> pd.DataFrame:
    """user, item, rating, ts(s) as validated columns; errors name file and line."""
    raw = file.read_bytes()
    if sep == "::":
        raw, sep = raw.replace(b"::", b"\t"), "\t"
    try:
        frame = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if header else None,
            names=["user", "item", "rating", "ts"],
            dtype=str,
            engine="c",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise InvalidInput(f"{file}: malformed ratings: {exc}", field=file.name) from exc
    first_line = 2 if header else 1
    for col, kind in (("user", "int"), ("item", "int"), ("rating", "float"), ("ts", "int")):
        parsed = pd.to_numeric(frame[col], errors="coerce")
        bad = parsed.isna() | (parsed % 1 != 0 if kind == "int" else False)
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise InvalidInput(
                f"{file} line {row + first_line}: bad {col} {frame[col].iloc[row]!r}",
                field=col,
            )
        frame[col] = parsed.astype(np.int64 if kind == "int" else np.float64)
    return frame


def _read_lines(file: Path, encoding: str) -> list[str]:
    if not file.is_file():
        raise NotFound(f"MovieLens file {file} does not exist")
    return file.read_text(encoding=encoding).splitlines()


def _split(file: Path, lineno: int, line: str, sep: str, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < n:
        raise InvalidInput(
            f"{file} line {lineno}: expected {n} {sep!r}-separated fields, got {len(parts)}",
            field=file.name,
        )
    return parts


def _int(file: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{file} line {lineno}: bad {what} {text!r}", field=what) from None


def _year_ms(year: int) -> int:
    return max(0, int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000))


def _items_100k(folder: Path) -> pd.DataFrame:
    genres = ML100K_GENRES
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        names = [ln.split("|")[0] for ln in _read_lines(genre_file, "latin-1") if ln.strip()]
        genres = tuple(names) if len(names) == len(ML100K_GENRES) else genres
    rows = []
    file = folder / "u.item"
    for lineno, line in enumerate(_read_lines(file, "latin-1"), 1):
        if not line.strip():
            continue
        parts = _split(file, lineno, line, "|", 5 + len(genres))
        flags = parts[-len(genres) :]
        if any(f not in ("0", "1") for f in flags):
            raise InvalidInput(f"{file} line {lineno}: genre flags must be 0/1", field="genres")
        released = None
        if parts[2]:
            try:
                day = datetime.strptime(parts[2], "%d-%b-%Y").replace(tzinfo=UTC)
            except ValueError:
                raise InvalidInput(
                    f"{file} line {lineno}: bad release date {parts[2]!r}", field="release_date"
                ) from None
            released = max(0, int(day.timestamp() * 1000))
        cats = [g for g, f in zip(genres, flags, strict=True) if f == "1"]
        rows.append((_int(file, lineno, parts[0], "movie id"), parts[1], cats, released))
    return pd.DataFrame(rows, columns=["raw", "title", "categories", "released"])


def _items_dat_or_csv(folder: Path, fmt: str) -> pd.DataFrame:
    rows = []
    if fmt == "1m":
        file = folder / "movies.dat"
        for lineno, line in enumerate(_read_lines(file, "latin-1"), 1):
            if line.strip():
                parts = _split(file, lineno, line, "::", 3)
                movie = _int(file, lineno, parts[0], "movie id")
                rows.append((movie, "::".join(parts[1:-1]), parts[-1]))
    else:
        file = folder / "movies.csv"
        reader = csv.reader(_read_lines(file, "utf-8"))
        for lineno, parts in enumerate(reader, 1):
            if lineno == 1 or not parts:
                continue
            if len(parts) < 3:
                raise InvalidInput(
                    f"{file} line {lineno}: expected movieId,title,genres", field=file.name
                )
            movie = _int(file, lineno, parts[0], "movieId")
            rows.append((movie, ",".join(parts[1:-1]), parts[-1]))
    items = pd.DataFrame(rows, columns=["raw", "title", "genres"])
    items["categories"] = [
        [] if g in ("", "(no genres listed)") else g.split("|") for g in items["genres"]
    ]
    years = [_YEAR.search(t.strip()) for t in items["title"]]
    items["released"] = [_year_ms(int(m.group(1))) if m else None for m in years]
    return items.drop(columns="genres")


def _users_file(folder: Path, fmt: str) -> pd.DataFrame | None:
    if fmt == "latest":
        return None
    file, sep = (folder / "u.user", "|") if fmt == "100k" else (folder / "users.dat", "::")
    rows = []
    for lineno, line in enumerate(_read_lines(file, "latin-1"), 1):
        if not line.strip():
            continue
        parts = _split(file, lineno, line, sep, 5)
        if fmt == "100k":
            uid, age, gender, occupation = parts[0], parts[1], parts[2], parts[3]
        else:
            uid, gender, age, code = parts[0], parts[1], parts[2], parts[3]
            idx = _int(file, lineno, code, "occupation")
            occupation = ML1M_OCCUPATIONS[idx] if 0 <= idx < len(ML1M_OCCUPATIONS) else "other"
        rows.append(
            (_int(file, lineno, uid, "user id"), _int(file, lineno, age, "age"), gender, occupation)
        )
    return pd.DataFrame(rows, columns=["raw", "age", "gender", "occupation"])


def load_movielens(path: str | Path) -> Dataset:
    """Load a MovieLens directory (or its ratings file); the format is detected by file name.

    ml-100k: ``u.data`` / ``u.item`` / ``u.user``; ml-1m: ``ratings.dat`` / ``movies.dat`` /
    ``users.dat``; ml-latest, ml-20m, ml-25m: ``ratings.csv`` / ``movies.csv`` (no users file:
    profiles stay empty). Raises NotFound for missing files and InvalidInput naming the file
    and line for malformed ones.
    """
    folder, fmt = _detect(Path(path).expanduser())
    ratings_name = {"100k": "u.data", "1m": "ratings.dat", "latest": "ratings.csv"}[fmt]
    sep = {"100k": "\t", "1m": "::", "latest": ","}[fmt]
    ratings = _read_ratings(folder / ratings_name, sep, header=fmt == "latest")
    items = _items_100k(folder) if fmt == "100k" else _items_dat_or_csv(folder, fmt)
    users = _users_file(folder, fmt)

    events = _events(ratings)
    first_user = events.groupby("user_id")["ts"].min()
    first_item = events.groupby("item_id")["ts"].min()
    items = _catalog(items, first_item)
    users = _profiles(users, first_user)

    meta = {"source": f"movielens-{fmt}", "path": str(folder)}
    ds = Dataset(users, items, events, meta).validate()
    logger.info(
        "loaded %s: %d ratings, %d users, %d items",
        meta["source"],
        len(events),
        len(ds.users),
        len(ds.items),
    )
    return ds


def _events(ratings: pd.DataFrame) -> pd.DataFrame:
    """Every rating as a ``rating`` event: prefixed ids, ms timestamps, the stars as value."""
    return pd.DataFrame(
        {
            "user_id": "u" + ratings["user"].astype(str),
            "item_id": "i" + ratings["item"].astype(str),
            "event_type": "rating",
            "ts": _ms(ratings["ts"].to_numpy()),
            "value": ratings["rating"].to_numpy(np.float64),
        }
    )


def _catalog(items: pd.DataFrame, first_item: pd.Series) -> pd.DataFrame:
    """Prefixed item ids, a stub for every rated item the catalog lacks (logged: the files
    disagree), and ``created_ts``: the earlier of release and first rating."""
    items["item_id"] = "i" + items["raw"].astype(str)
    missing_items = sorted(set(first_item.index) - set(items["item_id"]))
    if missing_items:
        logger.warning(
            "%d rated items missing from the catalog, e.g. %s", len(missing_items), missing_items[0]
        )
        stubs = pd.DataFrame({"item_id": missing_items, "title": ""})
        stubs["categories"] = [[] for _ in missing_items]
        stubs["released"] = items["released"].iloc[:0].reindex(stubs.index)
        items = pd.concat([items, stubs], ignore_index=True)
    seen = items["item_id"].map(first_item)
    created = pd.concat([items["released"].astype("Float64"), seen], axis=1).min(axis=1)
    items["created_ts"] = created.fillna(0).astype(np.int64)
    return items


def _profiles(users: pd.DataFrame | None, first_user: pd.Series) -> pd.DataFrame:
    """Prefixed user ids (empty profiles when the format has no users file, or for a rater
    the file lacks, logged) and ``signup_ts``: the user's first rating."""
    if users is None:
        users = pd.DataFrame({"user_id": first_user.index, "age": pd.NA, "gender": None})
        users["occupation"] = None
    else:
        users["user_id"] = "u" + users["raw"].astype(str)
        missing_users = sorted(set(first_user.index) - set(users["user_id"]))
        if missing_users:
            logger.warning(
                "%d users missing from the user file, e.g. %s", len(missing_users), missing_users[0]
            )
            users = pd.concat([users, pd.DataFrame({"user_id": missing_users})], ignore_index=True)
    users["signup_ts"] = users["user_id"].map(first_user).fillna(0).astype(np.int64)
    return users
