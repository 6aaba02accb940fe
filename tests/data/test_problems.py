"""Problems of real folders: one bad case skipped by name (or stopping), clean command-line errors,
duplicate ids, and image modes (16-bit, palette, grey + alpha, CMYK, NaN)."""

import json
import shutil

import h5py
import numpy as np
import pytest
from fixtures import busi, folder, kvasir
from PIL import Image

from rwkvlab.data import DataError, load_prepared, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data._base import read_image, read_mask
from rwkvlab.data.__main__ import main
from rwkvlab.report.cards import write_card
from rwkvlab.data.prepare import prepare_dataset

BAD = "benign_2"  # its extra mask gets the wrong size, as benign (4)_mask_1.png in circulating copies


@pytest.fixture
def busi_root(tmp_path):
    root = tmp_path / "busi"
    busi.write(root)
    extra = root / "Dataset_BUSI_with_GT" / "benign" / "benign (2)_mask_1.png"
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(extra)
    return root


def run_prepare(root, tmp_path, name="busi", **options):
    cache = tmp_path / "out" / "cache.h5"
    prepare_dataset(name, root, (32, 32), [0, 1], cache, tmp_path / "out" / "splits", tmp_path / "out" / "card",
                    options=options)
    return cache


def test_one_bad_extra_mask_stops_by_default(busi_root, tmp_path):
    with pytest.raises(DataError) as err:
        run_prepare(busi_root, tmp_path)
    assert err.value.problems == validate(get_reader("busi", busi_root))[1]
    assert len(err.value.problems) == 1 and "benign (2)_mask_1.png: mask is 9x7 (WxH)" in err.value.problems[0]
    assert not (tmp_path / "out" / "cache.h5").exists()


def test_skip_invalid_leaves_out_exactly_that_case(busi_root, tmp_path, caplog):
    cache = run_prepare(busi_root, tmp_path, skip_invalid=True)
    expected = validate(get_reader("busi", busi_root))[1][0]
    with h5py.File(cache) as f:
        assert json.loads(f.attrs["skipped"]) == {BAD: expected}
    data = load_prepared(cache, tmp_path / "out" / "splits" / "seed0.json")
    assert BAD not in data.ids and len(data.ids) == sum(busi.COUNTS.values()) - 1
    assert data.skipped == {BAD: expected}
    for seed in (0, 1):
        split = json.loads((tmp_path / "out" / "splits" / f"seed{seed}.json").read_text())
        assert sorted(sum(split.values(), [])) == sorted(data.ids.tolist())
    assert f"skipping case {BAD}" in caplog.text
    write_card(data, data.description, tmp_path / "card", montage=2)
    card = (tmp_path / "card" / "card.md").read_text()
    assert "## Skipped cases" in card and f"- `{BAD}`: {expected}" in card


def test_skip_invalid_still_stops_on_a_folder_problem(busi_root, tmp_path):
    shutil.rmtree(busi_root / "Dataset_BUSI_with_GT" / "normal")
    with pytest.raises(DataError) as err:
        run_prepare(busi_root, tmp_path, skip_invalid=True)
    assert len(err.value.problems) == 2
    assert any("normal: folder not found" in p for p in err.value.problems)


def test_skip_invalid_must_not_empty_a_split(tmp_path):
    root = tmp_path / "mydata"
    folder.write(root)
    ids = [f"case{n:02d}" for n in range(folder.COUNT)]
    (root / "split.json").write_text(json.dumps({"train": ids[:18], "val": ids[18:19], "test": ids[19:]}))
    (root / "masks" / "case18.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"split\(s\) \['val'\] of seed0.json would be empty after skipping 1 "
                                        r"case\(s\) with problems: \['case18'\]"):
        run_prepare(root, tmp_path, "mydata", **folder.OPTIONS, split_file="split.json", skip_invalid=True)


def test_skip_invalid_must_be_a_switch(busi_root, tmp_path):
    with pytest.raises(DataError, match=r"prepare.options.busi.skip_invalid must be true or false, got 'yes'"):
        run_prepare(busi_root, tmp_path, skip_invalid="yes")


