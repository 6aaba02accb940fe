"""``python -m rwkvlab.models``: every registered model with its card (label, rank, input rule, build, paper rows)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rwkvlab.models import model_cards

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Print one line per registered model, in the order of registration."""
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.models", description=__doc__)
    parser.add_argument("--task", choices=["segmentation", "classification"], help="only the models of this task")
    args = parser.parse_args(argv)
    rows = [("name", "label", "dims", "size_divisor", "build", "paper rows")]
    for name, card in model_cards(args.task).items():
        divisor = "x".join(map(str, card.size_divisor)) if isinstance(card.size_divisor, tuple) else str(card.size_divisor)
        rows.append((name, card.label, f"{card.spatial_dims}D", divisor, card.build, ", ".join(card.paper_rows) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


if __name__ == "__main__":
    main()
