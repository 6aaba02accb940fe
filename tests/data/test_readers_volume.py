"""Readers of the volumetric and multi-class layouts (docs §8) on fixture folders the tests write:
Synapse, the synthetic Synapse demo, ACDC, GOALS and FUGC."""

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures import acdc, fugc, goals, synapse
from fixtures.synapse import write_h5
from PIL import Image

from rwkvlab.data import DataError, load_prepared, validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data.prepare import prepare_dataset
from rwkvlab.data.readers.acdc import patient_split
from rwkvlab.data.__main__ import main
from rwkvlab.data.readers.synapse_demo import CLASS_NAMES, generate

FIXTURES = {"synapse": synapse, "acdc": acdc, "goals": goals, "fugc": fugc}
COUNTS = {
    "synapse": {"train": len(synapse.TRAIN_CASES) * synapse.SLICES, "test": len(synapse.TEST_CASES)},
    "acdc": {"train": 2 * len(acdc.FRAMES) * acdc.DEPTH, "val": 2 * len(acdc.FRAMES), "test": 2 * len(acdc.FRAMES)},
    "goals": {"train": goals.PER_SPLIT, "val": goals.PER_SPLIT, "test": goals.PER_SPLIT},
    "fugc": {"train": fugc.PER_FOLDER, "unlabelled": fugc.PER_FOLDER, "val": fugc.PER_FOLDER, "test": fugc.PER_FOLDER},
}


