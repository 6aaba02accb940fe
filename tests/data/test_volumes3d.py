"""Volumetric datasets for 3D models (docs §19): the msd reader on tiny trees the tests write in both
namings, orientation and spacing, intensities, resampling, every validator error, the synthetic
volume_demo set, and synapse_3d / acdc_3d on fake releases."""

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures import acdc
from fixtures import synapse as synapse_fixture

from rwkvlab.data import DataError, load_prepared, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data.__main__ import main
from rwkvlab.data.prepare import prepare_dataset
from rwkvlab.data.readers.msd import ct_window, percentile_scale, read_nifti, resample_volume
from rwkvlab.data.readers.synapse_3d import BTCV_TO_SYNAPSE, TEST_CASES, TRAIN_CASES
from rwkvlab.data.readers.volume_demo import CLASS_NAMES, SHAPE, SPACING, generate3d

XYZ = (6, 5, 4)  # voxels along the file's (i, j, k): three sizes, so that a wrong axis order shows
ZOOMS = (0.8, 0.7, 2.5)  # mm along (i, j, k)
CASES = [f"liver_{i}" for i in range(10)]
LABELS = ("background", "liver", "tumour")


def hu_volume(seed: int) -> np.ndarray:
    """int16 HU in (X, Y, Z), spanning well beyond TransUNet's window on both sides."""
    return np.random.default_rng(seed).integers(-1000, 1000, XYZ).astype(np.int16)


def label_volume() -> np.ndarray:
    """uint8 (X, Y, Z) with classes 0, 1, 2 in blocks."""
    label = np.zeros(XYZ, np.uint8)
    label[1:4, 1:4, :] = 1
    label[4:, 3:, 2:] = 2
    return label


def save(array: np.ndarray, path: Path, zooms=ZOOMS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), path)


