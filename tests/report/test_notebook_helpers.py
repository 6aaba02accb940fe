"""What the notebooks lean on: non-overlapping labels, one progress bar per loop nest, logs to a file."""

import io
import logging

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from rwkvlab.notebook import epoch_summary, log_to_file
from rwkvlab.progress import Progress
from rwkvlab.report.figures import label_points, new_figure


def _overlaps(texts, renderer):
    texts[0].figure.draw_without_rendering()  # annotations place their text when drawn
    boxes = [Text.get_window_extent(t, renderer) for t in texts]
    return [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def test_labels_of_coincident_points_do_not_overlap():
    # nine variants at one MACs count and DSC (one shared run), plus a spread of others: the bubble chart's case
    rng = np.random.default_rng(0)
    points = [(11.1, 64.2, f"variant_{i}") for i in range(9)] + \
             [(float(x), float(y), f"other_{i}") for i, (x, y) in enumerate(rng.uniform([4, 60], [18, 80], (12, 2)))]
    fig, ax = new_figure(figsize=(6, 4))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    fig.tight_layout()
    renderer = fig._get_renderer()
    naive = [ax.annotate(t, (x, y), fontsize=7, ha="center", va="bottom") for x, y, t in points]
    assert _overlaps(naive, renderer), "the naive placement must overlap for this test to mean anything"
    for t in naive:
        t.remove()
    placed = label_points(ax, points)
    assert [t.get_text() for t in placed] == [p[2] for p in points]
    assert not _overlaps(placed, renderer)


def test_only_the_outermost_bar_draws():
    out = io.StringIO()
    with Progress(total=2, desc="outer", file=out) as outer:
        for _ in range(2):
            for _ in Progress(range(3), desc="inner", file=out):
                pass
            outer.update()
    assert "outer" in out.getvalue() and "inner" not in out.getvalue()
    after = Progress(total=1, desc="next", file=out)  # the nest is closed: a new bar draws again
    assert not after.disable
    after.close()


def test_log_goes_to_the_file_once_per_record(tmp_path, capsys):
    log = tmp_path / "logs" / "stage.log"
    for _ in range(3):  # a cell run three times
        log_to_file(log)
    logger = logging.getLogger("rwkvlab.test")
    logger.info("an info line")
    logger.warning("a warning")
    text = log.read_text()
    assert text.count("an info line") == 1 and text.count("a warning") == 1
    err = capsys.readouterr().err
    assert "an info line" not in err and err.count("a warning") == 1


def test_epoch_summary_keeps_first_best_and_last():
    history = pd.DataFrame({"epoch": range(1, 31), "train_loss": np.linspace(1, 0.1, 30),
                            "val_dsc": [50.0] * 10 + [90.0] + [60.0] * 19})
    summary = epoch_summary(history, rows=4)
    assert len(summary) <= 5 and summary["epoch"].iloc[0] == 1 and summary["epoch"].iloc[-1] == 30
    assert summary.loc[summary["note"] == "best", "epoch"].tolist() == [11]
    assert summary.loc[summary["note"] == "last", "epoch"].tolist() == [30]


@pytest.mark.parametrize("cwd", ["root", "notebooks", "deeper"])
def test_params_found_from_inside_the_project(tmp_path, monkeypatch, cwd):
    from rwkvlab import config

    (tmp_path / "params.yaml").write_text("base: {}\n")
    folder = {"root": tmp_path, "notebooks": tmp_path / "notebooks", "deeper": tmp_path / "a" / "b"}[cwd]
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    assert config.find_params_file() == tmp_path / "params.yaml"
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(FileNotFoundError, match="no params.yaml"):
        config.find_params_file(start=tmp_path.parent)