def raw(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    FIXTURES[name].write(root)
    return root


def problems(name: str, root: Path) -> list[str]:
    return validate(get_reader(name, root))[1]


def only_problem(name: str, root: Path) -> str:
    found = problems(name, root)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_is_valid(name, tmp_path):
    reader = get_reader(name, raw(name, tmp_path))
    cases, found = validate(reader)
    assert found == []
    split = reader.split(cases, seed=0)
    assert {s: len(ids) for s, ids in split.items()} == COUNTS[name]
    assert sorted(sum(split.values(), [])) == sorted(c.case_id for c in cases)


@pytest.mark.parametrize("name", FIXTURES)
def test_missing_root_shows_the_layout(name, tmp_path):
    reader = get_reader(name, tmp_path / "absent")
    message = only_problem(name, tmp_path / "absent")
    assert message.startswith(f"{tmp_path / 'absent'}: folder not found")
    assert reader.layout_text() in message


def test_synapse_cases_and_arrays(tmp_path):
    root = raw("synapse", tmp_path)
    reader = get_reader("synapse", root)
    cases = {c.case_id: c for c in reader.scan([])}
    assert reader.split(list(cases.values()), 0)["test"] == list(synapse.TEST_CASES)
    train = [c for c in cases.values() if c.split == "train"]
    assert {c.kind for c in train} == {"slice"} and {c.group for c in train} == set(synapse.TRAIN_CASES)
    assert cases["case0006_slice002"].files == (root / "train_npz" / "case0006_slice002.npz",)

    sample = reader.load(cases["case0006_slice002"])
    image, label = synapse.slice_arrays(1 * synapse.SLICES + 2)
    assert sample.image.dtype == np.float32 and sample.image.shape == synapse.SHAPE
    np.testing.assert_array_equal(sample.image, image)
    assert sample.label.dtype == np.uint8 and np.array_equal(sample.label, label)  # float labels -> uint8

    volume = reader.load(cases["case0002"])
    assert cases["case0002"].kind == "volume" and cases["case0002"].group == "case0002"
    assert volume.image.shape == volume.label.shape == (synapse.DEPTH, *synapse.SHAPE)
    assert volume.image.dtype == np.float32 and 0 <= volume.image.min() and volume.image.max() <= 1
    assert volume.label.dtype == np.uint8 and set(np.unique(volume.label)) == set(range(synapse.NUM_CLASSES))


def test_synapse_ignores_unlisted_files(tmp_path):
    root = raw("synapse", tmp_path)
    (root / "train_npz" / "case0099_slice000.npz").write_bytes(b"not listed, not read")
    assert problems("synapse", root) == []


def test_synapse_missing_list_file(tmp_path):
    root = raw("synapse", tmp_path)
    (root / "lists_Synapse" / "test_vol.txt").unlink()
    assert only_problem("synapse", root).startswith(f"{root / 'lists_Synapse' / 'test_vol.txt'}: list file not found")


def test_synapse_listed_slice_missing(tmp_path):
    root = raw("synapse", tmp_path)
    (root / "train_npz" / "case0005_slice001.npz").unlink()
    message = only_problem("synapse", root)
    assert message.startswith(f"{root / 'train_npz' / 'case0005_slice001.npz'}: listed in")
    assert "train.txt (line 2)" in message


def test_synapse_bad_list_entries(tmp_path):
    root = raw("synapse", tmp_path)
    with open(root / "lists_Synapse" / "test_vol.txt", "a") as f:
        f.write("case0005\nvolume7\n")
    (root / "test_vol_h5" / "case0005.npy.h5").write_bytes((root / "test_vol_h5" / "case0001.npy.h5").read_bytes())
    found = problems("synapse", root)
    assert len(found) == 2
    assert "line 4: 'volume7' is not a name like case<XXXX>" in found[0]
    assert "case0005 is listed in both train.txt and test_vol.txt" in found[1]


def test_synapse_unreadable_files(tmp_path):
    root = raw("synapse", tmp_path)
    npz, h5 = root / "train_npz" / "case0005_slice000.npz", root / "test_vol_h5" / "case0001.npy.h5"
    for path in (npz, h5):
        path.write_bytes(path.read_bytes()[:200])
    found = problems("synapse", root)
    assert [m.split(": ")[0] for m in found] == [str(npz), str(h5)]
    assert all("unreadable or truncated" in m for m in found)
    reader = get_reader("synapse", root)
    with pytest.raises(DataError, match=f"^{re.escape(str(npz))}: unreadable or truncated"):
        reader.load(next(c for c in reader.scan([]) if c.files == (npz,)))


def test_synapse_missing_key(tmp_path):
    root = raw("synapse", tmp_path)
    path = root / "train_npz" / "case0005_slice000.npz"
    np.savez(path, image=np.zeros(synapse.SHAPE, np.float32))
    assert only_problem("synapse", root) == (f"{path}: missing array(s) ['label']; found ['image'], "
                                             f"expected ['image', 'label']")


@pytest.mark.parametrize("label_value, expected", [
    (9, "label values [9] are outside the classes 0..8"),
    (-1, "label values [-1] are outside the classes 0..8"),
    (1.5, "label has non-integral values such as 1.5; expected class indices 0..8"),
])
def test_synapse_bad_labels(tmp_path, label_value, expected):
    root = raw("synapse", tmp_path)
    path = root / "test_vol_h5" / "case0002.npy.h5"
    with h5py.File(path, "a") as h5:
        h5["label"][0, 0, 0] = label_value
    assert only_problem("synapse", root) == f"{path}: {expected}"


def test_synapse_image_outside_unit_range(tmp_path):
    root = raw("synapse", tmp_path)
    path = root / "train_npz" / "case0010_slice003.npz"
    image, label = synapse.slice_arrays(0)
    np.savez(path, image=image * 255, label=label)
    message = only_problem("synapse", root)
    assert message.startswith(f"{path}: image values span [") and "expected [0, 1]" in message


def test_synapse_shape_mismatch(tmp_path):
    root = raw("synapse", tmp_path)
    path = root / "train_npz" / "case0005_slice003.npz"
    image, label = synapse.slice_arrays(0)
    np.savez(path, image=image, label=label[:, :-1])
    assert only_problem("synapse", root) == f"{path}: label shape (64, 63) differs from image shape (64, 64)"


def test_acdc_split_by_patient_number(tmp_path):
    assert [patient_split(p) for p in (0, 1, 20, 21, 30, 31, 100, 101)] == [
        None, "test", "test", "val", "val", "train", "train", None]
    reader = get_reader("acdc", raw("acdc", tmp_path))
    cases = reader.scan([])
    for split, patients in acdc.PATIENTS.items():
        chosen = [c for c in cases if c.split == split]
        assert {c.group for c in chosen} == {f"patient{p:03d}" for p in patients}
        assert {c.kind for c in chosen} == {"slice" if split == "train" else "volume"}
    assert "patient031_frame12_slice_3" in reader.split(cases, 0)["train"]
    assert reader.split(cases, 0)["test"] == ["patient001_frame01", "patient001_frame12",
                                              "patient002_frame01", "patient002_frame12"]


def test_acdc_arrays(tmp_path):
    reader = get_reader("acdc", raw("acdc", tmp_path))
    cases = {c.case_id: c for c in reader.scan([])}
    image, label = acdc.volume_arrays(22 * 100 + 12)
    volume = reader.load(cases["patient022_frame12"])
    assert volume.image.dtype == np.float32 and volume.image.shape == (acdc.DEPTH, *acdc.SHAPE)
    np.testing.assert_array_equal(volume.image, image)
    assert volume.label.dtype == np.uint8 and np.array_equal(volume.label, label)
    piece = reader.load(cases["patient032_frame01_slice_2"])
    assert piece.image.shape == piece.label.shape == acdc.SHAPE
    assert set(np.unique(piece.label)) == {0, 1, 2, 3}


def test_acdc_layout_problems(tmp_path):
    root = raw("acdc", tmp_path)
    for path in (root / "ACDC_training_slices").glob("patient032_*"):
        path.unlink()
    write_h5(root / "ACDC_training_volumes" / "patient101_frame01.h5", image=np.zeros((1, 2, 2)))
    write_h5(root / "ACDC_training_volumes" / "patient1_frame01.h5", image=np.zeros((1, 2, 2)))
    found = problems("acdc", root)
    assert len(found) == 3
    assert found[0].startswith(f"{root / 'ACDC_training_volumes' / 'patient101_frame01.h5'}: patient 101 is not")
    assert found[1].startswith(f"{root / 'ACDC_training_volumes' / 'patient1_frame01.h5'}: unexpected file name")
    assert found[2].startswith(f"{root / 'ACDC_training_slices'}: no slice files of patient032")


def test_acdc_missing_folder(tmp_path):
    root = raw("acdc", tmp_path)
    for path in (root / "ACDC_training_volumes").iterdir():
        path.unlink()
    (root / "ACDC_training_volumes").rmdir()
    assert only_problem("acdc", root).startswith(f"{root / 'ACDC_training_volumes'}: folder not found; expected")


@pytest.mark.parametrize("layout", acdc.LAYOUTS)
def test_acdc_published_layouts(tmp_path, layout):
    root = tmp_path / "acdc"
    acdc.write(root, layout)
    reader = get_reader("acdc", root)
    cases, found = validate(reader)
    assert found == []
    split = reader.split(cases, 0)
    assert {s: len(ids) for s, ids in split.items()} == COUNTS["acdc"]
    first = 0 if layout == "wsl4mis" else 1
    assert f"{acdc.frame_name(31, 1, layout)}_slice_{first}" in split["train"]
    assert split["test"] == sorted(acdc.frame_name(p, k, layout) for p in (1, 2) for k in (0, 1))
    case = next(c for c in cases if c.case_id == acdc.frame_name(22, 1, layout))
    image, label = acdc.volume_arrays(22 * 100 + acdc.FRAMES[1])
    volume = reader.load(case)
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.label, label)
    cache = tmp_path / "prepared" / "cache.h5"
    assert prepare_dataset("acdc", root, (32, 32), [0], cache, tmp_path / "splits", tmp_path / "card")
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert len(data.splits["train"]) == COUNTS["acdc"]["train"] and len(data.volumes) == 8