def write_task(root: Path, naming: str = "nnunet", channels=("CT",), cases=CASES) -> None:
    """A tiny task: nnU-Net v2 (``<case>_XXXX`` per channel) or the Decathlon's naming (4D for several channels)."""
    if naming == "nnunet":
        meta = {"channel_names": {str(i): c for i, c in enumerate(channels)},
                "labels": {name: i for i, name in enumerate(LABELS)}, "numTraining": len(cases),
                "file_ending": ".nii.gz"}
    else:
        meta = {"modality": {str(i): c for i, c in enumerate(channels)},
                "labels": {str(i): name for i, name in enumerate(LABELS)}, "numTraining": len(cases)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for n, case in enumerate(cases):
        volumes = [hu_volume(10 * n + c) for c in range(len(channels))]
        if naming == "nnunet":
            for c, volume in enumerate(volumes):
                save(volume, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        else:
            save(volumes[0] if len(volumes) == 1 else np.stack(volumes, -1), root / "imagesTr" / f"{case}.nii.gz")
        save(label_volume(), root / "labelsTr" / f"{case}.nii.gz")
    save(hu_volume(99), root / "imagesTs" / ("test_0_0000.nii.gz" if naming == "nnunet" else "test_0.nii.gz"))
    if naming == "msd":  # the Decathlon's archives carry macOS ._ copies; they must be passed over
        (root / "imagesTr" / f"._{cases[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07")


def only_problem(reader_name: str, root: Path, **options) -> str:
    _, found = validate(get_reader(reader_name, root, **options))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("naming", ["nnunet", "msd"])
def test_msd_reader_both_namings(tmp_path, naming):
    write_task(tmp_path, naming)
    reader = get_reader("msd", tmp_path)
    assert reader.class_names == LABELS  # from dataset.json as soon as the reader exists
    cases, found = validate(reader)
    assert found == [] and sorted(c.case_id for c in cases) == CASES
    assert {c.kind for c in cases} == {"volume"}
    assert all(c.files[1] == tmp_path / "labelsTr" / f"{c.case_id}.nii.gz" for c in cases)
    split = reader.split(cases, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 8, "val": 1, "test": 1}
    assert sorted(sum(split.values(), [])) == CASES and split != reader.split(cases, seed=1)
    sample = reader.load(cases[3])
    assert sample.image.dtype == np.float32 and sample.image.shape == XYZ[::-1]
    np.testing.assert_allclose(sample.image, ct_window(hu_volume(30).transpose(2, 1, 0)))  # CT: the HU window
    np.testing.assert_array_equal(sample.label, label_volume().transpose(2, 1, 0))
    assert sample.spacing == ZOOMS[::-1]


def test_orientation_and_spacing(tmp_path):
    i, j, k = np.meshgrid(*(np.arange(n) for n in XYZ), indexing="ij")
    coded = (100 * i + 10 * j + k).astype(np.int16)  # each voxel holds its own (i, j, k)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(coded, np.array([[-0.8, 0, 0, 10], [0, 0.7, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])), path)
    array, spacing, _ = read_nifti(path)
    assert array.shape == (4, 5, 6) and spacing == (2.5, 0.7, 0.8)
    assert array[3, 2, 1] == 100 * 1 + 10 * 2 + 3  # (D, H, W) = (k, j, i)
    ras, ras_spacing, affine = read_nifti(path, "ras")
    assert ras_spacing == (2.5, 0.7, 0.8) and affine[0, 0] > 0
    assert ras[3, 2, 1] == 100 * (6 - 1 - 1) + 10 * 2 + 3  # the i axis ran right to left: flipped


def test_ct_window_and_percentile_values():
    hu = np.array([-1000, -125, 75, 275, 1000], np.int16)
    np.testing.assert_allclose(ct_window(hu), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(ct_window(hu, (-1000, 1000)), [0, 0.4375, 0.5375, 0.6375, 1])
    ramp = np.arange(1001, dtype=np.float64)  # percentiles 0.5 and 99.5 are 5 and 995
    scaled = percentile_scale(ramp, "ramp")
    assert scaled.dtype == np.float32 and scaled[5] == 0 and scaled[995] == 1 and scaled[0] == 0 and scaled[1000] == 1
    np.testing.assert_allclose(scaled[500], 0.5)
    with pytest.raises(DataError, match="const: intensity percentiles"):
        percentile_scale(np.full(10, 3.0), "const")


def test_intensity_defaults_and_options(tmp_path):
    write_task(tmp_path / "mr", channels=("T2",))
    mr = get_reader("msd", tmp_path / "mr")
    case = validate(mr)[0][0]
    raw = hu_volume(0).transpose(2, 1, 0)
    np.testing.assert_allclose(mr.load(case).image, percentile_scale(raw, "x"))  # not CT: percentiles
    wide = get_reader("msd", tmp_path / "mr", intensity="ct", window=[-1000, 1000])
    np.testing.assert_allclose(wide.load(case).image, (raw.astype(np.float32) + 1000) / 2000, atol=1e-6)
    for options, message in (({"intensity": "z"}, "intensity must be ct or percentile"),
                             ({"intensity": "percentile", "window": [0, 1]}, "does not go with"),
                             ({"window": [5, 1]}, "window must be"), ({"percentiles": [1, 101]}, "percentiles must be"),
                             ({"target_spacing": [1, 0, 1]}, "target_spacing"), ({"channel": -1}, "channel must be"),
                             ({"orientation": "lps"}, "orientation must be")):
        with pytest.raises(DataError, match=message):
            get_reader("msd", tmp_path / "mr", **options)


def test_resampling_to_a_target_spacing(tmp_path):
    write_task(tmp_path)
    reader = get_reader("msd", tmp_path, target_spacing=[1.25, 1.4, 1.6])
    sample = reader.load(validate(reader)[0][0])
    assert sample.image.shape == sample.label.shape == (8, 2, 3)  # (4 * 2.5 / 1.25, 5 * 0.7 / 1.4, 6 * 0.8 / 1.6)
    assert sample.spacing == pytest.approx((1.25, 1.75, 1.6))  # the grid keeps the extent: 5 * 0.7 / 2
    assert 0 <= sample.image.min() and sample.image.max() <= 1
    image = np.random.default_rng(0).random((10, 20, 30), dtype=np.float32)
    label = np.zeros((10, 20, 30), np.uint8)
    label[2:8, 5:15, 5:25], label[4:6, 8:12, 10:20] = 1, 2
    out, lab, spacing = resample_volume(image, label, (3.0, 1.0, 1.0), (1.5, 2.0, 2.0))
    assert out.shape == lab.shape == (20, 10, 15) and spacing == (1.5, 2.0, 2.0)
    assert set(np.unique(lab)) == {0, 1, 2} and lab.dtype == np.uint8
    assert resample_volume(image, label, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))[0] is image  # nothing to do


def _bad_tree(root: Path, what: str) -> Path:
    """Break a valid nnU-Net v2 tree in one way; the file the one problem must name."""
    write_task(root, channels=("CT", "T1") if what == "missing_channel" else ("CT",))
    label = root / "labelsTr" / f"{CASES[2]}.nii.gz"
    image = root / "imagesTr" / f"{CASES[2]}_0000.nii.gz"
    if what == "no_label":
        label.unlink()
        return image
    if what == "label_without_image":
        image.unlink()
        return label
    if what == "shape":
        save(np.zeros((6, 5, 3), np.uint8), label)
    elif what == "non_integer":
        save(label_volume() * np.float32(0.5), label)
    elif what == "undeclared_value":
        save(label_volume() * 3, label)  # 3 and 6: dataset.json declares 0, 1, 2
    elif what == "unreadable":
        image.write_bytes(b"not a nifti")
        return image
    elif what == "affine":
        save(label_volume(), label, zooms=(0.8, 0.7, 3.0))
    elif what == "missing_channel":
        (root / "imagesTr" / f"{CASES[2]}_0001.nii.gz").unlink()
        return root / "imagesTr"
    elif what == "misnamed":
        image.rename(root / "imagesTr" / f"{CASES[2]}.nii.gz")
        (root / "labelsTr" / f"{CASES[2]}.nii.gz").unlink()
        return root / "imagesTr" / f"{CASES[2]}.nii.gz"
    elif what == "no_labels_folder":
        for p in (root / "labelsTr").iterdir():
            p.unlink()
        (root / "labelsTr").rmdir()
        return root / "labelsTr"
    return label


@pytest.mark.parametrize("what, expected", [
    ("no_label", "no label; expected"), ("label_without_image", "label without an image"),
    ("shape", "label shape (3, 5, 6) differs from its image's (4, 5, 6)"),
    ("non_integer", "label has non-integral values such as 0.5"),
    ("undeclared_value", "label values [3, 6] are not among the labels of the class names [0, 1, 2]"),
    ("unreadable", "unreadable or truncated NIfTI"), ("affine", "label affine differs from its image's"),
    ("missing_channel", f"case {CASES[2]} lacks {CASES[2]}_0001.nii.gz"),
    ("misnamed", "not named <case>_<XXXX>.nii.gz"), ("no_labels_folder", "folder not found"),
])
def test_msd_validator_names_the_file(tmp_path, what, expected):
    named = _bad_tree(tmp_path, what)
    message = only_problem("msd", tmp_path)
    assert message.startswith(f"{named}: ") and expected in message


@pytest.mark.parametrize("meta, expected", [
    ("{not json", "unreadable dataset.json"),
    ({"labels": {"background": 0, "a": 1}}, "expected one of \"channel_names\" (nnU-Net v2) or \"modality\""),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 2}}, "must number its names 0..1"),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": [1, 2]}}, "region-based labels"),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "file_ending": ".mha"}, "file_ending '.mha'"),
    ({"modality": {"0": "CT"}, "labels": {"0": "background"}}, "declares 1 class"),
])
def test_bad_dataset_json(tmp_path, meta, expected):
    write_task(tmp_path)
    path = tmp_path / "dataset.json"
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    message = only_problem("msd", tmp_path)
    assert message.startswith(f"{path}: ") and expected in message
    (path).unlink()
    assert only_problem("msd", tmp_path).startswith(f"{path}: not found")


