"""No command run by hand changes the study: after a study's outputs are in place, every command line (train,
pretrain, erf, predict, evaluate, export) and explore's ``try_setting`` writes only under its ``--out`` or the
ad-hoc root ``data/adhoc/``, and nothing it writes lies under a path that a stage of ``dvc.yaml`` declares as a
dependency or an output (so ``dvc status`` stays as it was)."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rwkvlab import config, paths
from rwkvlab.data.cache import prepare
from rwkvlab.data.readers import get_reader

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = ["--set", "train.recipes.demo.epochs=1", "--set", "train.recipes.ablate_demo.epochs=1"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) by its path relative to ``root`` -> its content's hash."""
    files = {}
    for folder, dirs, names in os.walk(root):
        for name in names:
            file = Path(folder) / name
            if not file.is_symlink():
                files[file.relative_to(root).as_posix()] = hashlib.sha1(file.read_bytes()).hexdigest()
    return files


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {f for f in before.keys() | after.keys() if before.get(f) != after.get(f)}


def under(file: str, folder: str) -> bool:
    return file == folder or file.startswith(folder.rstrip("/") + "/")


@pytest.fixture(scope="module")
def declared() -> list[str]:
    """Every path that a stage of the project's ``dvc.yaml`` depends on or writes, as DVC itself resolves them."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return sorted({Path(item.def_path).as_posix() for stage in repo.index.stages
                       for item in (*stage.deps, *stage.outs)})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A project folder after a study: the params file, the demo set prepared (64 x 64, split 0), the study's
    committed metrics and reports, and the stage ``train@demo-unet`` trained for one epoch by its own path."""
    from rwkvlab.train import launch

    proj = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    (proj / "data").mkdir()
    (proj / "data" / "demo").symlink_to(ROOT / "data" / "demo")
    p = config.load(proj / "params.yaml")
    prepare(get_reader("demo", ROOT / "data" / "demo"), (64, 64), paths.cache(p, "demo"), paths.splits_dir(p, "demo"),
            [0])
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for file in tracked:  # the study's metrics, tables and figures as committed
        (proj / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / file, proj / file)
    launch(config.load(proj / "params.yaml", **{"train.recipes.demo.epochs": 1}), "demo-unet", 0)
    assert (paths.run_dir(p, "demo-unet", 0) / "best.pt").is_file()
    return proj


def image_folder(root: Path) -> Path:
    """A two-class ImageFolder of 32 x 32 PNGs (pretraining's input)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for k in range(n):
                img = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(root / split / f"c{c}" / f"{k}.png")
    return root


def explore(try_setting, p) -> int:
    try_setting(p, {"skips": 1}, epochs=1)
    return 0


def test_no_command_changes_the_study(study, declared, tmp_path, monkeypatch, capsys):
    from rwkvlab import erf, evaluate, export, pretrain, predict, train
    from rwkvlab.report.explore import try_setting

    monkeypatch.chdir(study)
    params = ["--params", str(study / "params.yaml")]
    adhoc_train = "data/adhoc/train/demo-rwkv_unet_t/seed0/best.pt"
    commands = {  # name -> (the call, where it may write)
        "train ad hoc": (lambda: train.main(["--dataset", "demo", "--model", "rwkv_unet_t", *params, *EPOCHS]),
                         "data/adhoc/train"),
        "train a configured run": (lambda: train.main(["--run", "demo-unet", *params, *EPOCHS, "--out", "mine/train"]),
                                   "mine/train"),
        "pretrain": (lambda: pretrain.main(["--data", str(image_folder(tmp_path / "images")), "--model", "rwkv_enc_t",
                                            "--epochs", "1", "--batch-size", "4", "--img-size", "32", *params]),
                     "data/adhoc/pretrain"),
        "erf": (lambda: erf.main(["--model", "rwkv_unet_t", "--checkpoint", adhoc_train, "--images", "data/demo/images",
                                  "--size", "64", "64", "--n", "2", "--out", "mine/erf", *params]), "mine/erf"),
        "predict": (lambda: predict.main(["--checkpoint", adhoc_train, "--input", "data/demo/images/ISIC_0024340.jpg",
                                          "--out", "mine/predict"]), "mine/predict"),
        "evaluate": (lambda: evaluate.main(["--checkpoint", adhoc_train, "--dataset", "demo", "--out", "mine/eval",
                                            *params]), "mine/eval"),
        "export": (lambda: export.main([adhoc_train, "--format", "torchscript", "--out", "mine/t.ts"]),
                   "mine/t.ts"),
        "try_setting": (lambda: explore(try_setting, config.load(study / "params.yaml")), "data/adhoc/explore"),
    }
    for name, (call, allowed) in commands.items():
        before = snapshot(study)
        assert call() == 0, name
        written = changed(before, snapshot(study))
        assert written, f"{name} wrote nothing: the check would pass vacuously"
        assert all(under(f, allowed) for f in written), (name, sorted(f for f in written if not under(f, allowed)))
        touched = sorted(f for f in written for d in declared if under(f, d))
        assert not touched, (name, touched)  # a stage's dep or out: dvc status would change
    capsys.readouterr()


def test_the_adhoc_root_is_ignored_by_git_and_outside_every_stage(declared):
    assert all(not under("data/adhoc/x", d) and not under(d, "data/adhoc") for d in declared)
    ignored = subprocess.run(["git", "check-ignore", "data/adhoc/train/x/seed0/last.pt"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 0, "data/adhoc/ is not git-ignored"
