"""The ``train`` and ``gpu`` benchmarks (issue 10): what they measure, how they report, and that ``gpu`` refuses
cleanly without a GPU. The timings themselves are not asserted."""

import pytest
import torch

from rwkvlab import bench
from rwkvlab.bench import (BASELINE_MODEL, GpuCheck, StepConfig, StepRow, bench_steps, format_gpu_summary,
                           format_steps, train_configs)


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

    check = bench._gpu_check("build CUDA kernel", broken)
    assert not check.ok and check.detail == "RuntimeError: nvcc missing"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_command_refuses_without_gpu(capsys):
    with pytest.raises(SystemExit, match="bench gpu needs a CUDA GPU"):
        bench.main(["gpu"])
    assert "PASS" not in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [(["train", "--batch", "0"], "--batch must be >= 1"),
                                          (["train", "--steps", "-1"], "--steps must be >= 1"),
                                          (["nope"], "invalid choice")])
def test_bad_arguments_stop_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
