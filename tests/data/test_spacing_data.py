"""Voxel spacing from the readers through the cache (HD95 in mm, docs §7), ACDC's NIfTI release, and the
prepare stage's size check, which no longer assumes a model's size rule."""

import h5py
import nibabel as nib
import numpy as np
import pytest
from fixtures import acdc, synapse

from rwkvlab.data import load_prepared, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data.cache import prepare
from rwkvlab.data.prepare import prepare_dataset
from rwkvlab.data.readers.synapse_demo import SPACING, generate

# NIfTI stores (x, y, z) = (W, H, D): the cached (D, H, W) volume's spacing is the header's zooms reversed.
ACDC_SPACING = acdc.NIFTI_ZOOMS[::-1]


def expected_frame(patient: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """SSL4MIS's conversion of a fixture frame, in float64 and independently of the reader: min-max, then float32."""
    raw, label = acdc.nifti_arrays(patient * 100 + frame)
    raw = raw.astype(np.float64)
    return ((raw - raw.min()) / (raw.max() - raw.min())).astype(np.float32), label


@pytest.fixture
def nifti_root(tmp_path):
    root = tmp_path / "acdc"
    acdc.write_nifti(root)
    return root


def test_acdc_nifti_header_zooms_in_array_axis_order(nifti_root):
    path = nifti_root / "training" / "patient022" / "patient022_frame12.nii.gz"
    assert nib.load(path).shape == (acdc.SHAPE[1], acdc.SHAPE[0], acdc.DEPTH)  # the file really is (W, H, D)
    reader = get_reader("acdc", nifti_root)
    cases, problems = validate(reader)
    assert problems == []
    split = reader.split(cases, 0)
    assert {s: len(ids) for s, ids in split.items()} == {"train": 2 * len(acdc.FRAMES) * acdc.DEPTH,
                                                         "val": 4, "test": 4}
    assert split["val"] == sorted(f"patient{p:03d}_frame{f:02d}" for p in (21, 22) for f in acdc.FRAMES)
    volume = reader.load(next(c for c in cases if c.case_id == "patient022_frame12"))
    image, label = expected_frame(22, 12)
    assert volume.image.shape == (acdc.DEPTH, *acdc.SHAPE) and volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.label, label)
    assert volume.spacing == ACDC_SPACING == (10.0, 1.5, 1.25)
    piece = reader.load(next(c for c in cases if c.case_id == "patient031_frame01_slice_2"))
    image, label = expected_frame(31, 1)
    np.testing.assert_array_equal(piece.image, image[2])  # scaled by the whole frame's range, not the slice's
    np.testing.assert_array_equal(piece.label, label[2])
    assert piece.spacing is None


def test_acdc_nifti_spacing_reaches_prepared(nifti_root, tmp_path):
    cache = tmp_path / "prepared" / "acdc.h5"
    assert prepare_dataset("acdc", nifti_root, (32, 32), [0], cache, tmp_path / "splits", tmp_path / "card")
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert sorted(data.spacings) == sorted(data.volumes) and len(data.volumes) == 8
    assert set(data.spacings.values()) == {ACDC_SPACING}
    image, label = expected_frame(1, 12)
    np.testing.assert_array_equal(data.volumes["patient001_frame12"][0], image)
    np.testing.assert_array_equal(data.volumes["patient001_frame12"][1], label)


def test_acdc_nifti_problems(nifti_root):
    folder = nifti_root / "training" / "patient021"
    (folder / "patient021_frame12_gt.nii.gz").unlink()
    (folder / "patient021_frame1.nii.gz").write_bytes(b"")
    reader = get_reader("acdc", nifti_root)
    cases, problems = validate(reader)
    assert sorted(problems) == sorted([
        f"{folder / 'patient021_frame12.nii.gz'}: no label; expected {folder / 'patient021_frame12_gt.nii.gz'}",
        f"{folder / 'patient021_frame1.nii.gz'}: unexpected file name; expected patient<XXX>_frame<YY>.nii.gz and "
        f"patient<XXX>_frame<YY>_gt.nii.gz; {reader.expected()}"])
    assert problems[[p.startswith(str(folder / "patient021_frame12")) for p in problems].index(True)].case == \
        "patient021_frame12"


