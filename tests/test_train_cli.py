"""``glocal train / eval / predict`` end to end: SIGKILL and resume, data-parallel agreement, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from glocal import create_model
from glocal.cli import main
from glocal.engine import TrainConfig, load_recipe, load_train_state
from tests.test_data import write_image_tree

GLOCAL = str(Path(sys.executable).parent / "glocal")
TINY = {
    "model": "resnet50",
    "model_kwargs": {"depths": [1, 1, 1, 1], "widths": [4, 4, 8, 8], "stem_width": 8},
    "img_size": 32,
    "batch_size": 8,
    "lr": 0.05,
    "warmup_epochs": 1,
    "hflip": 0.5,
    "crop_scale": [0.5, 1.0],
    "threads": 1,
}
# BatchNorm normalises each rank's slice on its own, so data-parallel agreement is checked on a norm-per-token model.
# SGD, not Adam: Adam rescales the rounding noise of gradients that are analytically zero (the key bias) to full
# steps, which no two summation orders agree on.
TINY_VIT = {
    "model": "vit_tiny_patch16_224",
    "model_kwargs": {"patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2},
    "img_size": 32,
    "batch_size": 8,
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 1.0e-4,
    "label_smoothing": 0.1,
    "threads": 1,
}


def recipe(tmp_path: Path, values: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_train_state(run / "last.pt")["model"]


def test_sigkilled_run_resumes_to_the_same_weights(tmp_path, tree):
    """Kill a training process with SIGKILL after its first checkpoint; --resume ends where an unbroken run ends."""
    args = ["train", "-c", recipe(tmp_path, TINY), "--data", str(tree), "--epochs", "12", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([GLOCAL, *args, "--output", str(killed)], env=env, stderr=subprocess.PIPE)
    while not (killed / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read().decode()
    done_before_kill = load_train_state(killed / "last.pt")["epoch"]
    assert 1 <= done_before_kill < 12

    assert main(["train", "--output", str(killed), "--resume", "--quiet"]) == 0  # options from its config.yaml
    assert main([*args, "--output", str(tmp_path / "unbroken")]) == 0
    resumed, unbroken = weights(killed), weights(tmp_path / "unbroken")
    for name, value in unbroken.items():
        assert torch.equal(resumed[name], value), f"{name} differs after SIGKILL and resume"
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 13))
    assert yaml.safe_load((killed / "config.yaml").read_text())["epochs"] == 12


def test_two_processes_agree_with_one_on_the_global_batch(tmp_path, tree):
    """torchrun with 2 CPU processes (gloo) and a single process on the same global batch end with the same weights."""
    args = ["train", "-c", recipe(tmp_path, TINY_VIT), "--data", str(tree), "--epochs", "2", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", GLOCAL]
    proc = subprocess.run([*ddp, *args, "--output", str(tmp_path / "ddp")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*args, "--output", str(tmp_path / "single")]) == 0
    two, one = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=f"{name} differs")
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val_count"] == 8 and log[-1]["step"] == 8


def test_train_eval_predict_and_fine_tune(tmp_path, tree, capsys):
    (tree / "train" / "cat" / "junk.jpg").write_bytes(b"not a jpeg")
    try:
        run = tmp_path / "run"
        assert (
            main(["train", "-c", recipe(tmp_path, TINY), "--data", str(tree), "--epochs", "1", "--output", str(run)])
            == 0
        )
    finally:
        (tree / "train" / "cat" / "junk.jpg").unlink()
    out = capsys.readouterr().out
    assert "skipped 1 unreadable file" in out and "validation top-1" in out and str(run / "last.pt") in out
    assert (run / "model" / "model.safetensors").is_file()

    png = tmp_path / "confusion.png"
    args = ["eval", "--checkpoint", str(run / "last.pt"), "--data", str(tree)]
    assert main([*args, "--confusion", str(png), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 8 and set(metrics["per_class"]) == {"cat", "dog"}
    assert png.read_bytes()[:4] == b"\x89PNG"

    image = str(tree / "val" / "dog" / "0.png")
    assert main(["predict", "--checkpoint", str(run / "last.pt"), image, "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert {t["label"] for t in top} == {"cat", "dog"}
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)

    # Fine-tune the exported weights on three classes: the classifier is re-made, the rest loads.
    three = tmp_path / "three"
    write_image_tree(three / "train", classes=("a", "b", "c"), per_class=4)
    write_image_tree(three / "val", classes=("a", "b", "c"), per_class=2)
    args = ["train", "-c", recipe(tmp_path, TINY), "--data", str(three), "--max-steps", "1", "--quiet"]
    assert main([*args, "--checkpoint", str(run / "model"), "--output", str(tmp_path / "ft")]) == 0
    assert weights(tmp_path / "ft")["fc.weight"].shape == (3, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "gcresnet5"], "Did you mean: gcresnet50"),
        (["train", "--model", "resnet50", "--data", "/no/such/dir"], "'/no/such/dir' does not exist"),
        (["eval", "--checkpoint", "/no/such.pt"], "no checkpoint file or folder at /no/such.pt"),
        (["train", "-c", "/no/recipe.yaml"], "recipe '/no/recipe.yaml' does not exist"),
        (["train", "--model", "resnet50", "--set", "lrr=1"], "did you mean lr"),
    ],
)
def test_bad_input_says_what_is_wrong(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_empty_class_stops_with_a_clear_message(tmp_path, capsys):
    write_image_tree(tmp_path / "d" / "train")
    write_image_tree(tmp_path / "d" / "val")
    (tmp_path / "d" / "train" / "empty").mkdir()
    assert main(["train", "--model", "resnet50", "--data", str(tmp_path / "d")]) == 2
    assert "has no readable images" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_parse_and_build(path):
    recipe = load_recipe(path)
    if recipe.get("task") == "segment":
        from glocal.engine.segment import SegmentConfig, build_segmenter

        cfg = SegmentConfig.from_dict({**recipe, "data": str(path.parent)})
        cfg.validate()
        with torch.device("meta"):
            model = build_segmenter(cfg, 10)
        assert model.decode_head.conv_seg.out_channels == 10
        return
    cfg = TrainConfig.from_dict(recipe)
    cfg.validate()
    with torch.device("meta"):
        model = create_model(cfg.model, num_classes=10, img_size=cfg.img_size, **cfg.model_kwargs)
    assert model.num_classes == 10
