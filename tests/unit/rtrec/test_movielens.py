"""MovieLens loaders on tiny fixture files of each format, plus the real ml-100k when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtrec.data import Dataset, load_dataset, load_movielens
from rtrec.errors import InvalidInput, NotFound

REAL_ML100K = Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k"

_FLAGS_TOY = "|".join(["0", "0", "0", "1", "1", "1"] + ["0"] * 13)
_FLAGS_GOLD = "|".join(["0", "1", "1"] + ["0"] * 13 + ["1", "0", "0"])


def write_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t1\t5\t881250949\n2\t2\t3\t881250950\n1\t2\t4\t881250000\n")
    (folder / "u.item").write_bytes(
        (
            f"1|Toy Story (1995)|01-Jan-1995||http://x|{_FLAGS_TOY}\n"
            f"2|GoldenEye (1995)|01-Jan-1995||http://y|{_FLAGS_GOLD}\n"
            f"3|Caf\xe9 Old (1931)|01-Jan-1931||http://z|{_FLAGS_TOY}\n"
        ).encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def write_1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return folder


def write_latest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n7,1,0.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n'
        "5,Untitled,(no genres listed)\n"
    )
    return folder


def test_ml100k(tmp_path: Path) -> None:
    ds = load_movielens(write_100k(tmp_path / "ml-100k")).validate()
    assert ds.meta["source"] == "movielens-100k"
    ev = ds.events
    assert list(ev["ts"]) == [881250000000, 881250949000, 881250950000]  # sorted, ms
    assert set(ev["event_type"]) == {"rating"}
    assert list(ev["value"]) == [4.0, 5.0, 3.0]
    items = ds.items.set_index("item_id")
    assert items.loc["i1", "categories"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["i2", "categories"] == ["Action", "Adventure", "Thriller"]
    assert items.loc["i3", "title"] == "Café Old (1931)"
    assert items.loc["i3", "created_ts"] == 0  # pre-epoch release clipped
    assert items.loc["i1", "created_ts"] == 788918400000  # 1995-01-01, before any rating
    users = ds.users.set_index("user_id")
    assert users.loc["u2", "age"] == 53 and users.loc["u1", "occupation"] == "technician"
    assert users.loc["u1", "signup_ts"] == 881250000000  # first rating


def test_ml1m(tmp_path: Path) -> None:
    ds = load_movielens(write_1m(tmp_path / "ml-1m") / "ratings.dat").validate()
    assert ds.meta["source"] == "movielens-1m"
    assert len(ds.events) == 2
    items = ds.items.set_index("item_id")
    assert items.loc["i661", "categories"] == ["Animation", "Children's", "Musical"]
    assert items.loc["i1193", "title"] == "One Flew Over the Cuckoo's Nest (1975)"
    user = ds.users.set_index("user_id").loc["u1"]
    assert user["gender"] == "F" and user["occupation"] == "K-12 student" and user["age"] == 1


def test_ml_latest(tmp_path: Path) -> None:
    ds = load_movielens(write_latest(tmp_path)).validate()
    assert ds.meta["source"] == "movielens-latest"
    assert sorted(ds.events["value"]) == [0.5, 4.0, 4.5]
    items = ds.items.set_index("item_id")
    assert items.loc["i3", "title"] == "Grumpier Old Men, The (1995)"
    assert items.loc["i5", "categories"] == []
    assert set(ds.users["user_id"]) == {"u1", "u7"}
    assert ds.users["age"].isna().all() and ds.users["gender"].isna().all()


def test_detects_dataset_inside_parent_folder(tmp_path: Path) -> None:
    write_100k(tmp_path / "downloads" / "ml-100k")
    ds = load_dataset(tmp_path / "downloads")
    assert len(ds.events) == 3


def test_missing_files_raise_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(NotFound, match=r"u\.data"):
        load_movielens(tmp_path)
    folder = write_100k(tmp_path / "a")
    (folder / "u.item").unlink()
    with pytest.raises(NotFound, match=r"u\.item"):
        load_movielens(folder)


@pytest.mark.parametrize(
    ("fmt", "file", "content", "pattern"),
    [
        ("100k", "u.data", "1\t1\t5\t881250949\n2\tx\t3\t881250950\n", r"u\.data line 2: bad item"),
        ("100k", "u.data", "1\t1\t5\t881250949\n2\t2\t3\n", r"u\.data line 2: bad ts"),
        ("100k", "u.data", "1\t1\t5\t88125\n2\t2\t3\t8\t9\n", r"u\.data.*line 2"),
        ("100k", "u.user", "1|24|M|technician|85711\n2|53\n", r"u\.user line 2: expected 5"),
        ("100k", "u.item", "1|Toy Story|01-Jan-1995||u|0|0\n", r"u\.item line 1: expected 24"),
        ("1m", "ratings.dat", "1::1193::five::978300760\n", r"ratings\.dat line 1: bad rating"),
        ("1m", "movies.dat", "1193::Cuckoo\n", r"movies\.dat line 1: expected 3"),
        ("latest", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,\n", r"line 2: bad ts"),
        ("latest", "movies.csv", "movieId,title,genres\nabc,T,Comedy\n", r"line 2: bad movieId"),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, fmt: str, file: str, content: str, pattern: str
) -> None:
    writer = {"100k": write_100k, "1m": write_1m, "latest": write_latest}[fmt]
    folder = writer(tmp_path / fmt)
    (folder / file).write_text(content)
    with pytest.raises(InvalidInput, match=pattern):
        load_movielens(folder)


def test_rejects_non_ratings_file(tmp_path: Path) -> None:
    folder = write_100k(tmp_path / "ml")
    with pytest.raises(InvalidInput, match="not a MovieLens ratings file"):
        load_movielens(folder / "u.user")


def test_ratings_for_unknown_items_get_stub_items(tmp_path: Path) -> None:
    folder = write_latest(tmp_path)
    with (folder / "ratings.csv").open("a") as f:
        f.write("2,99,3.0,964982000\n")
    ds = load_movielens(folder).validate()
    assert ds.items.set_index("item_id").loc["i99", "categories"] == []


def test_round_trip_through_save(tmp_path: Path) -> None:
    ds = load_movielens(write_1m(tmp_path / "ml-1m"))
    back = Dataset.load(ds.save(tmp_path / "saved"))
    assert back.events.equals(ds.events)
    assert back.items["categories"].tolist() == ds.items["categories"].tolist()


@pytest.mark.skipif(not (REAL_ML100K / "u.data").is_file(), reason="ml-100k not present")
def test_real_ml100k() -> None:
    ds = load_movielens(REAL_ML100K).validate()
    assert len(ds.events) == 100_000
    assert len(ds.users) == 943 and ds.events["user_id"].nunique() == 943
    assert len(ds.items) == 1_682 and ds.events["item_id"].nunique() == 1_682
    assert set(np.unique(ds.events["value"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.items.set_index("item_id").loc["i1", "title"] == "Toy Story (1995)"
    assert (ds.items["categories"].str.len() > 0).all()