def test_channels(tmp_path, caplog):
    write_task(tmp_path / "msd", "msd", channels=("FLAIR", "T1w"))
    caplog.set_level(logging.INFO, logger="rwkvlab.data.readers.msd")
    reader = get_reader("msd", tmp_path / "msd", channel=1)
    cases, found = validate(reader)
    assert found == [] and "2 input channels ['FLAIR', 'T1w']; reading channel 1 (T1w)" in caplog.text
    first = sorted(cases, key=lambda c: c.case_id)[0]
    np.testing.assert_allclose(reader.load(first).image, percentile_scale(hu_volume(1).transpose(2, 1, 0), "x"))
    assert "the channel option 2 is not one of them" in only_problem("msd", tmp_path / "msd", channel=2)
    write_task(tmp_path / "v2", channels=("CT", "CT"))
    reader = get_reader("msd", tmp_path / "v2", channel=1)
    case = validate(reader)[0][0]
    assert case.files[0].name == f"{case.case_id}_0001.nii.gz"


def test_volume_demo_round_trip_and_cli(tmp_path):
    root = tmp_path / "raw"
    assert main(["synthesize3d", "--out", str(root), "--seed", "0"]) == 0
    assert "SYNTHETIC" in (root / "README.md").read_text()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5e6
    cache = tmp_path / "prepared" / "cache.h5"
    assert prepare_dataset("volume_demo", root, (32, 32), [0, 1], cache, tmp_path / "splits", tmp_path / "card")
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.class_names == CLASS_NAMES and len(data.volumes) == 12 and len(data.ids) == 0
    assert {k: len(v) for k, v in data.volume_splits.items()} == {"train": 8, "val": 2, "test": 2}
    assert data.spacings == {vid: SPACING for vid in data.volumes}
    image, label = data.volumes[data.volume_splits["train"][0]]
    assert image.shape == label.shape == SHAPE and image.dtype == np.float32 and label.dtype == np.uint8
    assert (image == 0).any() and (image == 1).any()  # air and bone lie outside the CT window
    assert set(np.unique(label)) == set(range(len(CLASS_NAMES)))
    assert data.volume_splits != load_prepared(cache, tmp_path / "splits" / "seed1.json").volume_splits


