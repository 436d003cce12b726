"""Train/val/test splits: seeded make_split, load_split checks, save_split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mednca.data.splits import hold_out_val, load_split, make_split, save_split
from mednca.errors import DataError

IDS = [f"case_{i:02d}" for i in range(20)]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("n, sizes", [(20, (14, 2, 4)), (10, (7, 1, 2)), (3, (1, 1, 1)), (4, (2, 1, 1))])
def test_make_split_sizes_disjoint_cover(n: int, sizes: tuple[int, int, int]) -> None:
    ids = IDS[:n]
    split = make_split(list(reversed(ids)), seed=3)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == sizes
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert parts[0] | parts[1] | parts[2] == set(ids)
    assert sum(len(p) for p in parts) == n  # disjoint
    assert all(split[k] == sorted(split[k]) for k in split)


def test_make_split_seeded() -> None:
    assert make_split(IDS, seed=0) == make_split(list(reversed(IDS)), seed=0)
    assert make_split(IDS, seed=0) != make_split(IDS, seed=1)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_make_split_too_few(n: int) -> None:
    with pytest.raises(DataError, match=f"at least 3 cases.*found {n}"):
        make_split(IDS[:n])


def test_load_split_with_val(tmp_path: Path) -> None:
    data = {"train": IDS[:12], "val": IDS[12:14], "test": IDS[14:], "seed": 5, "dataset": "x"}
    split = load_split(write_json(tmp_path / "s.json", data), IDS)
    assert split == {"train": IDS[:12], "val": IDS[12:14], "test": IDS[14:]}


def test_load_split_without_val_holds_out_seeded(tmp_path: Path) -> None:
    path = write_json(tmp_path / "s.json", {"train": IDS[:15], "test": IDS[15:]})
    split = load_split(path, IDS, seed=0)
    assert len(split["val"]) >= 1
    assert sorted(split["train"] + split["val"]) == IDS[:15]
    assert not set(split["train"]) & set(split["val"])
    assert split["test"] == IDS[15:]
    assert load_split(path, IDS, seed=0) == split
    assert (split["train"], split["val"]) == hold_out_val(IDS[:15], 0)
    assert {tuple(load_split(path, IDS, seed=s)["val"]) for s in range(5)} != {tuple(split["val"])}


def test_load_split_without_val_needs_two_train_cases(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2 training cases"):
        load_split(write_json(tmp_path / "s.json", {"train": IDS[:1], "test": IDS[1:]}), IDS)


@pytest.mark.parametrize("data, message", [
    ({"train": IDS[:10] + ["ghost"], "test": IDS[10:]}, "not in the dataset, e.g. ghost"),
    ({"train": IDS[:10], "val": [], "test": IDS[10:]}, "'val' is empty"),
    ({"train": IDS[:10], "val": None, "test": IDS[10:]}, "'val' must be a list"),
    ({"train": IDS[:10], "val": "case_15", "test": IDS[10:]}, "'val' must be a list"),
    ({"train": IDS[:10], "val": ["ghost"], "test": IDS[10:]}, "1 val case"),
    ({"train": IDS[:10], "val": [IDS[0]], "test": IDS[10:]}, f"{IDS[0]} is in both train and val"),
    ({"train": IDS[:10], "val": [IDS[12]], "test": IDS[10:]}, f"{IDS[12]} is in both val and test"),
    ({"train": IDS[:11], "val": [IDS[0]], "test": IDS[10:]}, f"{IDS[0]} is in both train and val"),
    ({"train": IDS[1:11], "val": [IDS[0]], "test": IDS[10:]}, f"{IDS[10]} is in both train and test"),
    ({"train": IDS[:10]}, "needs 'train' and 'test'"),
    ({"train": IDS[:10], "test": "case_19"}, "needs 'train' and 'test'"),
    ([IDS[:10], IDS[10:]], "needs 'train' and 'test'"),
    ({"train": [], "val": IDS[:2], "test": IDS[2:]}, "no training cases"),
])
def test_load_split_invalid(tmp_path: Path, data, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_split(write_json(tmp_path / "s.json", data), IDS)


def test_load_split_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"train": ["a", ')
    with pytest.raises(DataError, match="cannot read split file"):
        load_split(path, IDS)
    with pytest.raises(DataError, match="cannot read split file"):
        load_split(tmp_path / "missing.json", IDS)


def test_load_split_val_null_is_a_data_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "s.json", {"train": IDS[:10], "val": None, "test": IDS[10:]})
    with pytest.raises(DataError):
        load_split(path, IDS)


def test_save_split_round_trip(tmp_path: Path) -> None:
    split = make_split(IDS, seed=2)
    path = tmp_path / "sub" / "split.json"
    save_split({**split, "extra": ["x"]}, path)
    assert json.loads(path.read_text()) == split
    assert list(json.loads(path.read_text())) == ["train", "val", "test"]
    assert load_split(path, IDS) == split
