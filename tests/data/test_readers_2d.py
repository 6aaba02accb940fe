"""The readers of the 2D binary benchmarks (docs §8) on small fixtures in the published layouts."""

import shutil

import numpy as np
import pytest
from fixtures import busi, cvc, glas, isic2017, kvasir, psvfm
from PIL import Image

from rwkvlab.data.reader import validate
from rwkvlab.data.readers import get_reader
from rwkvlab.data.readers import psvfm as psvfm_reader

# dataset -> (fixture writer, number of cases)
FIXTURES = {
    "busi": (busi.write, 18),
    "cvc_clinicdb": (cvc.write_clinicdb, 20),
    "cvc_colondb": (cvc.write_colondb, 20),
    "kvasir_seg": (kvasir.write, 20),
    "isic2017": (isic2017.write, 13),
    "glas": (glas.write, 27),
    "psvfm": (psvfm.write, 18),
}
# the 8:1:1 sets -> (train, val, test) sizes of their fixture
RANDOM_SPLITS = {"busi": (14, 2, 2), "cvc_clinicdb": (16, 2, 2), "cvc_colondb": (16, 2, 2), "kvasir_seg": (16, 2, 2)}
# the sets whose masks must hold exactly 0 and 255 (the others are thresholded)
EXACT_MASKS = ["busi", "cvc_colondb", "isic2017"]


def written(name, tmp_path):
    """The fixture of ``name`` under ``tmp_path/name`` and a reader over it."""
    root = tmp_path / name
    FIXTURES[name][0](root)
    return root, get_reader(name, root)


def problems(name, root, **options):
    return validate(get_reader(name, root, **options))[1]


