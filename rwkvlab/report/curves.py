"""Training curves, apart from the report's other figures: the training notebooks draw them, so this module is
in the training stages' dependencies (``rwkvlab.pipeline``) and a change to any other figure retrains nothing."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["training_curves"]


def training_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Training loss and validation DSC per epoch, one line per model."""
    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_dsc = fig.subplots(1, 2)
    for name, h in histories.items():
        ax_loss.plot(h["epoch"], h["train_loss"], marker=".", label=name)
        ax_dsc.plot(h["epoch"], h["val_dsc"], marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss (CE + Dice)")
    ax_dsc.set(xlabel="epoch", ylabel="validation DSC (%)")
    ax_dsc.legend(fontsize=8)
    fig.tight_layout()
    return fig
