"""The authors' checkpoints convert exactly (docs §21), and ``wkv="release"`` is their CUDA kernel's forward,
against what running their code gave (``tests/data/fixtures/release.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fixtures.release import OUTPUTS, OUTPUTS_WKV, RELEASE, rel_l2, release_input, release_state

import rwkvlab
from rwkvlab.convert import convert, main
from rwkvlab.engine.checkpoint import load_pretrained_encoder
from rwkvlab.models import create_model
from rwkvlab.models.release import ReleaseError, from_release
from rwkvlab.ops import bi_wkv, bi_wkv_release


@pytest.mark.parametrize("size", ["t", "s", "b"])
def test_a_converted_release_checkpoint_gives_their_logits(tmp_path, size):
    src, dst = tmp_path / f"{size}.pth", tmp_path / f"{size}.pt"
    torch.save(release_state(size), src)
    state = convert(src, dst, f"rwkv_unet_{size}")
    net = rwkvlab.load_model(dst)
    assert state["model_kwargs"] == {"num_classes": RELEASE[size]["num_classes"], "in_chans": RELEASE[size]["in_chans"],
                                     "wkv": "exact"}
    x = release_input((1, RELEASE[size]["in_chans"], 64, 64)).float()
    with torch.no_grad():
        logits = net(x)
    assert rel_l2(logits, torch.from_numpy(OUTPUTS[f"{size}_logits"])) <= 1e-5
    # exactly the tensors their forward never reads are left out
    assert sorted(state["release"]["skipped"]) == sorted(RELEASE[size]["unused"])


@pytest.mark.parametrize("size", ["t", "b"])
def test_an_encoder_file_loads_into_our_encoder_and_initialises_training(tmp_path, size):
    src, dst = tmp_path / "enc.pth", tmp_path / "enc.pt"
    torch.save(release_state(size, encoder=True), src)
    state = convert(src, dst, f"rwkv_unet_{size}")
    assert state["model_name"] == f"rwkv_enc_{size}" and state["model_kwargs"]["num_classes"] == 1000
    encoder = rwkvlab.load_model(dst)
    x = release_input((1, RELEASE[size]["in_chans"], 64, 64)).float()
    with torch.no_grad():
        features = encoder.forward_intermediates(x)[-1]
    assert rel_l2(features, torch.from_numpy(OUTPUTS[f"{size}_features"])) <= 1e-5
    seg = create_model(f"rwkv_unet_{size}", in_chans=1, num_classes=4)
    loaded = load_pretrained_encoder(seg, dst)
    assert loaded["dropped"] == ["head.bias", "head.weight", "head_norm.bias", "head_norm.weight"]
    torch.testing.assert_close(seg.encoder.stages[2][1].mix.decay, encoder.stages[2][1].mix.decay)


def _damaged(tmp_path: Path, change) -> Path:
    state = release_state("t")
    change(state)
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("encoder.stage3.1.att.key.weight"), "missing encoder.stage3.1.att.key.weight"),
    (lambda s: s.update({"decoder2.conv.conv.weight": torch.zeros(3, 3, 1, 1)}), "decoder2.conv.conv.weight has shape"),
    (lambda s: s.update({"encoder.stage4.2.proj.conv.weight": torch.zeros(160, 560, 1, 1)}),
     "encoder.stage4.2.proj.conv.weight has no place"),
])
def test_a_damaged_release_file_is_named_and_nothing_is_written(tmp_path, capsys, change, message):
    src, dst = _damaged(tmp_path, change), tmp_path / "out" / "model.pt"
    assert main([str(src), str(dst), "--model", "rwkv_unet_t"]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and message in err
    assert not dst.exists() and not (dst.parent.exists() and any(dst.parent.iterdir()))


def test_another_size_and_a_file_that_is_no_checkpoint_are_refused(tmp_path):
    small = tmp_path / "s.pth"
    torch.save(release_state("s"), small)
    with pytest.raises(ReleaseError, match=re.escape(f"{small}: encoder.stage2.0.proj.conv.weight has shape (64, 160, 1, 1)")):
        from_release(small, "rwkv_unet_t")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ReleaseError, match=re.escape(f"{text}: not a readable PyTorch checkpoint")):
        from_release(text, "rwkv_unet_t")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(ReleaseError, match=re.escape(f"{other}: no release RWKV-UNet keys")):
        from_release(other, "rwkv_unet_t")
    with pytest.raises(ReleaseError, match="final_conv.weight has 1 classes; --num-classes 9"):
        from_release(_damaged(tmp_path, lambda s: None), "rwkv_unet_t", num_classes=9)


@pytest.mark.parametrize("case", ["t49_d3", "t49_d30", "t16_d3", "t200_d3", "t1024_d30"])
def test_wkv_release_is_the_authors_kernel(case):
    k, v, w, u, y = (torch.from_numpy(OUTPUTS_WKV[f"{case}_{x}"]) for x in "kvwuy")
    out = bi_wkv_release(k, v, w, u)
    assert out.dtype == torch.float32 and rel_l2(out, y) <= 1e-5
    # and it is not the formula (the kernel's chunks only agree with it at w = u = 0)
    assert rel_l2(bi_wkv(k.double(), v.double(), w.double(), u.double(), backend="reference"), y) > 1e-4
    zero = torch.zeros_like(w)
    torch.testing.assert_close(bi_wkv_release(k, v, zero, zero), bi_wkv(k, v, zero, zero, backend="reference"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["t49_d30", "t1024_d30"])
def test_wkv_release_on_cuda_is_the_authors_kernel(case):
    k, v, w, u, y = (torch.from_numpy(OUTPUTS_WKV[f"{case}_{x}"]).cuda() for x in "kvwuy")
    assert rel_l2(bi_wkv_release(k, v, w, u).cpu(), y.cpu()) <= 1e-5


def test_a_model_with_wkv_release_trains_through_the_kernels_arithmetic():
    torch.manual_seed(0)
    exact = create_model("rwkv_unet_t", in_chans=1, num_classes=3).eval()
    release = create_model("rwkv_unet_t", in_chans=1, num_classes=3, wkv="release").eval()
    release.load_state_dict(exact.state_dict())
    with torch.no_grad():
        for block in (exact.encoder.stages[2][1], release.encoder.stages[2][1]):
            block.mix.decay.fill_(2.0)
    x = torch.rand(2, 1, 64, 64)
    out = release(x)
    assert rel_l2(out.detach(), exact(x).detach()) > 1e-6
    out.square().mean().backward()
    grads = [p.grad for p in release.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="wkv must be one of exact, release"):
        create_model("rwkv_unet_t", wkv="cuda")


def test_ccm_keeps_pytorchs_default_initialisation_as_the_release():
    """The release initialises its encoder only (trunc-normal 0.02 linears); its CCM's linears keep PyTorch's
    uniform(+-1/sqrt(fan_in)) init, std 1/sqrt(3 fan_in)."""
    torch.manual_seed(0)
    net = create_model("rwkv_unet_b", in_chans=1, num_classes=9)
    key = net.ccm.mix.key.weight  # fan_in 3 * e0 = 144
    assert key.abs().max() <= 144 ** -0.5 and key.std().item() == pytest.approx((3 * 144) ** -0.5, rel=0.05)
    assert net.encoder.stages[2][1].mix.key.weight.std().item() == pytest.approx(0.02, rel=0.05)
