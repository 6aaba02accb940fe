"""The ``folder`` reader for one's own data: options, mask encodings, split file, and the whole path
validate -> prepare -> train one epoch -> evaluate."""

import json

import numpy as np
import pytest
import torch
from fixtures import folder
from PIL import Image

from rwkvlab.config import recipe_with_defaults
from rwkvlab.data import DataError, load_prepared, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data.__main__ import main
from rwkvlab.data.prepare import prepare_dataset
from rwkvlab.engine.evaluate import evaluate_split
from rwkvlab.engine.train import fit
from rwkvlab.models import create_model


@pytest.fixture
def root(tmp_path):
    folder.write(tmp_path / "mydata")
    return tmp_path / "mydata"


def reader(root, **changes):
    return get_reader("mydata", root, **(folder.OPTIONS | changes))


def test_user_name_and_grey_level_classes(root):
    r = reader(root)
    assert r.name == "mydata" and r.class_names == folder.CLASS_NAMES
    cases, found = validate(r)
    assert found == [] and len(cases) == folder.COUNT
    assert {c.files[0].suffix for c in cases} == set(folder.SUFFIXES)
    for case in cases[:5]:
        with Image.open(case.files[1]) as im:
            grey = np.asarray(im)
        np.testing.assert_array_equal(r.load(case).label, np.vectorize(folder.LEVELS.get)(grey))


def test_16_bit_and_palette_images(root):
    cases = {c.case_id: c for c in reader(root).scan([])}
    with Image.open(cases["case01"].files[0]) as im:
        assert im.mode.startswith("I")
        raw = np.asarray(im).astype(np.float64)
    image = reader(root).load(cases["case01"]).image
    np.testing.assert_array_equal(image[..., 0], np.round(raw / 257).astype(np.uint8))  # 65535 -> 255
    assert (image[..., 0] == image[..., 2]).all() and image.max() > 200
    with Image.open(cases["case02"].files[0]) as im:
        assert im.mode == "P"
        shown = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(reader(root).load(cases["case02"]).image, shown)


def test_class_index_masks_by_default(tmp_path):
    root = tmp_path / "idx"
    folder.write(root)
    for mask in (root / "masks").iterdir():
        with Image.open(mask) as im:
            Image.fromarray(np.vectorize(folder.LEVELS.get)(np.asarray(im)).astype(np.uint8)).save(mask)
    r = get_reader("idx", root, reader="folder", class_names=list(folder.CLASS_NAMES))
    cases, found = validate(r)
    assert found == [] and set(np.unique(r.load(cases[0]).label)) <= {0, 1, 2}
    assert validate(get_reader("idx", root, reader="folder"))[1][0].endswith(
        "mask values [2] are outside the declared values [0, 1]")


def test_ignores_other_files_by_name(root, caplog):
    (root / "images" / "Thumbs.db").write_bytes(b"x")
    assert validate(reader(root))[1] == []
    assert "Thumbs.db" in caplog.text


@pytest.mark.parametrize("changes, message", [
    ({"class_names": ["only"]}, "prepare.options.mydata: class_names must be a list of at least two distinct names"),
    ({"mask_values": {0: 0, 255: 5}}, "prepare.options.mydata: mask_values must map grey values 0..65535 to class "
                                      "indices 0..2"),
    ({"mask_threshold": 127}, "prepare.options.mydata: give mask_values or mask_threshold, not both"),
    ({"colour": True}, "prepare.options.mydata: unknown option(s) ['colour'] for reader 'folder'"),
    ({"reader": "nope"}, "prepare.options.mydata.reader: unknown reader 'nope'"),
])
def test_bad_options(root, changes, message):
    with pytest.raises(DataError) as err:
        reader(root, **changes)
    assert str(err.value).startswith(message)


def test_unknown_dataset_suggests_the_folder_reader(root):
    with pytest.raises(DataError) as err:
        get_reader("mydata", root)
    assert "unknown dataset 'mydata'" in str(err.value) and "prepare.options.mydata.reader" in str(err.value)


def test_split_file(root):
    ids = [f"case{n:02d}" for n in range(folder.COUNT)]
    (root / "split.json").write_text(json.dumps({"train": ids[:14], "val": ids[14:17], "test": ids[17:19]}))
    r = reader(root, split_file="split.json")
    cases, found = validate(r)
    assert found == []
    assert all(r.split(cases, seed) == {"train": ids[:14], "val": ids[14:17], "test": ids[17:19]} for seed in (0, 1))


def test_split_file_problems(root):
    (root / "split.json").write_text(json.dumps({"train": ["case00", "case01", "ghost"], "test": ["case01"]}))
    found = validate(reader(root, split_file="split.json"))[1]
    assert found == [f"{root / 'split.json'}: split 'train' lists 1 id(s) with no image and mask in {root}: ['ghost']",
                     f"{root / 'split.json'}: case 'case01' is listed in both 'train' and 'test'"]
    (root / "split.json").write_text(json.dumps({"training": []}))
    assert validate(reader(root, split_file="split.json"))[1][0].startswith(
        f"{root / 'split.json'}: expected a JSON object with a \"train\" list")
    assert validate(reader(root, split_file="absent.json"))[1][0].startswith(
        f"{root / 'absent.json'}: split file unreadable")


def test_cli_validate_with_reader_and_options(root, capsys):
    assert main(["validate", "--dataset", "mydata", "--root", str(root), "--reader", "folder",
                 "--option", "class_names=[background, organ, lesion]",
                 "--option", "mask_values={0: 0, 128: 1, 255: 2}"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"mydata: {folder.COUNT} cases read, 0 problem(s)")


@pytest.mark.slow  # about 25 s on two shared CPU cores: one epoch of rwkv_unet_t
def test_validate_prepare_train_evaluate(root, tmp_path):
    cases, found = validate(reader(root))
    assert found == [] and len(cases) == folder.COUNT
    cache = tmp_path / "prepared" / "mydata" / "cache.h5"
    assert prepare_dataset("mydata", root, (32, 32), [0], cache, tmp_path / "splits", tmp_path / "card",
                           options=folder.OPTIONS)
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.dataset == "mydata" and data.class_names == folder.CLASS_NAMES and data.in_chans == 3
    assert {s: len(i) for s, i in data.splits.items()} == {"train": 16, "val": 2, "test": 2}
    recipe = recipe_with_defaults(epochs=1, batch_size=8, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0)
    history = fit("rwkv_unet_t", data, recipe, tmp_path / "run", seed=0, device=torch.device("cpu"))
    assert list(history["epoch"]) == [1] and np.isfinite(history["train_loss"]).all()
    model = create_model("rwkv_unet_t", in_chans=3, num_classes=len(folder.CLASS_NAMES))
    model.load_state_dict(torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"], strict=True)
    per_case, preds = evaluate_split(model, data, "test", 4, torch.device("cpu"))
    test_ids = sorted(data.ids[data.splits["test"]].tolist())
    assert sorted(preds) == test_ids and preds[test_ids[0]].shape == (32, 32)
    assert len(per_case) == 2 * (len(folder.CLASS_NAMES) - 1)  # per case and foreground class