def test_acdc_both_layouts(tmp_path):
    root = tmp_path / "acdc"
    acdc.write(root, "wsl4mis")
    acdc.write(root, "ssl4mis")
    assert only_problem("acdc", root).startswith(f"{root}: holds both WSL4MIS's ACDC_training_slices/ and "
                                                 f"SSL4MIS's data/")


def test_acdc_no_layout(tmp_path):
    (tmp_path / "acdc" / "patients").mkdir(parents=True)
    message = only_problem("acdc", tmp_path / "acdc")
    assert message.startswith(f"{tmp_path / 'acdc'}: neither ACDC_training_slices/ + ACDC_training_volumes/ "
                              f"(WSL4MIS) nor data/ (SSL4MIS) nor training/ (the NIfTI release) found")


def test_acdc_flat_misnamed_file(tmp_path):
    root = tmp_path / "acdc"
    acdc.write(root, "ssl4mis_flat")
    bad = root / "data" / "patient031_frame01_slice1.h5"
    write_h5(bad, image=np.zeros(acdc.SHAPE, np.float32))
    assert only_problem("acdc", root).startswith(
        f"{bad}: unexpected file name; expected patient<XXX>_frame<YY>_slice_<Z>.h5 or patient<XXX>_frame<YY>.h5")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_acdc_volume_with_nan_or_inf(tmp_path, value):
    root = raw("acdc", tmp_path)
    path = root / "ACDC_training_volumes" / "patient002_frame12.h5"
    image, label = acdc.volume_arrays(0)
    image[1, 2, 3] = value
    write_h5(path, image=image, label=label)
    assert only_problem("acdc", root) == f"{path}: image has NaN or infinite values, expected intensities in [0, 1]"


