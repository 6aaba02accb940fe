"""The ``train`` and ``gpu`` benchmarks (issue 10): what they measure, how they report, and that ``gpu`` refuses
cleanly without a GPU. The timings themselves are not asserted."""

import pytest
import torch

from rwkvlab.bench import cli, gpu, scaling3d
from rwkvlab.bench.gpu import GpuCheck, format_gpu_summary
from rwkvlab.bench.train import BASELINE_MODEL, StepConfig, StepRow, bench_steps, format_steps, train_configs


def test_cpu_configs_put_basic_unet_beside_rwkv_unet_t():
    configs = train_configs(torch.device("cpu"))
    assert {(c.model, c.mode) for c in configs} == {(m, mode) for m in (BASELINE_MODEL, "rwkv_unet_t")
                                                    for mode in ("train", "infer")}
    assert all(c.batch == 4 and c.size == 224 and c.num_classes == 9 and c.precision == "fp32" for c in configs)


def test_gpu_configs_cover_t_s_b_fp32_bf16_with_eager_baseline():
    configs = train_configs(torch.device("cuda"))
    assert all(c.batch == 24 and c.size == 224 for c in configs)
    for m in ("rwkv_unet_t", "rwkv_unet_s", "rwkv_unet_b"):
        for mode in ("train", "infer"):
            assert StepConfig(m, mode, "fp32", 24, 224, channels_last=False) in configs
            assert {c.precision for c in configs if c.model == m and c.mode == mode and c.channels_last} == \
                {"fp32", "bf16"}


def test_format_steps_ratios_against_the_baseline():
    unet = StepConfig(BASELINE_MODEL, "train", "fp32", 4, 224)
    t = StepConfig("rwkv_unet_t", "train", "fp32", 4, 224)
    lines = format_steps([StepRow(unet, 2.0, None), StepRow(t, 3.1, None)])
    assert "3.10" in lines[3] and "1.55" in lines[3] and "MONAI BasicUNet" in lines[3]
    assert lines[2].split()[-1] == "-"  # the baseline has no ratio, and no authors' figure
    eager = StepConfig("rwkv_unet_b", "train", "fp32", 24, 224, channels_last=False)
    fast = StepConfig("rwkv_unet_b", "train", "bf16", 24, 224)
    lines = format_steps([StepRow(eager, 150.0, 13.0), StepRow(fast, 330.0, 7.5)])
    assert "2.20" in lines[3] and "179" in lines[3] and "7.50" in lines[3] and "fp32 eager NCHW" in lines[3]


def test_bench_steps_measures_each_config():
    configs = [StepConfig("rwkv_unet_t", mode, "fp32", 1, 32) for mode in ("train", "infer")]
    rows = bench_steps(configs, torch.device("cpu"), steps=1, warmup=0)
    assert [r.config for r in rows] == configs and all(r.img_s > 0 and r.peak_gib is None for r in rows)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        bench_steps(configs, torch.device("cpu"), steps=0)


def test_gpu_summary_lists_every_part_and_the_verdict():
    checks = [GpuCheck("build CUDA kernel", True, 40.0, "/x/rwkvlab_wkv_cuda.so"),
              GpuCheck("kernel vs float64 reference", False, 12.5, "worst 3.0e-05\nT=  784 C=  288 ...")]
    text = format_gpu_summary("NVIDIA H200", checks, 480)
    lines = text.splitlines()
    assert lines[0] == "bench gpu on NVIDIA H200"
    assert lines[2].startswith("PASS  build CUDA kernel") and "40.0 s" in lines[2]
    assert lines[3].startswith("FAIL  kernel vs float64 reference") and lines[4].strip() == "T=  784 C=  288 ..."
    assert lines[-1] == "FAILED: kernel vs float64 reference; 52 s in all (within the 8-minute budget)"
    over = format_gpu_summary("g", [GpuCheck("bench train", True, 500.0, "")], 480)
    assert over.splitlines()[-1] == "all parts passed; 500 s in all (OVER the 8-minute budget)"


def test_gpu_check_keeps_going_after_a_failing_part():
    def broken():
        raise RuntimeError("nvcc missing")

    check = gpu._gpu_check("build CUDA kernel", broken)
    assert not check.ok and check.detail == "RuntimeError: nvcc missing"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_command_refuses_without_gpu(capsys):
    with pytest.raises(SystemExit, match="bench gpu needs a CUDA GPU"):
        cli.main(["gpu"])
    assert "PASS" not in capsys.readouterr().out


def test_judge_fails_a_figure_on_the_wrong_side_of_its_target():
    targets = gpu.GPU_TARGETS
    assert gpu.judge({"wkv fwd+bwd": 0.20, "B train bf16": 330.0}, targets)[0]
    ok, line = gpu.judge({"wkv fwd+bwd": 0.31}, targets)
    assert not ok and line == "wkv fwd+bwd 0.31 ms (target <= 0.29) MISSED"
    assert not gpu.judge({"B infer bf16": 1199.0}, targets)[0]
    with pytest.raises(KeyError, match="no target"):
        gpu.judge({"made up": 1.0}, targets)


