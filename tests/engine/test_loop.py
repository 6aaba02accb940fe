"""The loop's checkpoints: last.pt every epoch, the best file by the task's watched score (timm's CheckpointSaver)."""

import math
from types import SimpleNamespace

import torch

from rwkvlab.engine.loop import Checkpoints


def read(path):
    return torch.load(path, weights_only=True)


def test_the_best_file_holds_the_epoch_with_the_highest_score(tmp_path):
    saver = Checkpoints(SimpleNamespace(best_file="best.pt", best_checkpoint=lambda payload: None), tmp_path)
    for epoch, score in enumerate([0.5, 0.4, 0.7, 0.7, 0.6]):
        saver.save({"epoch": epoch}, saver.improves(score))
    assert read(tmp_path / "last.pt")["epoch"] == 4
    assert read(tmp_path / "best.pt")["epoch"] == 2  # a tie does not replace the first of the best
    assert saver.best == 0.7
    # a validation inside an epoch: written only when it beats the best, from the payload it is given
    assert not saver.offer(0.65, lambda: {"epoch": 99})
    assert saver.offer(0.8, lambda: {"epoch": 5, "inside": True})
    assert read(tmp_path / "best.pt") == {"epoch": 5, "inside": True} and saver.best == 0.8


def test_without_validation_every_epoch_is_the_best(tmp_path):
    saver = Checkpoints(SimpleNamespace(best_file="best.pt", best_checkpoint=lambda payload: None), tmp_path)
    for epoch in range(3):
        saver.save({"epoch": epoch}, saver.improves(math.nan))
    assert read(tmp_path / "best.pt")["epoch"] == 2


def test_a_task_may_keep_other_weights_as_its_best(tmp_path):
    task = SimpleNamespace(best_file="encoder.pt", best_checkpoint=lambda payload: {"from": payload["epoch"]})
    saver = Checkpoints(task, tmp_path)
    saver.save({"epoch": 0}, saver.improves(1.0))
    saver.save({"epoch": 1}, saver.improves(0.5))
    assert read(tmp_path / "encoder.pt") == {"from": 0} and read(tmp_path / "last.pt") == {"epoch": 1}
    assert not (tmp_path / "best.pt").exists()