def test_synthesize3d_is_deterministic(tmp_path):
    small = {"n_cases": 2, "shape": (8, 16, 16)}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate3d(tmp_path / name, seed, **small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    image = Path("imagesTr/demo_001_0000.nii.gz")
    assert (tmp_path / "a" / image).read_bytes() != (tmp_path / "c" / image).read_bytes()


def write_btcv(root: Path, numbers=(1, 5, 8, 21)) -> None:
    """BTCV's RawData tree: images in HU, labels holding all 14 BTCV values, one Testing image."""
    label = np.arange(np.prod(XYZ)).reshape(XYZ) % 14
    for n in numbers:
        save(hu_volume(n), root / "RawData" / "Training" / "img" / f"img{n:04d}.nii.gz")
        save(label.astype(np.uint8), root / "RawData" / "Training" / "label" / f"label{n:04d}.nii.gz")
    save(hu_volume(0), root / "RawData" / "Testing" / "img" / "img0061.nii.gz")


def test_synapse_3d(tmp_path):
    assert len(TEST_CASES) == 12 and len(TRAIN_CASES) == 18 and not set(TEST_CASES) & set(TRAIN_CASES)
    assert set(synapse_fixture.TEST_CASES) <= set(TEST_CASES) and set(synapse_fixture.TRAIN_CASES) <= set(TRAIN_CASES)
    write_btcv(tmp_path)
    reader = get_reader("synapse_3d", tmp_path)
    assert reader.class_names == get_reader("synapse", tmp_path).class_names
    cases, found = validate(reader)
    assert found == []
    assert reader.split(cases, 0) == {"test": ["case0001", "case0008"], "train": ["case0005", "case0021"]}
    sample = reader.load(next(c for c in cases if c.case_id == "case0005"))
    np.testing.assert_allclose(sample.image, ct_window(hu_volume(5).transpose(2, 1, 0)))
    stored = (np.arange(np.prod(XYZ)).reshape(XYZ) % 14).transpose(2, 1, 0)
    np.testing.assert_array_equal(sample.label, np.vectorize(BTCV_TO_SYNAPSE.get)(stored))
    assert sample.spacing == ZOOMS[::-1]
    assert validate(get_reader("synapse_3d", tmp_path / "RawData"))[1] == []  # the root may be RawData itself
    save(hu_volume(11), tmp_path / "RawData" / "Training" / "img" / "img0011.nii.gz")
    (tmp_path / "RawData" / "Training" / "label" / "label0021.nii.gz").unlink()
    _, found = validate(reader)
    assert [p.split(": ")[0] for p in found] == [str(tmp_path / "RawData" / "Training" / "img" / n)
                                                  for n in ("img0011.nii.gz", "img0021.nii.gz")]
    assert "not one of BTCV's 30 labelled training scans" in found[0] and "no label" in found[1]


def test_acdc_3d_nifti_and_h5(tmp_path):
    acdc.write_nifti(tmp_path / "nifti")
    reader = get_reader("acdc_3d", tmp_path / "nifti")
    cases, found = validate(reader)
    assert found == [] and {c.kind for c in cases} == {"volume"}
    frames = 2 * len(acdc.FRAMES)  # two patients per split
    assert {k: len(v) for k, v in reader.split(cases, 0).items()} == {"train": frames, "val": frames, "test": frames}
    train = next(c for c in cases if c.case_id == "patient031_frame01")
    sample = reader.load(train)
    raw, label = acdc.nifti_arrays(31 * 100 + 1)
    assert sample.image.shape == (acdc.DEPTH, *acdc.SHAPE) and sample.spacing == acdc.NIFTI_ZOOMS[::-1]
    np.testing.assert_allclose(sample.image, (raw - raw.min()) / (raw.max() - raw.min()), rtol=1e-6)
    np.testing.assert_array_equal(sample.label, label)
    val = next(c for c in cases if c.split == "val")  # the same arrays as the 2D reader's volumes
    np.testing.assert_array_equal(sample_of("acdc", tmp_path / "nifti", val.case_id).image, reader.load(val).image)
    resampled = get_reader("acdc_3d", tmp_path / "nifti", target_spacing=[5.0, 1.5, 1.25]).load(train)
    assert resampled.image.shape == (8, *acdc.SHAPE) and resampled.spacing == (5.0, 1.5, 1.25)

    acdc.write(tmp_path / "h5", "ssl4mis_flat")
    cases, found = validate(get_reader("acdc_3d", tmp_path / "h5"))
    assert found == [] and len(cases) == 3 * frames and {c.kind for c in cases} == {"volume"}
    with pytest.raises(DataError, match="has no voxel size, which target_spacing needs"):
        get_reader("acdc_3d", tmp_path / "h5", target_spacing=[5, 1, 1]).load(cases[0])


def sample_of(name: str, root: Path, case_id: str):
    reader = get_reader(name, root)
    return reader.load(next(c for c in reader.scan([]) if c.case_id == case_id))
