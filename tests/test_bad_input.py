"""Bad input at every boundary gets glocal's own clear error (type or exit status, and a message naming what was
expected), or is handled correctly and says so; nothing is left behind by interrupted writes.

Each case asserts the exception type (API) or exit status (CLI) and the message. The malicious-pickle cases are in
tests/test_unpickling.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import glocal
from glocal.cli import main as cli_main
from glocal.data.datasets import ImageFolder, load_image
from glocal.engine.config import TrainConfig
from glocal.weights import CheckpointError, open_checkpoint, save_checkpoint

SMALL = dict(depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8)


@pytest.fixture(scope="module")
def resnet():
    return glocal.create_model("resnet50", num_classes=3, **SMALL).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, resnet):
    """A saved model folder (resnet50 at small widths, 3 classes)."""
    return save_checkpoint(resnet, tmp_path_factory.mktemp("ckpt") / "model", classes=("a", "b", "c"))


def cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ input tensors
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_converted_with_a_warning(resnet, dtype):
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match=f"converting the {dtype} input to torch.float32"):
        out = resnet(x.to(dtype))
    assert out.dtype == torch.float32
    assert torch.allclose(out, resnet(x.to(dtype).float()), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool])
def test_integer_and_boolean_images_are_refused(resnet, dtype):
    with pytest.raises(TypeError, match=f"floating-point images.*got {dtype}"):
        resnet(torch.zeros(2, 3, 64, 64, dtype=dtype))


@pytest.mark.parametrize("given", [[[0.0] * 4] * 3, np.zeros((1, 3, 64, 64), np.float32), 1.0, None])
def test_non_tensors_are_refused(resnet, given):
    with pytest.raises(TypeError, match=r"expects a torch.Tensor of shape \(B, C, H, W\)"):
        resnet(given)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(resnet, value):
    x = torch.zeros(2, 3, 64, 64)
    x[1, 2, 3, 4] = value
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        resnet(x)


def test_finite_values_whose_sum_overflows_are_accepted(resnet):
    x = torch.full((2, 3, 64, 64), 3e38)  # the fast check's sum is infinite: the exact check decides
    x[0] = -3e38  # the first half's sum is -inf, the second +inf: a NaN sum, still all finite
    assert resnet(x).shape == (2, 3)


def test_a_batch_of_one_in_training_mode_with_batch_norm(resnet):
    resnet.train()
    try:
        with pytest.raises(ValueError, match="BatchNorm layers in training mode.*at batch 1 and 32x32 its last"):
            resnet(torch.randn(1, 3, 32, 32))
        assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 3)
        assert resnet(torch.randn(1, 3, 64, 64)).shape == (1, 3)  # a 2x2 last map: statistics over 4 positions
    finally:
        resnet.eval()
    assert resnet(torch.randn(1, 3, 32, 32)).shape == (1, 3)  # eval mode: running statistics
    vit = glocal.create_model("vit_tiny_patch16_224", depth=1, img_size=32).train()  # LayerNorm only
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_activations_that_cannot_fit_are_refused_before_the_forward():
    model = glocal.create_model("resnet50").eval()
    x = torch.empty(1, 3, 16384, 16384)  # never touched: the refusal comes first
    with pytest.raises(ValueError, match=r"16384x16384 needs at least \d+\.\d GiB.*GiB of memory are available"):
        model(x)


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 3, 64, 64), (64,)])
def test_wrong_rank(resnet, shape):
    with pytest.raises(ValueError, match=r"expects a 4-D \(B, 3, H, W\) tensor"):
        resnet(torch.zeros(shape))


# ------------------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(num_classes="10"), TypeError, "num_classes must be an integer >= 0, got '10'"),
        (dict(num_classes=-1), ValueError, "num_classes must be an integer >= 0, got -1"),
        (dict(num_classes=2.0), TypeError, "num_classes must be an integer"),
        (dict(num_classes=True), TypeError, "num_classes must be an integer"),
        (dict(in_chans=0), ValueError, "in_chans must be an integer >= 1, got 0"),
        (dict(in_chans=-1), ValueError, "in_chans must be an integer >= 1, got -1"),
        (dict(in_chans="3"), TypeError, "in_chans must be an integer"),
        (dict(features_only=True, out_indices="12"), TypeError, "out_indices must be an integer or a list"),
        (dict(features_only=True, out_indices=[1.5]), TypeError, "out_indices must be an integer or a list"),
        (dict(depths="3463"), TypeError, "'depths' must be a list of integers, got '3463'"),
        (dict(depths=(3, 4, "6", 3)), TypeError, r"'depths'\[2\] must be an integer, got '6'"),
        (dict(widths=(64, 128, 256, 10**9)), ValueError, "outside the sane range"),
        (dict(depths=(3, 4, 100000, 3)), ValueError, "outside the sane range"),
        (dict(block_attn=5), TypeError, "'block_attn' must be"),
        (dict(bogus=1), TypeError, r"unknown keyword argument\(s\) \['bogus'\]"),
    ],
)
def test_create_model_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        glocal.create_model("resnet50", **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("vit_tiny_patch16_224", dict(embed_dim="192"), TypeError, "'embed_dim' must be an integer, got '192'"),
        ("vit_tiny_patch16_224", dict(depth=100000), ValueError, "outside the sane range"),
        ("vit_tiny_patch16_224", dict(depth=2000), ValueError, "more than 1024 blocks"),
        ("vit_tiny_patch16_224", dict(mlp_ratio="4"), TypeError, "'mlp_ratio' must be a number, got '4'"),
        ("vit_tiny_patch16_224", dict(mlp_ratio=float("nan")), ValueError, "'mlp_ratio' must be a finite number"),
        ("twins_svt_small", dict(embed_dims=64), TypeError, "'embed_dims' must be a list of integers, got 64"),
        ("volo_d1_224", dict(depths=(4, 4, 8, -20000)), ValueError, "outside the sane range"),
        ("twins_pcpvt_small", dict(img_size=16), ValueError, "at least 32, so it cannot be built for img_size 16x16"),
    ],
)
def test_architecture_overrides_of_every_family(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        glocal.create_model(name, **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoint configs
def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(num_classes="1000"), "'num_classes' must be an integer or null, got '1000'"),
        (lambda c: c.update(num_classes=-3), "'num_classes' must be at least 0"),
        (lambda c: c.update(in_chans=0), "'in_chans' must be at least 1"),
        (
            lambda c: c["data_config"].update(input_size=[3, "a"]),
            "input_size' must be a list of 3 .an integer, an integer, an integer.",
        ),
        (lambda c: c["data_config"].update(input_size=[3, -32, 32]), "input_size must be positive"),
        (lambda c: c["data_config"].update(mean="0.5"), "'mean' must be a list of numbers or null"),
        (lambda c: c.update(classes="abc"), "'classes' must be a list of strings or null"),
        (lambda c: c.update(model_name=7), "'model_name' must be a string or null"),
        (lambda c: c["config"].update(stem_width="16"), "'stem_width' must be an integer, got '16'"),
        (lambda c: c["config"].update(depths=[1, 1, 100000, 1]), "outside the sane range"),
    ],
)
def test_checkpoint_configs_are_checked_before_building(folder, tmp_path, edit, message):
    edited = _edited(folder, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        glocal.create_model(checkpoint=edited)


def test_a_config_that_is_not_a_mapping(folder, tmp_path):
    edited = tmp_path / "list"
    edited.mkdir()
    for f in folder.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    (edited / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a glocal config.json"):
        open_checkpoint(edited)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int8])
def test_integer_tensors_are_not_loaded_into_float_parameters(resnet, dtype):
    state = {k: v.to(dtype) if k == "fc.weight" else v for k, v in resnet.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"non-floating tensor.*fc.weight \\({dtype}\\)"):
        glocal.weights.load_state_dict(glocal.create_model("resnet50", num_classes=3, **SMALL), state)


# ------------------------------------------------------------------------------------------------ images
def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_truncated_jpeg_is_skipped_at_the_scan_not_mid_epoch(tmp_path, caplog):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / cls / f"{i}.jpg", quality=95)
    good = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "0.jpg").write_bytes(good[: len(good) // 2])  # PIL's verify() passes this one
    dataset = ImageFolder(tmp_path, 32)
    assert dataset.skipped == [str(tmp_path / "a" / "0.jpg")]
    assert len(dataset) == 3
    assert "not a readable image" in caplog.text
    assert all(dataset[i][0].shape == (3, 32, 32) for i in range(len(dataset)))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path, 64).float()
    expected = torch.from_numpy(ramp.astype(np.float64) / 257).float()
    assert (image[0] - expected).abs().max() <= 1.0
    assert 120 < image.mean() < 135  # clipping at 255 made this ~250


def test_decompression_bomb_is_reported_in_glocals_words(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", np.zeros((300, 300, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 300x300 is more than twice the limit: PIL refuses it
    with pytest.raises(ValueError, match="decompression-bomb limit of 1000 pixels"):
        load_image(path, 32)


@pytest.mark.parametrize("content", [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_non_images_are_reported(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="x.png is not a readable image"):
        load_image(path, 32)


def test_predict_on_non_image_and_truncated_files(capsys, folder, tmp_path):
    (tmp_path / "text.png").write_text("hello")
    good = _png(tmp_path / "good.png", np.zeros((32, 32, 3), np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    for name, why in (("text.png", "not an image"), ("cut.png", "truncated")):
        code, err = cli(capsys, "predict", "--checkpoint", folder, tmp_path / name)
        assert code == 2
        assert f"{name} is not a readable image" in err and why in err
        assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ recipes, flags
BAD_OPTIONS = [
    ("epochs", "abc", TypeError, "'epochs' must be an integer, got 'abc'"),
    ("epochs", 2.5, TypeError, "'epochs' must be an integer, got 2.5"),
    ("epochs", 0, ValueError, "epochs and batch_size must be positive"),
    ("batch_size", 0, ValueError, "epochs and batch_size must be positive"),
    ("lr", "fast", TypeError, "'lr' must be a number, got 'fast'"),
    ("lr", float("nan"), ValueError, "'lr' must be a finite number"),
    ("lr", -0.1, ValueError, r"lr must be in \(0, inf\)"),
    ("lr", 0, ValueError, r"lr must be in \(0, inf\)"),
    ("crop_scale", 5, TypeError, "'crop_scale' must be a list of 2"),
    ("crop_scale", [1, 0], ValueError, "crop_scale must be .min, max. with 0 < min <= max <= 1"),
    ("crop_scale", [0.5, 2], ValueError, "crop_scale must be"),
    ("crop_ratio", [2, 1], ValueError, "crop_ratio must be"),
    ("label_smoothing", 5, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ("label_smoothing", 1.0, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ("threads", 0, ValueError, "threads must be at least 1"),
    ("workers", -1, ValueError, "workers must be 0 or more"),
    ("seed", -1, ValueError, "seed must be a non-negative integer"),
    ("seed", "x", TypeError, "'seed' must be an integer"),
    ("img_size", -5, ValueError, "img_size must be one positive size"),
    ("img_size", [3, "a"], TypeError, "'img_size' must be"),
    ("momentum", 1.5, ValueError, r"momentum must be in \[0, 1\)"),
    ("weight_decay", -1e-4, ValueError, "weight_decay must be in"),
    ("hflip", 2, ValueError, r"hflip must be in \[0, 1\]"),
    ("mixup", -1, ValueError, "mixup must be in"),
    ("ema_decay", 1.0, ValueError, r"ema_decay must be in \(0, 1\)"),
    ("clip_grad", 0, ValueError, "clip_grad must be a positive"),
    ("warmup_epochs", -1, ValueError, "warmup_epochs must be in"),
    ("crop_pct", 0, ValueError, r"crop_pct must be in \(0, 2\]"),
    ("optimizer", "adam", ValueError, "optimizer must be one of"),
    ("schedule", 3, TypeError, "'schedule' must be a string"),
    ("model_kwargs", [1], TypeError, "'model_kwargs' must be a mapping"),
    ("resume", "yes", TypeError, "'resume' must be true or false"),
]


@pytest.mark.parametrize(
    ("key", "value", "error", "message"), BAD_OPTIONS, ids=[f"{k}={v}" for k, v, *_ in BAD_OPTIONS]
)
def test_training_options(key, value, error, message):
    with pytest.raises(error, match=message):
        TrainConfig.from_dict({"model": "resnet50", key: value}).validate()


def test_yaml_one_one_exponents_are_numbers():
    """PyYAML reads 1e12 (no dot) as a string; where a number is expected it is one."""
    cfg = TrainConfig.from_dict({"model": "resnet50", "step_gamma": yaml.safe_load("1e12"), "lr": "5e-4"})
    assert cfg.step_gamma == 1e12 and cfg.lr == 5e-4


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("epochs: [1\n", "is not valid YAML at line 2"),
        ("x: !!python/object:os.system 'echo hi'\n", "could not determine a constructor"),
        ("x: !!python/name:os.system\n", "could not determine a constructor"),
        ("- 1\n- 2\n", "must be a mapping of option: value"),
        ("epochz: 3\n", "unknown training option.*'epochz' \\(did you mean epochs"),
    ],
)
def test_recipes(capsys, tmp_path, recipe, message):
    (tmp_path / "r.yaml").write_text(recipe)
    code, err = cli(capsys, "train", "-c", tmp_path / "r.yaml", "--model", "resnet50")
    assert code == 2
    assert "glocal train: error:" in err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "epochs=abc"], "'epochs' must be an integer, got 'abc'"),
        (["--set", "lr=fast"], "'lr' must be a number, got 'fast'"),
        (["--set", "crop_scale=5"], "'crop_scale' must be a list of 2"),
        (["--set", "crop_scale=[1,0]"], "crop_scale must be"),
        (["--set", "model_kwargs={foo: 1}"], r"unknown keyword argument\(s\) \['foo'\]"),
        (["--set", "epochs"], "--set expects KEY=VALUE"),
        (["--set", "crop_scale=[1,"], "--set 'crop_scale=\\[1,': the value is not valid YAML"),
        (["--label-smoothing", "5"], r"label_smoothing must be in \[0, 1\)"),
        (["--lr", "nan"], "'lr' must be a finite number"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
        (["--img-size", "-5"], "--img-size takes one size or a height and a width"),
        (["--img-size", "1", "2", "3"], "--img-size takes one size or a height and a width"),
        (["--batch-size", "0"], "epochs and batch_size must be positive"),
        (["--epochs", "x"], "argument --epochs: invalid int value"),
    ],
)
def test_train_flags(capsys, tmp_path, argv, message):
    try:
        code, err = cli(capsys, "train", "--model", "resnet50", "--output", tmp_path / "run", "--max-steps", "1", *argv)
    except SystemExit as exit_:  # argparse's own errors
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("k", ["0", "-1", "x"])
def test_predict_top_k(capsys, folder, tmp_path, k):
    image = _png(tmp_path / "i.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["predict", "--checkpoint", str(folder), str(image), "--top-k", k])
    assert exit_.value.code == 2
    assert "argument --top-k: expected a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("opset", ["5", "16", "99"])
def test_export_opset(capsys, folder, tmp_path, opset):
    code, err = cli(capsys, "export", "--checkpoint", folder, "--opset", opset, "--output", tmp_path / "m.onnx")
    assert code == 2
    assert "ONNX opset must be an integer from 17 to" in err and f"got {opset}" in err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------ files
def test_save_checkpoint_onto_a_regular_file(resnet, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file; a glocal checkpoint is a folder"):
        save_checkpoint(resnet, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_convert_onto_a_non_empty_folder(capsys, folder, tmp_path):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    code, err = cli(capsys, "convert", "--checkpoint", folder, "--output", tmp_path / "dst")
    assert code == 2 and "exists and is not a glocal checkpoint folder; refusing to replace it" in err
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"


def test_export_under_a_path_whose_parent_is_a_file(capsys, folder, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, err = cli(capsys, "export", "--checkpoint", folder, "--output", tmp_path / "afile" / "m.onnx")
    assert code == 2 and "afile is a file, not a folder" in err


@pytest.mark.parametrize(("number", "words"), [(errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only")])
def test_full_or_read_only_filesystem(capsys, folder, tmp_path, monkeypatch, number, words):
    """Root ignores permission bits and no small filesystem can be mounted here, so the write layer is made to fail
    as a full or read-only filesystem makes it fail (OSError with that errno from the write)."""
    save_checkpoint(glocal.create_model(checkpoint=folder), tmp_path / "dst")
    before = (tmp_path / "dst" / "model.safetensors").read_bytes()

    def fail(self, data):
        raise OSError(number, os.strerror(number), str(self))

    monkeypatch.setattr(Path, "write_bytes", fail)
    code, err = cli(capsys, "convert", "--checkpoint", folder, "--output", tmp_path / "dst")
    monkeypatch.undo()
    assert code == 2 and words in err and "glocal convert: error: cannot write or read" in err
    assert (tmp_path / "dst" / "model.safetensors").read_bytes() == before  # the old copy stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]  # no temporaries left


def test_truncated_and_malicious_training_states(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: resnet50\n")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for content in ("truncated", "malicious"):
        if content == "truncated":
            torch.save({"model": {"a": torch.zeros(100)}}, run / "last.pt")
            (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:300])
        else:
            torch.save({"model": {"a": torch.zeros(1)}, "x": Exploit()}, run / "last.pt")
        code, err = cli(capsys, "train", "--resume", "--output", run)
        assert code == 2 and "last.pt is not a glocal training state" in err, err
        image = _png(tmp_path / "i.png", np.zeros((32, 32, 3), np.uint8))
        for argv in (["eval"], ["predict", image]):
            code, err = cli(capsys, *argv, "--checkpoint", run / "last.pt")
            assert code == 2 and "last.pt" in err and ("refused" in err or "not a readable" in err), err
            assert "Traceback" not in err
    assert not marker.exists()


def test_stale_temporaries_of_dead_writers_are_removed(resnet, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale_dir = tmp_path / f".model.{pid}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".model.{pid}.def.tmp"
    stale_file.write_bytes(b"y")
    live = tmp_path / f".model.{os.getpid()}.ghi.tmp"  # a writer that is still running: kept
    live.mkdir()
    save_checkpoint(resnet, tmp_path / "model")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists()


_KILL_BETWEEN_RENAMES = """
import os, signal, sys
import glocal
model = glocal.create_model("resnet50", num_classes=3, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8)
torch_replace = os.replace
calls = []
def replace(src, dst):
    calls.append(dst)
    torch_replace(src, dst)
    if str(dst).endswith(".previous"):  # the old folder is set aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
glocal.save_checkpoint(model, sys.argv[1])
"""


def test_a_kill_between_the_two_renames_of_a_save_is_recovered(resnet, tmp_path):
    dst = tmp_path / "model"
    save_checkpoint(resnet, dst)
    expected = glocal.create_model(checkpoint=dst).state_dict()
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(dst)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists() and (tmp_path / ".model.previous").is_dir()  # the state the kill leaves
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = glocal.create_model(checkpoint=dst).state_dict()  # the next load rolls the swap back
    assert all(torch.equal(restored[k], v) for k, v in expected.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_finished_swap_whose_cleanup_was_killed(resnet, tmp_path):
    dst = save_checkpoint(resnet, tmp_path / "model")
    (tmp_path / ".model.previous").mkdir()
    (tmp_path / ".model.previous" / "model.safetensors").write_bytes(b"old")
    open_checkpoint(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_torn_config_yaml_is_tolerated_on_resume(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", "-c", "configs/digits.yaml", "--output", run, "--max-steps", "2", "--quiet")[0] == 0
    (run / "config.yaml").write_text("model: [gcres")
    code, err = cli(capsys, "train", "--resume", "--output", run, "--max-steps", "4", "--quiet")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 4
