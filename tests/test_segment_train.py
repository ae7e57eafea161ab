"""``glocal train --task segment`` and ``glocal eval --task segment`` end to end on the generated shapes set: the run
folder a classification run writes, rebuilding from the checkpoint alone, exact resume, two processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glocal
from glocal.cli import main
from glocal.data.segmentation import IGNORE_INDEX, SegmentationDataset, make_synthetic_segmentation
from glocal.engine import load_train_state
from glocal.engine.segment import SegmentConfig, evaluate_segment, train_segment
from glocal.weights import CheckpointError, open_checkpoint
from tests.test_engine import TINY_RESNET, assert_resumed_exactly, flip_recorded_routes
from tests.test_train_cli import TINY_VIT

# Chance level: predicting every pixel as background (about 80% of the labelled pixels) scores an mIoU of about
# 20% over the four classes; a uniform random guess about 12%. The run below reached 47.5% (measured on this
# machine, 2 epochs of 6 steps, ResNet-50 with one block per stage + Semantic FPN).
MIOU_FLOOR = 35.0

# A segmenter small enough for a run of a few seconds: tiny ResNet, 16-channel heads, 32x32 crops.
TINY_SETS = [
    "--set", f"model_kwargs={json.dumps(TINY_RESNET)}", "--set", "head_channels=16", "--set", "crop_size=[32, 32]",
    "--set", "scale=[48, 32]", "--set", "test_scale=null",
]  # fmt: skip


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "segment", "--head", "semantic_fpn", "--model", "resnet50", "--data", str(data), *TINY_SETS,
        "--epochs", "2", "--batch-size", "4", "--optimizer", "adamw", "--lr", "1e-3", "--schedule", "poly",
        "--ema-decay", "0.9", "--output", str(out), "--threads", "1", "--workers", "0", "--quiet", *extra,
    ]  # fmt: skip


def tiny_config(data: Path, out: Path, **overrides) -> SegmentConfig:
    values = dict(
        model="resnet50", head="semantic_fpn", data=str(data), model_kwargs=TINY_RESNET, head_channels=16,
        crop_size=(32, 32), scale=(48, 32), test_scale=None, epochs=2, batch_size=4, optimizer="adamw", lr=1e-3,
        schedule="poly", ema_decay=0.9, clip_grad=1.0, output=str(out), threads=1, workers=0,
    )  # fmt: skip
    return SegmentConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_synthetic_segmentation(tmp_path_factory.mktemp("seg") / "shapes", train=8, val=4, size=(32, 48))


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segrun") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the per-test CPU-route cache is not set up yet
        mp.setenv("GLOCAL_CACHE_DIR", str(out.parent / "glocal-cache"))
        assert main(tiny_args(shapes, out)) == 0
    return out


def test_a_segment_run_writes_what_a_classification_run_writes(run):
    assert {p.name for p in run.iterdir()} >= {"last.pt", "model", "best", "log.jsonl", "curves.png", "config.yaml"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and {"train_aAcc", "val_mIoU", "ema_val_mIoU"} <= records[0].keys()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["task"] == "segment" and config["model_name"] == "resnet50" and config["num_classes"] == 4
    assert config["classes"] == ["background", "circle", "rectangle", "triangle"]
    assert config["config"]["depths"] == [1, 1, 1, 1] and config["data_config"]["input_size"] == [3, 32, 32]
    assert config["segment"] | {"palette": None} == {
        "head": "semantic_fpn", "head_channels": 16, "reduce_zero_label": False, "palette": None, "test_scale": None,
        "eval_mode": "whole", "crop_size": [32, 32], "slide_stride": [341, 341],
    }  # fmt: skip
    # model/: the better of the live and EMA weights at the end; best/: the best epoch by validation mIoU.
    last = records[-1]
    chosen = "EMA" if last["ema_val_mIoU"] > last["val_mIoU"] else "live"
    assert config["metrics"]["weights"] == chosen and config["metrics"]["step"] == 4
    assert config["metrics"]["val_mIoU"] == max(last["val_mIoU"], last["ema_val_mIoU"])
    best = json.loads((run / "best" / "config.json").read_text())["metrics"]
    assert best["val_mIoU"] == max(max(r["val_mIoU"], r["ema_val_mIoU"]) for r in records)
    state = load_train_state(run / "last.pt")
    assert state["task"] == "segment"
    assert state["best_score"] == best["val_mIoU"]


def test_a_segmenter_is_rebuilt_from_its_checkpoint_alone(run, shapes, capsys):
    state = load_train_state(run / "last.pt")
    which = json.loads((run / "model" / "config.json").read_text())["metrics"]["weights"]
    for path, key in ((run / "model", "model_ema" if which == "EMA" else "model"), (run / "last.pt", "model")):
        ckpt = open_checkpoint(path)
        assert ckpt.task == "segment" and ckpt.segment["head"] == "semantic_fpn" and ckpt.model_name == "resnet50"
        segmenter = glocal.create_segmenter(checkpoint=path)
        assert segmenter.head_name == "semantic_fpn" and segmenter.num_classes == 4
        assert segmenter.inference.crop_size == (32, 32) and segmenter.inference.test_scale is None
        for name, value in segmenter.state_dict().items():
            assert torch.equal(value, state[key][name]), f"{path}: {name}"
    with pytest.raises(ValueError, match="head='upernet' contradicts the checkpoint"):
        glocal.create_segmenter(head="upernet", checkpoint=run / "model")
    with pytest.raises(ValueError, match="'vit_tiny_patch16_224' contradicts the checkpoint"):
        glocal.create_segmenter("vit_tiny_patch16_224", checkpoint=run / "model")
    with pytest.raises(ValueError, match="num_classes=150 contradicts"):
        glocal.create_segmenter(num_classes=150, checkpoint=run / "model")

    # glocal eval with the model folder alone: the task, backbone, head and settings are the checkpoint's.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "model"), "--data", str(shapes), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["mIoU"] == pytest.approx(open_checkpoint(run / "model").metrics["val_mIoU"])
    assert len(list((run / "overlays").glob("*_overlay.png"))) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "detect"}, "task 'detect', which this glocal does not know"),
        ({"segment": None}, "task 'segment' without its segment entry"),
        ({"segment": {"head": "semantic_fpn", "crop_size": "big"}}, "segment 'crop_size'"),
    ],
)
def test_a_damaged_segmenter_config_is_refused_in_words(run, tmp_path, change, message):
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        open_checkpoint(folder)


def test_fine_tuning_takes_the_segmenter_from_its_checkpoint(run, shapes, tmp_path):
    args = ["train", "--task", "segment", "--checkpoint", str(run / "model"), "--data", str(shapes), *TINY_SETS[4:]]
    out = tmp_path / "ft"
    assert main([*args, "--batch-size", "4", "--max-steps", "1", "--output", str(out), "--quiet"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["segment"]["head"] == "semantic_fpn" and config["segment"]["head_channels"] == 16
    assert config["config"]["depths"] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--task", "segment", "--model", "resnet101", "--data", "{data}"], "'resnet101' contradicts"),
        (["eval", "--task", "segment", "--head", "upernet", "--data", "{data}"], "head='upernet' contradicts"),
        (["eval", "--task", "classify"], "holds a segmenter (resnet50 + semantic_fpn, task 'segment')"),
        (["predict", "{data}/images/validation"], "holds a segmenter"),
        (["export", "--format", "onnx", "--output", "{run}/m.onnx"], "glocal.create_model and the commands"),
        (["train", "--data", "{data}", "--output", "{run}/ft"], "holds a segmenter"),
    ],
)
def test_classification_commands_and_contradicting_flags_refuse_a_segmenter(run, shapes, args, message, capsys):
    args = [a.format(data=shapes, run=run) for a in args]
    assert main([*args, "--checkpoint", str(run / "model")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_resume_from_a_stopped_segment_run_ends_with_the_same_weights(shapes, tmp_path):
    """The classification resume test's helpers on a segmentation run stopped mid-epoch: the same final live and
    EMA weights as an uninterrupted run, on the CPU routes the stopped run recorded (a ViT backbone on 64x64 crops:
    the routes are those of linear layers of at least 64 rows)."""
    vit = dict(model="vit_tiny_patch16_224", model_kwargs=TINY_VIT["model_kwargs"], crop_size=(64, 64), scale=(96, 64))
    full = train_segment(tiny_config(shapes, tmp_path / "full", **vit))
    stopped = train_segment(tiny_config(shapes, tmp_path / "resumed", max_steps=3, **vit))
    assert stopped.steps == 3 and load_train_state(stopped.checkpoint)["step_in_epoch"] == 1
    routes = flip_recorded_routes(stopped.checkpoint)
    resumed = train_segment(tiny_config(shapes, tmp_path / "resumed", resume=True, **vit))
    assert resumed.steps == full.steps == 4
    assert_resumed_exactly(full.checkpoint, resumed.checkpoint, routes)
    assert resumed.val.miou == full.val.miou
    assert [json.loads(line)["epoch"] for line in resumed.log.read_text().splitlines()] == [1, 2]


@pytest.mark.slow  # 30-45 s here, most of it two processes importing torch: `make test-slow` or `-m slow`
def test_two_processes_train_a_segmenter_and_score_the_whole_val_set(shapes, tmp_path):
    """``torchrun --nproc-per-node 2 -m glocal train --task segment`` on CPU (gloo): each rank evaluates half the
    validation images and the confusion matrices are summed, so the logged mIoU is the whole set's: equal to this
    process's evaluation of the saved weights over every image."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glocal"]
    out = tmp_path / "ddp"
    proc = subprocess.run([*ddp, *tiny_args(shapes, out)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    val = SegmentationDataset(shapes, "val")
    labelled = sum(int((val[i][1] != IGNORE_INDEX).sum()) for i in range(len(val)))
    assert record["step"] == 4 and record["val_pixels"] == labelled
    live = glocal.create_segmenter(checkpoint=out / "last.pt")
    assert evaluate_segment(live, val, device=torch.device("cpu")).miou == pytest.approx(record["val_mIoU"])
    assert (out / "model" / "config.json").is_file() and (out / "best" / "config.json").is_file()


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
    assert main(["eval", "--checkpoint", str(out / "model"), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["mIoU"] > MIOU_FLOOR, metrics
    assert metrics["mIoU"] == pytest.approx(records[-1]["val_mIoU"])
    assert len(list((out / "overlays").glob("*_overlay.png"))) == 4