def grey(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def save_like(path, array):
    """Overwrite ``path`` with ``array`` in the format its suffix names."""
    Image.fromarray(array).save(path)


def only(found, *needles):
    """The one problem containing every needle."""
    hits = [p for p in found if all(n in p for n in needles)]
    assert len(hits) == 1, f"no single problem with {needles} in {found}"
    return hits[0]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_is_valid(name, tmp_path):
    root, reader = written(name, tmp_path)
    cases, found = validate(reader)
    assert found == []
    assert len(cases) == FIXTURES[name][1]
    assert reader.class_names[0] == "background" and len(reader.class_names) == 2
    sample = reader.load(cases[0])
    assert sample.image.dtype == np.uint8 and sample.image.shape == (*sample.label.shape, 3)
    labels = [reader.load(c).label for c in cases]
    assert set(np.unique(np.concatenate([lab.ravel() for lab in labels]))) == {0, 1}


@pytest.mark.parametrize("name", RANDOM_SPLITS)
def test_random_split_8_1_1(name, tmp_path):
    _, reader = written(name, tmp_path)
    cases, _ = validate(reader)
    ids = sorted(c.case_id for c in cases)
    splits = [reader.split(cases, seed) for seed in (0, 1, 2)]
    for split in splits:
        assert tuple(len(split[s]) for s in ("train", "val", "test")) == RANDOM_SPLITS[name]
        assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert reader.split(list(reversed(cases)), 0) == splits[0]
    assert splits[0] != splits[1] and splits[1] != splits[2] and splits[0] != splits[2]


def test_isic_split_is_official(tmp_path):
    _, reader = written("isic2017", tmp_path)
    cases, _ = validate(reader)
    ids = [f"ISIC_{n:07d}" for n in range(13)]
    expected = {"train": ids[:6], "val": ids[6:9], "test": ids[9:]}
    assert all(reader.split(cases, seed) == expected for seed in (0, 1, 2))
    assert all(c.files[0].parent.name.startswith("ISIC-2017_") and "superpixels" not in c.files[0].name
               for c in cases)


def test_glas_split_official_test_and_seeded_val(tmp_path):
    _, reader = written("glas", tmp_path)
    cases, _ = validate(reader)
    train_ids = sorted(f"train_{n}" for n in range(1, 21))
    test_ids = sorted([f"testA_{n}" for n in range(1, 5)] + [f"testB_{n}" for n in range(1, 4)])
    splits = [reader.split(cases, seed) for seed in (0, 1, 2)]
    for split in splits:
        assert split["test"] == test_ids
        assert len(split["val"]) == 2 and sorted(split["train"] + split["val"]) == train_ids
    assert reader.split(cases, 0) == splits[0]
    assert len({tuple(s["val"]) for s in splits}) == 3


def test_psvfm_split_by_video(tmp_path):
    _, reader = written("psvfm", tmp_path)
    cases, _ = validate(reader)
    assert {c.group for c in cases} == set(psvfm_reader.VIDEOS)
    assert all(c.case_id.startswith(f"{c.group}_") for c in cases)
    split = reader.split(cases, 0)
    videos = {s: sorted({cid[:7] for cid in ids}) for s, ids in split.items()}
    assert videos == {"train": ["anon001", "anon002", "anon003"], "val": ["anon005"], "test": ["anon010", "anon012"]}
    assert reader.split(cases, 1) == reader.split(cases, 2) == split


def test_psvfm_leave_one_video_out_folds(tmp_path):
    _, reader = written("psvfm", tmp_path)
    cases, _ = validate(reader)
    folds = reader.extra_splits(cases)
    assert sorted(folds) == [f"loo_{v}" for v in psvfm_reader.VIDEOS]
    every = sorted(c.case_id for c in cases)
    for video in psvfm_reader.VIDEOS:
        fold = folds[f"loo_{video}"]
        assert {cid[:7] for cid in fold["test"]} == {video} and len(fold["test"]) == psvfm.FRAMES
        assert video not in {cid[:7] for cid in fold["train"]}
        assert sorted(fold["train"] + fold["test"]) == every


def test_psvfm_rgb_masks_binarised_in_any_channel(tmp_path):
    _, reader = written("psvfm", tmp_path)
    case = validate(reader)[0][4]
    with Image.open(case.files[1]) as im:
        assert im.mode == "RGB"
        rgb = np.asarray(im)
    label = reader.load(case).label
    np.testing.assert_array_equal(label, rgb.max(axis=-1) > 0)
    assert label[psvfm.FAINT] == 1 and grey(case.files[1])[psvfm.FAINT] == 0  # grey conversion would lose it


def test_busi_merges_extra_masks_and_reads_rgb(tmp_path):
    root, reader = written("busi", tmp_path)
    cases = {c.case_id: c for c in validate(reader)[0]}
    assert len(cases["benign_2"].files) == 3 and len(cases["malignant_3"].files) == 4
    for cid in ("benign_2", "malignant_3"):
        masks = [grey(f) > 0 for f in cases[cid].files[1:]]
        label = reader.load(cases[cid]).label
        np.testing.assert_array_equal(label, np.logical_or.reduce(masks))
        assert label.sum() > masks[0].sum()  # the extra lesions count
    folder = root / "Dataset_BUSI_with_GT" / "benign"
    with Image.open(folder / "benign (1)_mask.png") as rgb, Image.open(folder / "benign (2)_mask.png") as rgba:
        assert (rgb.mode, rgba.mode) == ("RGB", "RGBA")
    np.testing.assert_array_equal(reader.load(cases["benign_1"]).label, grey(folder / "benign (1)_mask.png") > 0)
    assert all(not reader.load(c).label.any() for cid, c in cases.items() if cid.startswith("normal_"))


def test_busi_without_normal(tmp_path):
    root, _ = written("busi", tmp_path)
    shutil.rmtree(root / "Dataset_BUSI_with_GT" / "normal")
    cases, found = validate(get_reader("busi", root, include_normal=False))
    assert found == [] and len(cases) == 14
    assert not any(c.case_id.startswith("normal") for c in cases)


def test_glas_binarises_instances(tmp_path):
    _, reader = written("glas", tmp_path)
    case = validate(reader)[0][0]
    anno = grey(case.files[1])
    assert len(np.unique(anno)) >= 3
    np.testing.assert_array_equal(reader.load(case).label, anno > 0)


@pytest.mark.parametrize("name", ["kvasir_seg", "cvc_clinicdb"])
def test_lossy_masks_are_thresholded(name, tmp_path):
    _, reader = written(name, tmp_path)
    for case in validate(reader)[0]:
        raw = grey(case.files[1])
        assert not set(np.unique(raw)) <= {0, 255}  # JPEG noise or anti-aliased border values
        np.testing.assert_array_equal(reader.load(case).label, raw > 127)


@pytest.mark.parametrize("name", FIXTURES)
def test_missing_root_shows_expected_tree(name, tmp_path):
    root = tmp_path / "nowhere"
    reader = get_reader(name, root)
    first_line = reader.layout.strip().splitlines()[0]
    found = problems(name, root)
    assert found and all(str(root) in p and "not found" in p and first_line in p for p in found)


@pytest.mark.parametrize("name, folder", [
    ("busi", "Dataset_BUSI_with_GT/malignant"),
    ("cvc_clinicdb", "Ground Truth"),
    ("cvc_colondb", "images"),
    ("kvasir_seg", "masks"),
    ("isic2017", "ISIC-2017_Validation_Part1_GroundTruth"),
    ("psvfm", "anon002/masks"),
])
def test_missing_subfolder(name, folder, tmp_path):
    root, _ = written(name, tmp_path)
    shutil.rmtree(root / folder)
    only(problems(name, root), f"{root / folder}: folder not found")


def test_psvfm_missing_and_unknown_video(tmp_path):
    root, _ = written("psvfm", tmp_path)
    shutil.rmtree(root / "anon010")
    shutil.copytree(root / "anon012", root / "video07")
    (root / "notes").mkdir()
    found = problems("psvfm", root)
    assert len(found) == 3
    only(found, f"{root / 'anon010'}: folder not found", "video 5", "test split")
    only(found, f"{root / 'video07'}: not one of the published video folders anon001")
    only(found, f"{root / 'notes'}: not one of the published video folders")


@pytest.mark.parametrize("name", FIXTURES)
def test_image_without_mask(name, tmp_path):
    root, reader = written(name, tmp_path)
    case = reader.scan([])[1]
    case.files[1].unlink()
    only(problems(name, root), f"{case.files[0]}: no mask; expected {case.files[1].with_suffix('')}")


@pytest.mark.parametrize("name", FIXTURES)
def test_truncated_image(name, tmp_path):
    root, reader = written(name, tmp_path)
    image = reader.scan([])[2].files[0]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    only(problems(name, root), f"{image}: unreadable or truncated image")


@pytest.mark.parametrize("name", FIXTURES)
def test_mask_size_mismatch(name, tmp_path):
    root, reader = written(name, tmp_path)
    mask = reader.scan([])[3].files[1]
    save_like(mask, np.zeros((11, 13), np.uint8))
    only(problems(name, root), f"{mask}: mask is 13x11 (WxH)", "expected the same size")


@pytest.mark.parametrize("name", EXACT_MASKS)
def test_unexpected_mask_values(name, tmp_path):
    root, reader = written(name, tmp_path)
    mask = max(reader.scan([]), key=lambda c: len(c.files)).files[-1]  # for BUSI an extra mask: checked too
    raw = grey(mask).copy()
    raw[0, 0] = 128
    save_like(mask, raw)
    only(problems(name, root), f"{mask}: mask values [128] are outside the declared values [0, 255]")


def copy_kvasir_other_extension(root):
    image = sorted((root / "images").glob("*.jpg"))[0]
    shutil.copy(image, image.with_suffix(".png"))
    return image


def copy_busi_zero_padded(root):
    folder = root / "Dataset_BUSI_with_GT" / "benign"
    shutil.copy(folder / "benign (3).png", folder / "benign (03).png")
    shutil.copy(folder / "benign (3)_mask.png", folder / "benign (03)_mask.png")
    return folder / "benign (3).png"


def copy_isic_train_to_test(root):
    image = root / "ISIC-2017_Training_Data" / "ISIC_0000001.jpg"
    shutil.copy(image, root / "ISIC-2017_Test_v2_Data")
    shutil.copy(root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png",
                root / "ISIC-2017_Test_v2_Part1_GroundTruth")
    return image


@pytest.mark.parametrize("name, duplicate", [("kvasir_seg", copy_kvasir_other_extension),
                                             ("busi", copy_busi_zero_padded),
                                             ("isic2017", copy_isic_train_to_test)])
def test_duplicate_ids(name, duplicate, tmp_path):
    root, _ = written(name, tmp_path)
    original = duplicate(root)
    found = problems(name, root)
    assert len(found) == 1
    assert found[0].startswith("duplicate case id") and str(original) in found[0]
