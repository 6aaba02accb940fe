"""Training losses (docs §6)."""

from __future__ import annotations

from monai.losses import DiceCELoss

__all__ = ["seg_loss"]


def seg_loss(ce_weight: float, dice_weight: float) -> DiceCELoss:
    """``ce_weight * CE + dice_weight * Dice`` as the paper trains (docs §6).

    The Dice term is TransUNet's: soft Dice on the softmax of every class, background included,
    with the sums taken over the whole batch, denominator ``sum p^2 + sum g^2`` and smoothing
    1e-5 in numerator and denominator, averaged over classes.

    Shape:
        forward(logits (N, K, H, W), labels (N, 1, H, W) integer) -> scalar.
    """
    return DiceCELoss(
        include_background=True, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
        smooth_nr=1e-5, smooth_dr=1e-5, lambda_ce=ce_weight, lambda_dice=dice_weight,
    )
