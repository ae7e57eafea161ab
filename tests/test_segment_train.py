"""``glocal train --task segment`` and ``glocal eval --task segment`` end to end on the generated shapes set."""

from __future__ import annotations

import json

import pytest

from glocal.cli import main
from glocal.data.segmentation import make_synthetic_segmentation

# Chance level: predicting every pixel as background (about 80% of the labelled pixels) scores an mIoU of about
# 20% over the four classes; a uniform random guess about 12%. The run below reached 47.5% (measured on this
# machine, 2 epochs of 6 steps, ResNet-50 with one block per stage + Semantic FPN).
MIOU_FLOOR = 35.0


@pytest.mark.slow
def test_train_eval_and_resume_on_the_shapes_set(tmp_path, capsys):
    data = make_synthetic_segmentation(tmp_path / "shapes", train=48, val=16, size=(96, 128))
    out = tmp_path / "run"
    common = ["--task", "segment", "--head", "semantic_fpn", "--model", "resnet50", "--data", str(data)]
    sets = [
        "--set",
        "model_kwargs={depths: [1, 1, 1, 1]}",
        "--set",
        "crop_size=[96, 96]",
        "--set",
        "scale=[128, 96]",
        "--set",
        "test_scale=null",
    ]
    args = [
        "train",
        *common,
        *sets,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.01",
        "--schedule",
        "poly",
        "--output",
        str(out),
        "--threads",
        "1",
        "--workers",
        "0",
    ]
    assert main([*args, "--max-steps", "6"]) == 0  # stops after the first epoch
    assert main(["train", "--resume", "--output", str(out), "--max-steps", "12", "--threads", "1"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 12
    capsys.readouterr()
    assert main(["eval", "--task", "segment", "--checkpoint", str(out / "last.pt"), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["mIoU"] > MIOU_FLOOR, metrics
    assert metrics["mIoU"] == pytest.approx(records[-1]["val_mIoU"])
    assert len(list((out / "overlays").glob("*_overlay.png"))) == 4