def test_acdc_nifti_constant_frame(nifti_root):
    path = nifti_root / "training" / "patient002" / "patient002_frame01.nii.gz"
    nib.save(nib.Nifti1Image(np.full((acdc.SHAPE[1], acdc.SHAPE[0], acdc.DEPTH), 7, np.int16), np.eye(4)), path)
    _, problems = validate(get_reader("acdc", nifti_root))
    assert problems == [f"{path}: image intensities span [7, 7], expected finite, non-constant values to scale "
                        f"to [0, 1]"]


def test_acdc_nifti_and_h5_layouts_together(nifti_root):
    acdc.write(nifti_root, "wsl4mis")
    _, problems = validate(get_reader("acdc", nifti_root))
    assert problems == [f"{nifti_root}: holds ACDC_training_slices/, ACDC_training_volumes/, training/; "
                        f"keep one layout"]


def test_acdc_nifti_rereleased_under_database(tmp_path):
    root = tmp_path / "acdc"
    acdc.write_nifti(root, "database/training")
    cases, problems = validate(get_reader("acdc", root))
    assert problems == [] and len(cases) == 2 * len(acdc.FRAMES) * acdc.DEPTH + 8


def test_synapse_demo_states_its_spacing(tmp_path):
    generate(tmp_path / "demo", seed=0, n_train=1, n_test=2, depth=4, size=32)
    cache = tmp_path / "demo.h5"
    prepare(get_reader("synapse_demo", tmp_path / "demo"), (32, 32), cache, tmp_path / "splits", [0])
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.spacings == {"case0002": SPACING, "case0003": SPACING}
    assert "5.0 x 4.0 x 4.0 mm" in (tmp_path / "demo" / "README.md").read_text()


def test_synapse_without_spacing_and_with_a_bad_one(tmp_path):
    root = tmp_path / "synapse"
    synapse.write(root)
    reader = get_reader("synapse", root)
    cases, problems = validate(reader)
    assert problems == [] and all(reader.load(c).spacing is None for c in cases if c.kind == "volume")
    bad = root / "test_vol_h5" / "case0002.npy.h5"
    with h5py.File(bad, "a") as h5:
        h5["spacing"] = np.array([3.0, 0.0, 0.7])
    assert validate(reader)[1] == [f"{bad}: spacing [3.0, 0.0, 0.7] is not three positive finite numbers "
                                   f"(mm along the volume's D, H, W axes)"]


def test_cache_without_spacings_reads_as_none(tmp_path):
    root = tmp_path / "synapse"
    synapse.write(root)
    for case in synapse.TEST_CASES[:1]:
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "a") as h5:
            h5["spacing"] = np.array([2.5, 0.75, 0.75])
    cache = tmp_path / "synapse.h5"
    prepare(get_reader("synapse", root), (32, 32), cache, tmp_path / "splits", [0])
    split = tmp_path / "splits" / "seed0.json"
    assert load_prepared(cache, split).spacings == {synapse.TEST_CASES[0]: (2.5, 0.75, 0.75)}
    with h5py.File(cache, "r") as f:
        np.testing.assert_array_equal(f["volume_spacings"][1], [np.nan] * 3)
    with h5py.File(cache, "a") as f:  # a cache as rwkvlab wrote it before spacings
        del f["volume_spacings"]
    old = load_prepared(cache, split)
    assert old.spacings == {} and sorted(old.volumes) == sorted(synapse.TEST_CASES)


def test_prepare_takes_any_positive_size(tmp_path):
    root = tmp_path / "synapse"
    synapse.write(root)
    reader = get_reader("synapse", root)
    cache = prepare(reader, (96, 120), tmp_path / "s.h5", tmp_path / "splits", [0])
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert data.images.shape[1:3] == (96, 120) and data.masks.shape[1:] == (96, 120)
    with pytest.raises(ValueError, match=r"prepare.image_size must be two positive integers \(H, W\), got 0x120"):
        prepare(reader, (0, 120), tmp_path / "t.h5", tmp_path / "splits", [0])


def test_check_spacing_message():
    from rwkvlab.data._base import DataError, check_spacing

    assert check_spacing(np.array([3, 1, 1]), "f") == (3.0, 1.0, 1.0)
    for bad in ([1.0, 2.0], [1.0, np.inf, 1.0], [True, True, True], [-1.0, 1.0, 1.0]):
        with pytest.raises(DataError, match=r"^f: spacing .* is not three positive finite numbers"):
            check_spacing(bad, "f")

