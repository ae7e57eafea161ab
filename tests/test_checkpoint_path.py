"""train -> eval -> predict -> export from one checkpoint identity (``open_checkpoint``), and the traps on the way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import glocal
from glocal.cli import build_parser, main
from glocal.engine import TrainConfig, load_train_state, restore_model, train
from glocal.engine.ema import ModelEma
from glocal.export import example_input, export_onnx
from glocal.weights import CheckpointError, open_checkpoint, save_checkpoint

GLOCAL = str(Path(sys.executable).parent / "glocal")
TINY = dict(depths=[1, 1, 1, 1], widths=[4, 4, 8, 8], stem_width=8)


def _config(out: Path, data: Path, **overrides) -> TrainConfig:
    values = dict(
        model="gcresnet50", model_kwargs=TINY, data=str(data), img_size=32, epochs=2, batch_size=8, lr=0.4,
        lr_base_size=64, warmup_epochs=0.5, output=str(out), crop_scale=(0.5, 1.0), ema_decay=0.99996, threads=1,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory, tree):
    """A short run with DeiT's EMA decay: model/, best/, last.pt, log.jsonl and curves.png."""
    return train(_config(tmp_path_factory.mktemp("run") / "run", tree))


def test_open_checkpoint_tells_the_kinds_apart_and_reads_a_state_once(run, tmp_path, monkeypatch):
    folder = open_checkpoint(run.weights)
    assert (folder.kind, folder.model_name, folder.num_classes) == ("glocal", "gcresnet50", 2)
    assert (
        folder.classes == ("cat", "dog") and folder.input_size == (32, 32) and folder.config["widths"] == TINY["widths"]
    )
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    state = open_checkpoint(run.checkpoint)
    model = glocal.create_model(checkpoint=state)
    assert len(loads) == 1 and state.kind == "train-state" and state.classes == ("cat", "dog")
    assert model.model_name == "gcresnet50" and model.num_classes == 2 and model.data_config.input_size == (3, 32, 32)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pth")
    foreign = open_checkpoint(tmp_path / "foreign.pth")
    assert foreign.kind == "file" and foreign.model_name is None and foreign.classes is None