def test_acdc_bad_files(tmp_path):
    root = raw("acdc", tmp_path)
    truncated = root / "ACDC_training_volumes" / "patient001_frame01.h5"
    truncated.write_bytes(truncated.read_bytes()[:300])
    no_label = root / "ACDC_training_slices" / "patient031_frame01_slice_0.h5"
    write_h5(no_label, image=np.zeros(acdc.SHAPE, np.float32))
    out_of_range = root / "ACDC_training_volumes" / "patient021_frame12.h5"
    image, label = acdc.volume_arrays(0)
    write_h5(out_of_range, image=image, label=label + 1)
    found = problems("acdc", root)
    assert len(found) == 3
    assert found[0].startswith(f"{truncated}: unreadable or truncated")
    assert found[1].startswith(f"{out_of_range}: label values [4] are outside the classes 0..3")
    assert found[2].startswith(f"{no_label}: missing array(s) ['label']")


def test_goals_grey_levels(tmp_path):
    root = raw("goals", tmp_path)
    reader = get_reader("goals", root)
    cases = {c.case_id: c for c in reader.scan([])}
    assert cases["val_0102"].files == (root / "Validation" / "Image" / "0102.png",
                                       root / "Validation" / "Layer_Masks" / "0102.png")
    sample = reader.load(cases["test_0203"])
    assert sample.image.dtype == np.uint8 and sample.image.shape == (*goals.SHAPE, 3)
    expected = np.vectorize(goals.CLASS_OF_LEVEL.get)(goals.mask())
    assert sample.label.dtype == np.uint8 and np.array_equal(sample.label, expected)
    assert set(np.unique(sample.label)) == {0, 1, 2, 3}


def test_goals_unexpected_grey_level(tmp_path):
    root = raw("goals", tmp_path)
    path = root / "Train" / "Layer_Masks" / "0003.png"
    mask = goals.mask()
    mask[0, 0] = 40
    Image.fromarray(mask).save(path)
    assert only_problem("goals", root) == (f"{path}: mask values [40] are outside the declared values "
                                           f"[0, 80, 160, 255]")


def test_goals_only_train(tmp_path):
    root = tmp_path / "goals"
    goals.write(root, folders=("Train",))
    reader = get_reader("goals", root)
    cases, found = validate(reader)
    assert found == []  # validation and test are separate downloads
    assert reader.split(cases, 0) == {"train": [f"train_{i:04d}" for i in range(1, goals.PER_SPLIT + 1)]}


def test_goals_without_training_folder(tmp_path):
    root = tmp_path / "goals"
    goals.write(root, folders=("Validation",))
    message = only_problem("goals", root)
    assert message.startswith(f"{root}: no training folder (tried Train/Image, GOALS2022-Train/Train/Image)")


@pytest.mark.parametrize("inner", ["", "GOALS2022-Train"])
def test_goals_as_the_archives_unpack(tmp_path, inner):
    root = tmp_path / "goals"
    goals.write_release(root)
    reader = get_reader("goals", root / inner)
    cases, found = validate(reader)
    assert found == []
    train = [f"train_{i:04d}" for i in range(1, goals.PER_SPLIT + 1)]
    val = [f"val_{i:04d}" for i in range(101, 101 + goals.PER_SPLIT)]
    assert reader.split(cases, 0) == ({"train": train, "val_unlabelled": val} if not inner else {"train": train})
    by_id = {c.case_id: c for c in cases}
    assert by_id["train_0001"].files[1] == root / "GOALS2022-Train" / "Train" / "Layer_Masks" / "0001.png"
    if not inner:
        unlabelled = by_id["val_0101"]
        assert not unlabelled.labelled
        assert unlabelled.files == (root / "GOALS2022-Validation" / "GOALS2022-Validation" / "Image" / "0101.png",)
        assert reader.load(unlabelled).label is None


def test_goals_two_copies_of_a_split(tmp_path):
    root = tmp_path / "goals"
    goals.write_release(root)
    goals.write(root, folders=("Train",))
    assert only_problem("goals", root) == (f"{root / 'Train'}, {root / 'GOALS2022-Train' / 'Train'}: several copies "
                                           f"of the same folder; keep one of them")


def test_goals_release_prepares_unlabelled_validation(tmp_path):
    root = tmp_path / "goals"
    goals.write_release(root)
    cache = tmp_path / "prepared" / "cache.h5"
    assert prepare_dataset("goals", root, (32, 32), [0], cache, tmp_path / "splits", tmp_path / "card")
    data = load_prepared(cache, tmp_path / "splits" / "seed0.json")
    assert sorted(data.splits) == ["train", "val_unlabelled"]
    assert data.labelled[data.splits["train"]].all() and not data.labelled[data.splits["val_unlabelled"]].any()


def test_goals_mask_size_mismatch(tmp_path):
    root = raw("goals", tmp_path)
    path = root / "Test" / "Layer_Masks" / "0201.png"
    Image.fromarray(goals.mask()[:, :-2]).save(path)
    assert only_problem("goals", root).startswith(f"{path}: mask is 62x48 (WxH) but its image is 64x48")