class FakeGpu:
    """What the measuring functions of ``bench gpu`` return on a GPU that meets every default target: the
    (24, 784, 576) Bi-WKV in 0.2 ms, RWKV-UNet-B at 330 img/s in training (7.5 GiB) and 1300 img/s in inference."""

    def __init__(self, monkeypatch):
        from rwkvlab.bench.scaling3d import ScalingCase, ScalingRow
        from rwkvlab.bench.wkv import WkvRow, WkvShape

        issue = WkvShape("issue 3", 24, 784, 576)
        img_s = {"train": 330.0, "infer": 1300.0}
        monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(gpu, "build_kernel", lambda: "/x/rwkvlab_wkv_cuda.so")
        monkeypatch.setattr(gpu, "cuda_tests", lambda: (True, "4 passed"))
        monkeypatch.setattr(gpu, "kernel_exactness", lambda device: (True, "worst 1e-7"))
        monkeypatch.setattr(gpu, "memory_bandwidth", lambda device: 3e12)
        monkeypatch.setattr(gpu, "wkv_shapes", lambda batch: [issue])
        monkeypatch.setattr(gpu, "bench_wkv", lambda shape, device: [WkvRow(shape, "cuda", 1e-4, 2e-4, 1e-7, 1e-7)])
        monkeypatch.setattr(gpu, "bench_steps", lambda configs, device, steps, warmup: [
            StepRow(c, img_s[c.mode], 7.5) for c in configs])
        monkeypatch.setattr(gpu, "scaling3d_report", lambda device, sizes, repeats: (
            ["table"], [ScalingRow(ScalingCase("rwkv_unet3d_t", (), 64), 0.1, 100.0, 3, "")]))
        monkeypatch.setattr(cli.torch.cuda, "get_device_name", lambda *a: "fake H100")


def test_gpu_parts_pass_only_on_their_targets(monkeypatch):
    FakeGpu(monkeypatch)
    assert all(c.ok for c in gpu.bench_gpu())
    failed = {c.name for c in gpu.bench_gpu(targets=gpu.with_targets(["wkv fwd+bwd=0.1"])) if not c.ok}
    assert failed == {"bench wkv"}
    failed = {c.name for c in gpu.bench_gpu(targets=gpu.with_targets(["B train bf16=400"])) if not c.ok}
    assert failed == {"bench train"}
    failed = {c.name for c in gpu.bench_gpu(targets=gpu.with_targets(["B train bf16 peak=4"])) if not c.ok}
    assert failed == {"bench train"}


def test_gpu_command_exits_non_zero_on_a_target_that_cannot_be_met(monkeypatch, capsys):
    FakeGpu(monkeypatch)
    cli.main(["gpu"])
    assert capsys.readouterr().out.splitlines()[-1].startswith("all parts passed")
    with pytest.raises(SystemExit) as stop:
        cli.main(["gpu", "--target", "wkv fwd+bwd=0"])  # no kernel runs in 0 ms
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "FAIL  bench wkv" in out and "MISSED" in out and out.splitlines()[-1].startswith("FAILED: bench wkv")
    with pytest.raises(SystemExit, match="no target 'nope'"):
        cli.main(["gpu", "--target", "nope=1"])


@pytest.mark.parametrize("argv,message", [(["train", "--batch", "0"], "--batch must be >= 1"),
                                          (["train", "--steps", "-1"], "--steps must be >= 1"),
                                          (["nope"], "invalid choice")])
def test_bad_arguments_stop_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


# ``scaling3d``: the table's structure and the skipping rules; the timings themselves are not asserted.
from rwkvlab.bench.scaling3d import ScalingCase, ScalingRow, bench_scaling3d, format_scaling, scaling3d_cases  # noqa: E402


