"""Validation messages, splits and the prepared cache, on fixture folders the tests write."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rwkvlab.data import DataError, load_prepared, make_split, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data._base import read_mask
from rwkvlab.data.augment import train_transforms
from rwkvlab.data.loader import SegArrays
from rwkvlab.data.prepare import prepare_dataset

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def write_case(root, cid, size=(40, 30), mask_size=None, mask_values=(0, 255)):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(cid))
    w, h = size
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{cid}.jpg")
    mw, mh = mask_size or size
    mask = np.full((mh, mw), mask_values[0], np.uint8)
    mask[: mh // 2, : mw // 2] = mask_values[1]
    Image.fromarray(mask).save(root / "masks" / f"{cid}.png")


def prepare(root, tmp_path, size=(32, 48)):
    cache = tmp_path / "prepared" / "cache.h5"
    assert prepare_dataset("demo", root, size, [0, 1], cache, tmp_path / "splits", tmp_path / "card")
    return cache


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    for i in range(8):
        write_case(root, f"case{i}")
    return root


def test_prepare_and_load(raw, tmp_path):
    cache = prepare(raw, tmp_path)
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.images.shape == (8, 32, 48, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (8, 32, 48)
    assert set(np.unique(data.masks)) == {0, 1}
    assert data.masks[0, :16, :24].all() and not data.masks[0, 16:, 24:].any()
    assert sorted(np.concatenate([data.splits[s] for s in ("train", "val", "test")])) == list(range(8))
    assert data.sizes.tolist() == [[30, 40]] * 8
    item = SegArrays(data, "train", train_transforms("light", (32, 48), 0))[0]
    assert item["image"].shape == (3, 32, 48) and item["label"].shape == (1, 32, 48)


def test_prepare_twice_gives_identical_bytes(raw, tmp_path):
    a = prepare(raw, tmp_path / "a").read_bytes()
    b = prepare(raw, tmp_path / "b").read_bytes()
    assert a == b


def test_absent_raw_folder_is_skipped_with_layout(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "README.md").write_text("put data here")
    cache = tmp_path / "prepared" / "cache.h5"
    assert not prepare_dataset("demo", tmp_path / "raw", (32, 32), [0], cache, tmp_path / "splits", tmp_path / "card")
    assert not cache.exists()
    assert "images/ISIC_<n>.jpg" in (tmp_path / "card" / "card.md").read_text()
    assert json.loads(cache.with_suffix(".skipped.json").read_text())["dataset"] == "demo"


def test_split_is_seeded_and_complete():
    ids = [f"c{i}" for i in range(36)]
    a = make_split(ids, {"train": 0.67, "val": 0.165, "test": 0.165}, seed=0)
    assert a == make_split(list(reversed(ids)), {"train": 0.67, "val": 0.165, "test": 0.165}, seed=0)
    assert [len(a[s]) for s in ("train", "val", "test")] == [24, 6, 6]
    assert sorted(sum(a.values(), [])) == sorted(ids)
    assert a != make_split(ids, {"train": 0.67, "val": 0.165, "test": 0.165}, seed=1)


def test_demo_set_is_valid():
    cases, problems = validate(get_reader("demo", DEMO))
    assert not problems and len(cases) == 36
    assert (DEMO / "LICENSE_AND_ATTRIBUTION.txt").is_file()


def test_missing_folder(tmp_path):
    (tmp_path / "raw" / "masks").mkdir(parents=True)
    (tmp_path / "raw" / "masks" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"raw/images: folder not found; expected layout under .*\n *images/ISIC_<n>.jpg"):
        prepare(tmp_path / "raw", tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "masks").mkdir()
    with pytest.raises(DataError, match="images: folder is empty"):
        prepare(tmp_path / "raw", tmp_path)


def test_every_problem_is_listed(raw, tmp_path):
    (raw / "masks" / "case3.png").unlink()
    (raw / "images" / "case5.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"2 problem\(s\)(.|\n)*case3.jpg: no mask(.|\n)*case5.jpg: unreadable"):
        prepare(raw, tmp_path)


def test_image_without_mask(raw, tmp_path):
    (raw / "masks" / "case3.png").unlink()
    with pytest.raises(DataError, match=r"case3.jpg: no mask; expected .*masks/case3"):
        prepare(raw, tmp_path)


def test_unreadable_image(raw, tmp_path):
    data = (raw / "images" / "case2.jpg").read_bytes()
    (raw / "images" / "case2.jpg").write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(DataError, match="case2.jpg: unreadable or truncated image"):
        prepare(raw, tmp_path)
    assert not (tmp_path / "prepared" / "cache.h5").exists()


def test_mask_size_mismatch(tmp_path):
    root = tmp_path / "raw"
    write_case(root, "a")
    write_case(root, "b", mask_size=(30, 30))
    with pytest.raises(DataError, match=r"b.png: mask is 30x30 \(WxH\) but its image is 40x30"):
        prepare(root, tmp_path)


def test_label_outside_declared_values(tmp_path):
    root = tmp_path / "raw"
    write_case(root, "a", mask_values=(0, 128))
    with pytest.raises(DataError, match=r"a.png: mask values \[128\] are outside the declared values \[0, 255\]"):
        prepare(root, tmp_path)


def test_duplicate_ids(raw, tmp_path):
    (raw / "images" / "case1.png").write_bytes((raw / "images" / "case1.jpg").read_bytes())
    with pytest.raises(DataError, match="duplicate case id 'case1'"):
        prepare(raw, tmp_path)


def test_split_naming_unknown_case(raw, tmp_path):
    cache = prepare(raw, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["nope"]}))
    with pytest.raises(DataError, match="names cases not in"):
        load_prepared(cache, bad)


def test_palette_mask_is_read_as_displayed(tmp_path):
    from rwkvlab.data._base import read_mask

    # HAM10000 style: palette index 0 displays white (lesion), index 255 black.
    idx = np.full((4, 4), 255, np.uint8)
    idx[:2, :2] = 0
    im = Image.fromarray(idx, mode="P")
    im.putpalette([255 - i // 3 for i in range(768)])
    im.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", {0: 0, 255: 1}), idx == 0)


def test_lossy_binary_mask_error_names_mask_threshold(tmp_path):
    # A binary mask saved as JPEG rings around its edges: values near 0 and near 255, as real Kvasir-SEG has.
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    path = tmp_path / "m.jpg"
    Image.fromarray(mask).save(path, quality=75)
    values = np.unique(np.asarray(Image.open(path)))
    assert set(values.tolist()) - {0, 255}, "the JPEG round trip must add ringing values for this test to mean anything"
    with pytest.raises(DataError, match=r"m.jpg: mask values \[.*\] are outside the declared values \[0, 255\]; .*"
                                        r"mask_threshold: 127"):
        read_mask(path, {0: 0, 255: 1})
    assert read_mask(path, threshold=127).sum() == pytest.approx(32 * 24, rel=0.05)


def test_mid_grey_mask_error_has_no_threshold_hint(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)
    with pytest.raises(DataError) as e:
        read_mask(path, {0: 0, 255: 1})
    assert "mask_threshold" not in str(e.value) and "[128]" in str(e.value)