def test_goals_image_without_mask(tmp_path):
    root = raw("goals", tmp_path)
    (root / "Train" / "Layer_Masks" / "0005.png").unlink()
    assert only_problem("goals", root).startswith(f"{root / 'Train' / 'Image' / '0005.png'}: no mask")


def test_fugc_unlabelled_cases(tmp_path):
    root = raw("fugc", tmp_path)
    reader = get_reader("fugc", root)
    cases = reader.scan([])
    unlabelled = [c for c in cases if c.split == "unlabelled"]
    assert len(unlabelled) == fugc.PER_FOLDER and not any(c.labelled for c in unlabelled)
    assert all(c.labelled for c in cases if c.split != "unlabelled")
    sample = reader.load(unlabelled[0])
    assert sample.label is None and sample.image.dtype == np.uint8 and sample.image.shape == (*fugc.SHAPE, 3)
    labelled = reader.load(next(c for c in cases if c.case_id == "val_0201"))
    assert labelled.label.dtype == np.uint8 and np.array_equal(labelled.label, fugc.label())


def test_fugc_rejects_grey_level_labels(tmp_path):
    root = raw("fugc", tmp_path)
    path = root / "test" / "labels" / "0302.png"
    Image.fromarray(fugc.label() * 127).save(path)
    assert only_problem("fugc", root) == f"{path}: mask values [127, 254] are outside the declared values [0, 1, 2]"


def test_fugc_missing_unlabelled_folder(tmp_path):
    root = raw("fugc", tmp_path)
    folder = root / "train" / "unlabeled_data" / "images"
    for path in folder.iterdir():
        path.unlink()
    assert only_problem("fugc", root).startswith(f"{folder}: folder is empty; expected layout")


@pytest.mark.parametrize("inner", ["", "FUGC (Dataset)", "FUGC (Dataset)/dataset"])
def test_fugc_as_the_archive_unpacks(tmp_path, inner):
    root = tmp_path / "fugc"
    fugc.write_release(root)
    reader = get_reader("fugc", root / inner)
    cases, found = validate(reader)
    assert found == []
    counts = {s: len(ids) for s, ids in reader.split(cases, 0).items()}
    assert counts == {"train": fugc.PER_FOLDER, "unlabelled": fugc.PER_FOLDER, "val": fugc.PER_FOLDER,
                      "test_unlabelled": fugc.PER_FOLDER}
    test = [c for c in cases if c.split == "test_unlabelled"]
    assert not any(c.labelled for c in test) and test[0].files[0].parent == root / fugc.RELEASE / "test" / "images"


def test_fugc_without_train_folder(tmp_path):
    (tmp_path / "fugc" / "other").mkdir(parents=True)
    message = only_problem("fugc", tmp_path / "fugc")
    assert message.startswith(f"{tmp_path / 'fugc'}: no train/ folder (tried ./train, dataset/train, "
                              f"FUGC (Dataset)/dataset/train)")


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory):
    """The default synthetic set twice with seed 0 (once through the CLI) and once with seed 1."""
    base = tmp_path_factory.mktemp("synapse_demo")
    generate(base / "a", seed=0)
    main(["synthesize", "--out", str(base / "b"), "--seed", "0"])
    generate(base / "c", seed=1)
    return base / "a", base / "b", base / "c"


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synapse_demo_is_deterministic(demo_sets):
    a, b, c = demo_sets
    assert file_bytes(a) == file_bytes(b)
    assert file_bytes(a).keys() == file_bytes(c).keys() and file_bytes(a) != file_bytes(c)
    assert "SYNTHETIC" in (a / "README.md").read_text()


def test_synapse_demo_reads_as_synapse(demo_sets):
    reader = get_reader("synapse_demo", demo_sets[0])
    assert reader.class_names == CLASS_NAMES and "SYNTHETIC" in reader.description
    cases, found = validate(reader)
    assert found == []
    split = reader.split(cases, 0)
    assert split["test"] == ["case0007", "case0008"] and len(split["train"]) == 6 * 12
    every_class = set(range(len(CLASS_NAMES)))
    train = np.stack([reader.load(c).label for c in cases if c.kind == "slice"])
    assert train.shape == (72, 96, 96) and set(np.unique(train)) == every_class
    for case in (c for c in cases if c.kind == "volume"):
        volume = reader.load(case)
        assert volume.image.shape == (12, 96, 96) and volume.image.dtype == np.float32
        assert 0 <= volume.image.min() and volume.image.max() <= 1
        assert set(np.unique(volume.label)) == every_class