def test_eval_predict_export_need_only_the_model_folder(run, tree, tmp_path, capsys):
    """The done-when sequence: no --model, the saved size and class names, the trained head exported."""
    assert main(["eval", "--checkpoint", str(run.weights), "--data", str(tree), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "gcresnet50" and metrics["img_size"] == [32, 32] and metrics["count"] == 8
    assert metrics["top1"] == pytest.approx(run.val.top1)  # the weights model/ holds, evaluated as training did

    assert main(["predict", "--checkpoint", str(run.weights), str(tree / "val" / "dog"), "--top-k", "1"]) == 0
    view, *lines = capsys.readouterr().out.splitlines()
    assert view.startswith("preprocessing: resize shorter side to 36 (bilinear), centre crop 32x32 (crop_pct 0.875)")
    assert len(lines) == 4 and all(re.search(r": (cat|dog) \d", line) for line in lines)
    assert main(["predict", "--checkpoint", str(run.weights), str(tree / "val" / "*" / "0.png"), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["predict", "--checkpoint", str(run.weights), str(tmp_path)]) == 2
    assert "no image found at" in capsys.readouterr().err

    for fmt in ("onnx", "torchscript", "program"):
        out = tmp_path / f"m.{fmt}"
        assert main(["export", "--checkpoint", str(run.weights), "--format", fmt, "--output", str(out)]) == 0
        printed = capsys.readouterr().out
        diff = float(re.search(r"max \|.* - eager\| = (\S+)", printed).group(1))
        assert diff <= 1e-4 and "2 classes" in printed and out.is_file()


def test_onnx_export_is_quiet_and_takes_care_of_a_small_example(run, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [GLOCAL, "export", "--checkpoint", str(run.weights), "--output", str(tmp_path / "m.onnx")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "Replaced initializer" not in output and "[torch.onnx]" not in output and "torchvision" not in output
    assert len(output.splitlines()) <= 6, output
    assert "fixed size 32x32" in output  # 32 px is below what dynamic sizes need: reported, exported at 32
    model = glocal.create_model(checkpoint=run.weights)
    with pytest.raises(ValueError, match="at least 64x64 px"):
        export_onnx(model, tmp_path / "x.onnx", example_input(model, (32, 32)))


def test_no_random_head_on_the_way_out(run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="refusing"):
        glocal.create_model(checkpoint=run.weights, num_classes=1000, new_classifier=False)
    body = {k: v for k, v in open_checkpoint(run.weights).tensors.items() if not k.startswith("fc.")}
    torch.save(body, tmp_path / "headless.pth")
    args = ["--checkpoint", str(tmp_path / "headless.pth"), "--model", "gcresnet50"]
    assert main(["export", *args, "--output", str(tmp_path / "x.onnx")]) == 2
    assert "random head" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["eval", *args]) == 2
    assert "random head" in capsys.readouterr().err
    # A foreign file's classifier size is read from it, not replaced by 1000 random outputs.
    torch.save({"model": open_checkpoint(run.weights).tensors}, tmp_path / "with_head.pth")
    model = glocal.create_model("gcresnet50", checkpoint=tmp_path / "with_head.pth", img_size=32, **TINY)
    assert model.num_classes == 2


def test_model_flag_is_optional_and_must_agree(run, tree, capsys):
    assert main(["eval", "--checkpoint", str(run.weights), "--model", "resnet50"]) == 2
    assert "contradicts" in capsys.readouterr().err
    args = ["eval", "--checkpoint", str(run.checkpoint), "--data", str(tree)]
    assert main([*args, "--model", "gcresnet50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "gcresnet50"
    assert main(["eval", "--checkpoint", str(run.weights)]) == 2  # cat/dog weights on the bundled digits
    assert "classes ('cat', 'dog')" in capsys.readouterr().err


def test_ema_warms_up_and_the_better_weights_are_saved(run):
    ema = ModelEma(torch.nn.Linear(2, 2), 0.99996)
    assert ema.decay_at(0) == 0.0 and 0.98 < ema.decay_at(460) < 0.995 and ema.decay_at(10**9) == 0.99996
    assert run.ema_val is not None and run.live_val is not None
    better = "EMA" if run.ema_val.top1 > run.live_val.top1 else "live"
    assert run.saved_weights == better and run.val.top1 == max(run.ema_val.top1, run.live_val.top1)
    # 8 steps of warmed-up EMA have left the initialisation: within a step's change of the live weights.
    state = load_train_state(run.checkpoint)
    live, averaged = state["model"]["conv1.weight"], state["model_ema"]["conv1.weight"]
    assert (live - averaged).abs().max() < 0.5 * live.abs().max()
    saved = json.loads((run.weights / "config.json").read_text())
    assert saved["classes"] == ["cat", "dog"] and saved["metrics"]["weights"] == better


def test_best_is_kept_and_curves_are_drawn(run):
    records = [json.loads(line) for line in run.log.read_text().splitlines()]
    best_top1 = max(max(r["val_top1"], r["ema_val_top1"]) for r in records)
    best = json.loads((run.best / "config.json").read_text())
    assert best["metrics"]["val_top1"] == pytest.approx(best_top1) and best["classes"] == ["cat", "dog"]
    assert run.curves == run.log.parent / "curves.png" and run.curves.read_bytes()[:4] == b"\x89PNG"


def test_lr_is_scaled_to_the_global_batch_and_logged(tree, tmp_path, caplog):
    assert TrainConfig(model="resnet50", lr=0.1, lr_base_size=256, batch_size=32, min_lr=1e-3).scaled_lr() == (
        pytest.approx(0.0125),
        pytest.approx(1.25e-4),
    )
    with caplog.at_level("INFO"):
        result = train(_config(tmp_path / "run", tree, epochs=1, max_steps=1, ema_decay=None, warmup_epochs=0))
    assert result.lr == pytest.approx(0.4 * 8 / 64) and "per 64 images, scaled to the global batch of 8" in caplog.text
    for name, base in (("resnet_sgd.yaml", 256), ("transformer_adamw.yaml", 512)):
        recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
        assert recipe["lr_base_size"] == base and "workers" not in recipe


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(tree, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "gcresnet50", "--set", f"model_kwargs={json.dumps(TINY)}", "--data", str(tree)]
    args += ["--img-size", "32", "--batch-size", "8", "--threads", "1", "--quiet", "--output", str(out)]
    # The second epoch's learning rate is 1e12 times the first's: the first checkpoint is good, then it diverges.
    args += [
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--schedule",
        "step",
        "--set",
        "step_epochs=[1]",
        "--set",
        "step_gamma=1.0e+12",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "the last good checkpoint is kept" in err and "Lower --lr" in err
    state = load_train_state(out / "last.pt")
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    assert (out / "curves.png").is_file() and (out / "best" / "config.json").is_file()


def test_threads_and_workers_fit_the_cpus_this_process_may_use(monkeypatch):
    from glocal.engine import trainer
    from glocal.engine.distributed import available_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert available_cpus() <= 2
    cfg = trainer._cpu_settings(TrainConfig(model="resnet50", data="/images", workers=8))
    assert cfg.workers <= 2 and cfg.threads >= 1 and cfg.workers + cfg.threads <= 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr("glocal.engine.distributed.available_cpus", lambda: 4)
    digits = trainer._cpu_settings(TrainConfig(model="resnet50"))
    folder = trainer._cpu_settings(TrainConfig(model="resnet50", data="/images"))
    assert (digits.workers, digits.threads) == (0, 4) and (folder.workers, folder.threads) == (3, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert trainer._cpu_settings(TrainConfig(model="resnet50")).threads == 2


def test_resume_of_nothing_says_so(tmp_path, capsys):
    assert main(["train", "--resume", "--output", str(tmp_path / "nonexistent")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_eval_uses_the_saved_input_size_of_a_vit(tmp_path):
    vit = glocal.create_model("vit_tiny_patch16_224", img_size=32, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    save_checkpoint(vit, tmp_path / "vit", classes=("a", "b", "c"))
    restored = restore_model(tmp_path / "vit")
    assert restored.img_size == (32, 32) and restored.classes == ("a", "b", "c")
    with pytest.raises(ValueError, match="2 class names given for a model with 3"):
        save_checkpoint(vit, tmp_path / "bad", classes=("a", "b"))


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "convert"])
def test_flags_are_spelled_the_same_and_help_shows_defaults(command, capsys):
    parser = build_parser()
    required = {"eval": ["--checkpoint", "c"], "predict": ["--checkpoint", "c", "x.png"], "export": []}
    required["convert"] = ["--checkpoint", "c", "--output", "o"]
    extra = required.get(command, [])
    assert parser.parse_args([command, *extra, "--img-size", "32", "48"]).img_size == (32, 48)
    assert parser.parse_args([command, *extra, "--img-size", "40", "--model", "resnet50"]).img_size == 40
    with pytest.raises(SystemExit):
        parser.parse_args([command, *extra, "--img-size", "1", "2", "3"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(default:" in capsys.readouterr().out


def test_eval_and_predict_do_not_import_the_trainer():
    code = "import sys, glocal.cli, glocal.engine.inference; print('glocal.engine.trainer' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "False"


def test_train_and_convert_take_the_checkpoint_alone(run, tree, tmp_path):
    args = ["train", "--checkpoint", str(run.weights), "--data", str(tree), "--batch-size", "8", "--max-steps", "1"]
    assert main([*args, "--threads", "1", "--quiet", "--output", str(tmp_path / "ft")]) == 0
    tuned = open_checkpoint(tmp_path / "ft" / "model")
    assert (
        tuned.model_name == "gcresnet50" and tuned.input_size == (32, 32) and tuned.config["widths"] == TINY["widths"]
    )
    assert main(["convert", "--checkpoint", str(run.checkpoint), "--output", str(tmp_path / "converted")]) == 0
    converted = open_checkpoint(tmp_path / "converted")
    assert converted.classes == ("cat", "dog") and converted.num_classes == 2 and converted.input_size == (32, 32)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["info", "resnet50"], "resnet50"),
        (["info", "--model", "resnet50"], "resnet50"),
        (["bench", "resnet50", "vit_*"], ["resnet50", "vit_*"]),
        (["bench", "--model", "resnet50", "vit_*"], ["resnet50", "vit_*"]),
        (["validate", "--model", "resnet50.a1_in1k", "--data", "d"], "resnet50.a1_in1k"),
        (["attention", "--model", "vit_tiny_patch16_224", "a.png", "b.png", "--out", "o"], "vit_tiny_patch16_224"),
        (["attention", "vit_tiny_patch16_224", "a.png", "b.png", "--out", "o"], "vit_tiny_patch16_224"),
    ],
)
def test_every_command_takes_the_model_as_model(argv, expected):
    """--model is the spelling of every subcommand; the ones that always need a model also take it first."""
    from glocal.cli import build_parser
    from glocal.cli._args import model_operand

    args = build_parser().parse_args(argv)
    assert model_operand(args, spill="images" if argv[0] == "attention" else None) == expected
    if argv[0] == "attention":
        assert args.images == ["a.png", "b.png"]
