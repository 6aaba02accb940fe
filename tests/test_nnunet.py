"""RWKV-UNet inside nnU-Net v2 (docs §24): the plans' network, the trainers found through nnUNet_extTrainer, and the
whole path through nnU-Net's own command lines on a tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from rwkvlab.data import DataError  # noqa: E402
from rwkvlab.data.files import read_nifti  # noqa: E402
from rwkvlab.data.readers.volume_demo import generate3d  # noqa: E402
from rwkvlab.nnunet import steps  # noqa: E402
from rwkvlab.nnunet.network import architecture, rwkv_unet, stage_strides  # noqa: E402

# nnU-Net's configuration entries as its planner writes them (the parts the network reads)
ANISOTROPIC = {"patch_size": [32, 64, 64], "architecture": {"arch_kwargs": {
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}}}
SHALLOW = {"patch_size": [16, 32, 32], "architecture": {"arch_kwargs": {
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}}}
DEEP_2D = {"patch_size": [128, 64], "architecture": {"arch_kwargs": {
    "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 1]]}}}


@pytest.mark.parametrize("config, model, strides", [
    (ANISOTROPIC, "rwkv_unet3d_t", [[1, 2, 2], 2, 2, 2]),   # one stage per nnU-Net pooling
    (SHALLOW, "rwkv_unet3d_t", [[1, 2, 2], 2, 2, 1]),       # nnU-Net pools three times: stage 4 keeps its size
    (DEEP_2D, "rwkv_unet_t", [2, 2, 2, 2]),                  # it pools five times: the shallowest four
])
def test_network_from_plans_segments_the_plans_patch(config, model, strides, one_thread):
    arch = architecture(config, model, "test plans")
    assert arch["arch_kwargs"] == {"model": model, "strides": strides}
    net = rwkv_unet(1, 3, **arch["arch_kwargs"]).eval()
    # the input rule is the product of the stage strides per axis, and it divides the patch
    per_axis = np.prod([[s] * len(config["patch_size"]) if isinstance(s, int) else s for s in strides], axis=0)
    divisor = net.size_divisor if isinstance(net.size_divisor, tuple) else (net.size_divisor,) * 2
    assert tuple(per_axis) == divisor
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *config["patch_size"]))
    assert out.shape == (1, 3, *config["patch_size"])


def test_stage_strides_reads_per_axis_pooling():
    assert stage_strides([[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]], 3) == [[1, 2, 2], [1, 2, 2], 2, 2]
    with pytest.raises(ValueError, match="do not have 3 axes"):
        stage_strides([[1, 1], [2, 2]], 3)


def test_a_divisor_that_does_not_fit_the_patch_is_refused_naming_both():
    odd = {**ANISOTROPIC, "patch_size": [24, 64, 64]}
    with pytest.raises(ValueError, match=r"my plans.*patch size \[24, 64, 64\].*size divisor \(16, 16, 16\)"):
        architecture(odd, "rwkv_unet3d_t", "my plans", strides=[2, 2, 2, 2])
    with pytest.raises(ValueError, match="2D patches.*use rwkv_unet_t"):
        architecture(DEEP_2D, "rwkv_unet3d_t", "my plans")
    with pytest.raises(ValueError, match="not a registered RWKV-UNet"):
        architecture(ANISOTROPIC, "unet3d", "my plans")
    with pytest.raises(ValueError, match="no deep-supervision outputs"):
        rwkv_unet(1, 2, "rwkv_unet3d_t", deep_supervision=True)


def test_short_budget_trainer_names():
    from rwkvlab.nnunet import trainers

    short = trainers.trainer("nnUNetTrainerRWKVUNetT_3epochs_7iters")
    assert short.__name__ == "nnUNetTrainerRWKVUNetT_3epochs_7iters"
    assert issubclass(short, trainers.nnUNetTrainerRWKVUNetT) and short.size == "t"
    assert trainers.nnUNetTrainerRWKVUNetT_3epochs_7iters is short  # module __getattr__, one class per name
    assert steps.budget_trainer("nnUNetTrainer", 1000, 250) == "nnUNetTrainer"
    assert steps.budget_trainer("nnUNetTrainer", 2, 5) == "nnUNetTrainer_2epochs_5iters"
    with pytest.raises(ValueError, match="unknown trainer 'nnUNetTrainerFoo'"):
        trainers.trainer("nnUNetTrainerFoo_3epochs_7iters")
    assert not hasattr(trainers, "nnUNetTrainerRWKVUNetQ")


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory):
    """Six 16x32x32 volumes through nnU-Net's own entry points: plan and preprocess, then nnU-Net's U-Net and
    RWKV-UNet-T trained for 2 iterations each (the short-budget variant), validated, and one case predicted; and
    RWKV-UNet-T in nnU-Net's 2d configuration, trained and validated."""
    root = tmp_path_factory.mktemp("nnunet")
    folders = steps.Folders(root / "raw", root / "preprocessed", root / "results")
    raw = folders.raw / "Dataset987_tiny"
    generate3d(raw, seed=3, n_cases=6, shape=(16, 32, 32))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **folders.environment(), "nnUNet_def_n_proc": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    _run(["nnUNetv2_plan_and_preprocess", "-d", "987", "-c", "3d_fullres", "2d", "--verify_dataset_integrity",
          "-np", "1", "1", "-npfp", "1"], env, root)
    env["nnUNet_n_proc_DA"] = "0"  # augment in the training process: 2 cores, and the planner refuses 0
    trainers = ["nnUNetTrainer_1epochs_2iters", "nnUNetTrainerRWKVUNetT_1epochs_2iters"]
    predicted = {}
    (root / "images").mkdir()
    (root / "images" / "demo_001_0000.nii.gz").write_bytes((raw / "imagesTr" / "demo_001_0000.nii.gz").read_bytes())
    for trainer in trainers:
        _run(["nnUNetv2_train", "987", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env, root)
        _run(["nnUNetv2_predict", "-i", str(root / "images"), "-o", str(root / trainer), "-d", "987",
              "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1",
              "-nps", "1"], env, root)
        predicted[trainer] = root / trainer / "demo_001.nii.gz"
    # nnU-Net's 2d configuration: RWKV-UNet-T on the slices, with the strides nnU-Net plans for them
    _run(["nnUNetv2_train", "987", "2d", "0", "-tr", trainers[1], "-device", "cpu"], env, root)
    return folders, raw, trainers, predicted


def test_both_networks_train_and_predict_through_nnunet(nnunet_run):
    folders, raw, trainers, predicted = nnunet_run
    image, spacing, affine = read_nifti(raw / "imagesTr" / "demo_001_0000.nii.gz")
    for trainer in trainers:
        fold = folders.results / "Dataset987_tiny" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
        assert (fold / "checkpoint_final.pth").is_file()
        checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 1
        labels, pred_spacing, pred_affine = read_nifti(predicted[trainer])
        assert labels.shape == image.shape and pred_spacing == spacing and np.allclose(pred_affine, affine)
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    rwkv = torch.load(folders.results / "Dataset987_tiny" / f"{trainers[1]}__nnUNetPlans__3d_fullres" / "fold_0" /
                      "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # RWKV-UNet's own weights, not nnU-Net's U-Net: the Bi-WKV decay of its spatial mixes is there
    assert any(k.endswith(".mix.decay") for k in rwkv["network_weights"])


def test_rwkv_unet_trains_in_nnunets_2d_configuration(nnunet_run):
    folders, _, trainers, _ = nnunet_run
    fold = folders.results / "Dataset987_tiny" / f"{trainers[1]}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert any(k.endswith(".mix.decay") for k in weights)
    assert max(w.ndim for w in weights.values()) == 4  # 2D convolutions (the 3D model's are 5D)


def test_our_protocol_agrees_with_nnunets_summary(nnunet_run):
    """Two implementations of the Dice on the same predicted files: nnU-Net's validation summary and ours."""
    folders, raw, trainers, _ = nnunet_run
    for trainer, configuration in [*((t, "3d_fullres") for t in trainers), (trainers[1], "2d")]:
        fold = folders.results / "Dataset987_tiny" / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
        _, per_case = steps.evaluate_validation(fold, raw)
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        names = {str(v): k for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items()}
        compared = 0
        for case in summary["metric_per_case"]:
            case_id = Path(case["prediction_file"]).name[: -len(".nii.gz")]
            for label, m in case["metrics"].items():
                if m["n_ref"] == 0:  # a class absent from the labels: the two rules differ by design (docs §7)
                    continue
                ours = per_case[(per_case["case"] == case_id) & (per_case["class"] == names[label])]["dsc"].item()
                assert ours == pytest.approx(m["Dice"], abs=1e-9)
                compared += 1
        assert compared > 0


def test_integrity_failure_is_reported_with_nnunets_message_and_the_folder(tmp_path):
    folders = steps.Folders(tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results")
    source = tmp_path / "source"
    generate3d(source, seed=1, n_cases=2, shape=(8, 16, 16))
    meta = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    raw = steps.import_raw(source, folders, 988, "broken")
    with pytest.raises(DataError, match=rf"{raw}: nnU-Net's integrity check failed: .*expected number of training"):
        steps.preprocess(folders, 988, ["3d_fullres"])
    with pytest.raises(DataError, match=f"{tmp_path / 'nothing'}: no dataset.json"):
        steps.import_raw(tmp_path / "nothing", folders, 989, "absent")


def test_plans_command_writes_rwkv_unet_plans_nnunet_can_build(nnunet_run):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rwkvlab.nnunet.trainers import nnUNetTrainerRWKVUNet

    folders, _, _, _ = nnunet_run
    target = steps.write_plans(folders, 987, "rwkv_unet3d_s", ccm=False)
    assert target.name == "nnUNetPlans_rwkv_unet3d_s.json"
    manager = PlansManager(str(target))
    config = manager.get_configuration("3d_fullres")
    assert config.network_arch_init_kwargs["ccm"] is False
    with folders.active():
        net = nnUNetTrainerRWKVUNet.build_network_architecture(manager, config, 1, 5, False)
    assert net.cfg.dims == (32, 64, 128, 192) and net.ccm is None  # size S, its switch
    # nnU-Net's own plans name its U-Net: the generic RWKV trainer refuses them, naming the way out
    unet_plans = PlansManager(str(target.with_name("nnUNetPlans.json")))
    with folders.active(), pytest.raises(ValueError, match="not RWKV-UNet.*python -m rwkvlab.nnunet plans"):
        nnUNetTrainerRWKVUNet.build_network_architecture(unet_plans, unet_plans.get_configuration("3d_fullres"),
                                                         1, 5, False)
    with pytest.raises(ValueError, match="unknown model keyword argument"):
        steps.write_plans(folders, 987, "rwkv_unet3d_t", nonsense=1)
    with pytest.raises(FileNotFoundError, match="no nnU-Net dataset 986"):
        steps.write_plans(folders, 986, "rwkv_unet3d_t")


def test_env_points_nnunet_at_our_trainers(capsys):
    from rwkvlab.nnunet.__main__ import main

    assert main(["--params", str(Path(__file__).parent / "params.yaml"), "env"]) == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    ext = Path(exports["nnUNet_extTrainer"])
    assert (ext / "rwkvlab_trainers.py").is_file()
    assert {k for k in exports if k.startswith("nnUNet_")} >= {"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"}
    assert all(Path(exports[k]).is_relative_to(Path(__file__).parent.parent / "data" / "adhoc")
               for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))


def test_a_dataset_without_data_is_reported_and_skipped_by_both_stages(tmp_path, capsys):
    """The paper profile names benchmarks a user may not hold: their stages finish, saying so, as prepare does."""
    from rwkvlab import config
    from rwkvlab.nnunet.__main__ import SKIPPED, study_preprocess, study_train

    p = config.load(Path(__file__).parent / "params.yaml", **{
        "nnunet.root": str(tmp_path / "nnunet"), "base.reports_dir": str(tmp_path / "reports"),
        "nnunet.datasets.volume_demo.source": str(tmp_path / "absent")})
    study_preprocess(p, "volume_demo")
    assert f"{tmp_path / 'absent'}: no dataset.json" in capsys.readouterr().out
    study_train(p, "volume_demo-rwkv_unet3d_t")
    folders = steps.study_folders(p, "volume_demo", "volume_demo-rwkv_unet3d_t")
    reports = tmp_path / "reports/nnunet/volume_demo-rwkv_unet3d_t"
    for folder in (folders.raw, folders.preprocessed, folders.results, reports):
        assert (folder / SKIPPED).is_file(), folder
    assert not (reports / "metrics.json").exists()