def test_scaling3d_command_prints_every_case_with_its_reason(capsys):
    # At 16^3 nothing can train at batch 1 (a 1-voxel bottleneck, SwinUNETR's divisor 32): every case says why.
    cli.main(["scaling3d", "--sizes", "16", "--repeats", "1", "--in-process"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("3D scaling on CPU") and "batch 1, 1 channel, 5 classes" in lines[0]
    assert lines[1].startswith("memory (step MiB): ")
    assert lines[2].split() == ["model", "side", "voxels", "f+b", "s", "x", "unet3d", "us/voxel", "step", "MiB", "x",
                                "unet3d", "runs", "note"]
    rows = lines[4:8]
    assert [r[:26].strip() for r in rows] == ["unet3d", "rwkv_unet3d_t", "rwkv_unet3d_t scan=axes", "swin_unetr3d"]
    assert all(" 16^3 " in r for r in rows)
    assert "multiples of 32 and >= 64" in rows[3] and "multiples of 16 and >= 32" in rows[0]
    assert all("fewer than two sides measured" in line for line in lines[-5:-1])
    assert lines[-1].startswith("(") and lines[-1].endswith(" s)")


def test_scaling3d_measures_in_fresh_processes():
    # one model: each case costs a fresh interpreter (torch, monai) plus its steps
    cases = scaling3d_cases([32], models=[("unet3d", ())])
    rows = bench_scaling3d(cases, torch.device("cpu"), repeats=1, threads=1)
    assert [r.case for r in rows] == cases
    assert all(r.seconds > 0 and r.step_mib > 0 and r.runs == 1 and r.note == "" for r in rows), rows
    table = format_scaling(rows)
    assert table[2].split()[:5] == ["unet3d", "32^3", "32768", f"{rows[0].seconds:.3f}", "1.00"]


def _row(label, size, seconds, mib=100.0, note=""):
    model, *kw = label.split()
    return ScalingRow(ScalingCase(model, tuple(tuple(k.split("=")) for k in kw), size), seconds, mib,
                      0 if seconds is None else 2, note)


def test_format_scaling_ratios_and_growth():
    rows = [_row("unet3d", 64, 2.0, 400.0), _row("rwkv_unet3d_t", 64, 1.0, 100.0),
            _row("unet3d", 128, 16.0, 3200.0), _row("rwkv_unet3d_t", 128, 12.0, 900.0),
            _row("swin_unetr3d", 128, None, None, "killed: over the 150 s cap")]
    lines = format_scaling(rows)
    rwkv128 = lines[5].split()
    assert rwkv128[:5] == ["rwkv_unet3d_t", "128^3", "2097152", "12.000", "0.75"]
    assert rwkv128[5] == f"{12e6 / 128**3:.2f}" and rwkv128[6:8] == ["900", "0.28"]
    assert lines[6].split()[3:9] == ["-"] * 5 + ["0"] and lines[6].endswith("killed: over the 150 s cap")
    growth = {line.split()[0]: line for line in lines[-3:]}
    assert "= 8.00 vs voxels 8.00 (1.00 of linear)" in growth["unet3d"]
    assert "= 12.00 vs voxels 8.00 (1.50 of linear)" in growth["rwkv_unet3d_t"]
    assert "fewer than two sides measured" in growth["swin_unetr3d"]


def test_scaling3d_skips_what_would_pass_the_cap(monkeypatch):
    measured = {("unet3d", 32): 10.0, ("swin_unetr3d", 64): None}

    def fake(case, threads, repeats, warmup, cap_s):
        seconds = measured[case.model, case.size]
        return ScalingRow(case, seconds, 1.0, 1, "" if seconds else f"killed: over the {cap_s:.0f} s cap")

    monkeypatch.setattr(scaling3d, "_isolated", fake)
    cases = scaling3d_cases([32, 64, 96], models=[("unet3d", ()), ("swin_unetr3d", ())])
    rows = {(r.case.model, r.case.size): r for r in bench_scaling3d(cases, torch.device("cpu"), cap_s=150)}
    assert rows["unet3d", 64].note.startswith("skipped: ~80 s a step predicted from 32^3")  # 2 x 80 > 150
    assert rows["swin_unetr3d", 32].note.startswith("skipped: sides must be multiples of 32 and >= 64")
    assert rows["swin_unetr3d", 96].note == "skipped: 64^3 already passed the 150 s cap"
    assert rows["unet3d", 96].note.startswith("skipped: ~270 s a step predicted from 32^3")


@pytest.mark.parametrize("argv,message", [(["scaling3d", "--repeats", "0"], "--repeats must be >= 1"),
                                          (["scaling3d", "--sizes", "0"], "--sizes must be >= 1")])
def test_scaling3d_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


def test_startup_times_exactly_a_notebooks_imports(tmp_path):
    import json

    from rwkvlab.bench.startup import format_startup, measure_startup, notebook_imports

    cells = [{"cell_type": "markdown", "source": ["import nothing"]},
             {"cell_type": "code", "source": ["%matplotlib inline\n",  # a magic: not Python, blanked
                                              "import json\n", "from pathlib import (Path,\n", "    PurePath)\n",
                                              "x = 1\n"]},
             {"cell_type": "code", "source": ["if x:\n", "    import colorsys\n", "import torch\n",
                                              "from time import perf_counter as start\n"]}]
    nb = tmp_path / "09_fake.ipynb"
    nb.write_text(json.dumps({"cells": cells}))
    assert notebook_imports(nb) == ("import json\nfrom pathlib import Path, PurePath\nimport torch\n"
                                    "from time import perf_counter as start")  # a name the probe itself uses
    (row,) = measure_startup([nb], repeats=1)
    assert row.notebook == "09_fake" and row.seconds > 0 and row.heavy == ()  # torch alone loads none of them
    assert row.slowest[0][0] == "torch"
    broken = tmp_path / "10_broken.ipynb"
    broken.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["import no_such_package\n"]}]}))
    with pytest.raises(RuntimeError, match=r"(?s)10_broken.ipynb: its imports fail .*no_such_package"):
        measure_startup([broken], repeats=1)
    lines = format_startup([row])
    assert lines[2].startswith("09_fake") and lines[-1].split()[-1] == f"{row.seconds:.2f}"