def test_cli_prepare_prints_the_validate_list(busi_root, tmp_path, capsys):
    assert main(["validate", "--dataset", "busi", "--root", str(busi_root)]) == 1
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    out = tmp_path / "data"
    argv = ["prepare", "--dataset", "busi", "--root", str(busi_root), "--out", str(out), "--size", "32", "32"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("- ")] == listed and len(listed) == 1
    assert "Traceback" not in printed and not (out / "prepared" / "busi" / "cache.h5").exists()
    assert main([*argv, "--skip-invalid"]) == 0
    with h5py.File(out / "prepared" / "busi" / "cache.h5") as f:
        assert list(json.loads(f.attrs["skipped"])) == [BAD]


@pytest.mark.parametrize("argv, needle", [
    (["validate", "--dataset", "nope", "--root", "."], "unknown dataset 'nope'"),
    (["prepare", "--dataset", "busi", "--root", ".", "--option", "colour=red"],
     "prepare.options.busi: unknown option(s) ['colour']"),
    (["card", "--dataset", "busi", "--data", "absent"], "cache.h5: not found; run the prepare stage first"),
    (["layouts", "--dataset", "nope"], "unknown dataset reader 'nope'"),
])
def test_cli_data_problems_without_traceback(argv, needle, capsys):
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.startswith("- ") and needle in out


def test_duplicate_ids_are_not_loaded(tmp_path):
    root = tmp_path / "kvasir"
    kvasir.write(root)
    image = sorted((root / "images").glob("*.jpg"))[0]
    shutil.copy(image, image.with_suffix(".png"))
    cases, found = validate(get_reader("kvasir_seg", root))
    assert len(cases) == 19 and image.stem not in {c.case_id for c in cases}
    assert len(found) == 1 and found[0].case == image.stem
    cache = run_prepare(root, tmp_path, "kvasir_seg", skip_invalid=True)
    with h5py.File(cache) as f:
        assert list(json.loads(f.attrs["skipped"])) == [image.stem] and len(f["ids"]) == 19


def rgb(seed=0, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_grey_alpha_and_cmyk_images(tmp_path):
    grey = rgb()[..., 0]
    Image.fromarray(np.stack([grey, np.full_like(grey, 7)], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), np.repeat(grey[..., None], 3, -1))
    colour = rgb(1)
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "cmyk.tif")
    with Image.open(tmp_path / "cmyk.tif") as im:
        assert im.mode == "CMYK"
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), colour)
    Image.fromarray(np.dstack([colour, np.full(colour.shape[:2], 3, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), colour)


def test_16_bit_image_is_divided_by_257(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 65278, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    expected = np.array([[0, 1, 4], [128, 254, 255]], np.uint8)  # round(v * 255 / 65535)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[..., 1], expected)


@pytest.mark.parametrize("value, message", [
    (np.nan, "image has NaN or infinite values"),
    (np.inf, "image has NaN or infinite values"),
    (2.0, "float image values span [0, 2], expected [0, 1]"),
])
def test_float_image_rejected_by_name(tmp_path, value, message):
    image = np.zeros((4, 4), np.float32)
    image[1, 1] = value
    Image.fromarray(image, "F").save(tmp_path / "f.tif")
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "f.tif")
    assert str(err.value).startswith(f"{tmp_path / 'f.tif'}: {message}")
    image[1, 1] = 0.5
    Image.fromarray(image, "F").save(tmp_path / "ok.tif")
    assert read_image(tmp_path / "ok.tif")[1, 1, 0] == 128


def test_masks_in_16_bit_and_float(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint16)
    Image.fromarray(idx).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png", {0: 0, 1: 1, 2: 2}), idx)
    bad = np.array([[0, np.nan], [1, 1]], np.float32)
    Image.fromarray(bad, "F").save(tmp_path / "mf.tif")
    with pytest.raises(DataError, match="mf.tif: mask has NaN or infinite values"):
        read_mask(tmp_path / "mf.tif", {0: 0, 1: 1})
