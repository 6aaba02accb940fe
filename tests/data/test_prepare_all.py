"""Every dataset's fixture, written in its published raw layout, goes validate -> prepare -> load -> one batch."""

import importlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rwkvlab.data import load_prepared, validate
from rwkvlab.data.readers import READERS, get_reader
from rwkvlab.data.augment import train_transforms
from rwkvlab.data.loader import SegArrays, as_float
from rwkvlab.data.prepare import prepare_dataset

# dataset -> (fixture module, its writer); GOALS and FUGC as their archives unpack
FIXTURES = {
    "synapse": ("synapse", "write"), "acdc": ("acdc", "write"), "goals": ("goals", "write_release"),
    "busi": ("busi", "write"), "cvc_clinicdb": ("cvc", "write_clinicdb"), "cvc_colondb": ("cvc", "write_colondb"),
    "kvasir_seg": ("kvasir", "write"), "isic2017": ("isic2017", "write"), "glas": ("glas", "write"),
    "psvfm": ("psvfm", "write"), "fugc": ("fugc", "write_release"), "folder": ("folder", "write"),
}


# readers of volumes only, whose validate -> prepare -> load path tests/data/test_volumes3d.py covers
VOLUME_READERS = {"volume_demo", "msd", "synapse_3d", "acdc_3d"}


def test_every_registered_paper_dataset_has_a_fixture():
    # registered on import, before any get_reader
    assert set(READERS) - {"demo", "synapse_demo"} - VOLUME_READERS == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_through_the_pipeline(name, tmp_path):
    module, writer = FIXTURES[name]
    fixture = importlib.import_module(f"fixtures.{module}")
    getattr(fixture, writer)(tmp_path / "raw")
    options = getattr(fixture, "OPTIONS", {}) if name == "folder" else {}
    cases, problems = validate(get_reader(name, tmp_path / "raw", **options))
    assert not problems and cases
    cache = tmp_path / "prepared" / "cache.h5"
    assert prepare_dataset(name, tmp_path / "raw", (32, 32), [0, 1, 2], cache, tmp_path / "splits", tmp_path / "card",
                           options=options)
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.class_names == get_reader(name, tmp_path / "raw", **options).class_names
    assert data.images.shape[1:3] == (32, 32) and data.masks.max() < data.num_classes
    if data.volume_splits.get("test"):
        vid = data.volume_splits["test"][0]
        image, label = data.volumes[vid]
        assert image.ndim == 3 and image.shape == label.shape and 0 <= image.min() and image.max() <= 1
    batch = next(iter(DataLoader(SegArrays(data, "train", train_transforms("light", (32, 32), 0)), batch_size=4)))
    assert batch["image"].shape[1:] == (data.in_chans, 32, 32) and batch["label"].shape[1:] == (1, 32, 32)
    plain = next(iter(DataLoader(SegArrays(data, "train"), batch_size=4)))
    x = as_float(plain["image"])
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    written = {p.name for p in (tmp_path / "splits").iterdir()}
    assert {f"seed{k}.json" for k in range(3)} <= written
    if name == "psvfm":  # the authors' leave-one-video-out folds beside the paper's split
        assert {f"loo_{v}.json" for v in ("anon001", "anon005", "anon012")} <= written
    assert np.isin(data.splits["train"], np.flatnonzero(data.labelled)).all()


def test_raw_readme_lists_the_current_layouts(capsys):
    from pathlib import Path

    from rwkvlab.data.__main__ import main

    main(["layouts"])
    readme = (Path(__file__).resolve().parents[2] / "data" / "raw" / "README.md").read_text()
    assert capsys.readouterr().out in readme, "regenerate data/raw/README.md with python -m rwkvlab.data layouts"
