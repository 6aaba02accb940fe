"""The MONAI-based loss equals docs §6's formula written out by hand."""

import pytest
import torch

from rwkvlab.engine.losses import seg_loss


def by_hand(logits, labels, ce_w, dice_w):
    logp = torch.log_softmax(logits.double(), 1)
    ce = -logp.gather(1, labels).mean()
    p = logp.exp()
    g = torch.nn.functional.one_hot(labels[:, 0], logits.shape[1]).permute(0, 3, 1, 2).double()
    dims = (0, 2, 3)  # the whole batch together, per class (background included)
    dice = (2 * (p * g).sum(dims) + 1e-5) / ((p * p).sum(dims) + (g * g).sum(dims) + 1e-5)
    return ce_w * ce + dice_w * (1 - dice.mean())


@pytest.mark.parametrize("k,ce_w,dice_w", [(2, 0.5, 1.0), (9, 0.5, 0.5), (4, 0.2, 0.8)])
def test_dice_ce_equals_formula(k, ce_w, dice_w):
    logits = torch.randn(3, k, 7, 5) * 3
    labels = torch.randint(0, k, (3, 1, 7, 5))
    got = seg_loss(ce_w, dice_w)(logits, labels)
    torch.testing.assert_close(got.double(), by_hand(logits, labels, ce_w, dice_w), rtol=1e-5, atol=1e-6)
