"""The eval view end to end: ``create_transform`` as timm computes it, and the commands (eval, predict, validate,
attention, export, train) seeing images through it, for trained checkpoints and published weights (``--pretrained``).

Expected views are built here with PIL alone, from the rule timm's ``transforms_imagenet_eval`` and torchvision's
``Resize``/``CenterCrop`` follow (sizes worked out in the comments).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import glocal
from glocal.cli import main
from glocal.data import create_transform, normalize, open_dataset
from glocal.data.imagenet import imagenet1k_classes
from glocal.engine import TrainConfig, evaluate, restore_model, train
from glocal.weights import open_checkpoint
from tests.test_pretrained import _hub_cache, _image, _offline, synset_image_folder, view_by_hand

BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # the smallest hub tag: mean = std = 0.5, crop_pct 0.9, bicubic
TINY = dict(depths=[1, 1, 1, 1], widths=[4, 4, 8, 8], stem_width=8)


def _cfg(size, crop_pct, interpolation="bilinear") -> dict:
    return {"input_size": (3, *size), "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_pct": crop_pct,
            "interpolation": interpolation}  # fmt: skip


def _pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def test_longer_side_is_truncated_and_the_crop_rounded_as_torchvision():
    image = _image(300, 211)
    # floor(224 / 0.875) = 256; longer side int(256 * 300 / 211) = int(363.98) = 363 (not 364); crop left
    # round((363 - 224) / 2) = round(69.5) = 70, top (256 - 224) / 2 = 16.
    view = create_transform(_cfg((224, 224), 0.875), normalize=False)(image)
    expected = np.asarray(image.resize((363, 256), BILINEAR))[16:240, 70:294]
    assert view.dtype == torch.uint8 and torch.equal(view, _pixels(expected))


def test_crop_pct_above_one_resizes_smaller_and_pads_black_as_center_crop():
    """VOLO's d4/d5 448 and 512 tags (crop_pct 1.15): the image is resized below the crop and padded."""
    image = _image(500, 400)
    # floor(448 / 1.15) = 389: 486x389 (int(389 * 500 / 400) = 486); the height is padded by (448 - 389) // 2 = 29
    # rows above and 30 below, the width cropped at round((486 - 448) / 2) = 19.
    view = create_transform(_cfg((448, 448), 1.15, "bicubic"), normalize=False)(image)
    resized = np.asarray(image.resize((486, 389), BICUBIC))
    assert view.shape == (3, 448, 448)
    assert view[:, :29].eq(0).all() and view[:, 418:].eq(0).all()
    assert torch.equal(view[:, 29:418], _pixels(resized[:, 19:467]))


def test_non_square_input_scales_by_the_smaller_ratio():
    image = _image(300, 260)
    # scale size (floor(240 / 0.875), floor(320 / 0.875)) = (274, 365); ratio min(260 / 274, 300 / 365) = 300 / 365:
    # 365 x round(260 * 365 / 300) = 365 x 316; crop 240x320 at top round(76 / 2) = 38, left round(45 / 2) = 22.
    view = create_transform(_cfg((240, 320), 0.875), normalize=False)(image)
    assert torch.equal(view, _pixels(np.asarray(image.resize((365, 316), BILINEAR))[38:278, 22:342]))


def test_interpolation_names_normalisation_and_bad_configs():
    image = _image(64, 48)
    for name, resample in (("box", Image.Resampling.BOX), ("hamming", Image.Resampling.HAMMING)):
        # crop_pct 1.0 at 32: 42x32 (int(32 * 64 / 48) = 42), left round(10 / 2) = 5.
        view = create_transform(_cfg((32, 32), 1.0, name), normalize=False)(image)
        assert torch.equal(view, _pixels(np.asarray(image.resize((42, 32), resample))[:, 5:37]))
    transform = create_transform({**_cfg((32, 32), 1.0), "mean": (0.5,) * 3, "std": (0.25,) * 3})
    torch.testing.assert_close(transform(image), (transform.pixels(image).float() / 255 - 0.5) / 0.25)
    assert transform.describe() == (
        "resize shorter side to 32 (bilinear), centre crop 32x32 (crop_pct 1.0), normalise mean (0.5, 0.5, 0.5) "
        "std (0.25, 0.25, 0.25)"
    )
    with pytest.raises(ValueError, match=r"interpolation 'area' is not one of \['bicubic', 'bilinear', 'box'"):
        create_transform(_cfg((32, 32), 1.0, "area"))
    with pytest.raises(ValueError, match="train=True"):
        create_transform(_cfg((32, 32), 1.0), train=True)


def test_evaluate_refuses_images_that_are_not_the_view():
    digits = open_dataset(None, "val")  # 8x8, not in any view
    model = glocal.create_model("resnet50", num_classes=10, **TINY)
    with pytest.raises(ValueError, match=r"8x8, not the 32x32 eval view.*create_transform"):
        evaluate(model, digits, img_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=8, device="cpu")


def test_a_tag_sets_its_view_at_the_size_the_model_is_built():
    model = glocal.create_model("vit_small_patch16_224.augreg_in21k_ft_in1k", depth=1, img_size=160)
    assert model.data_config.input_size == (3, 160, 160) and model.data_config.mean == (0.5,) * 3
    assert create_transform(model.data_config).scale_size == (177, 177)  # floor(160 / 0.9)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A few steps on the bundled digits (8x8, upsampled to 32)."""
    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = TrainConfig(model="gcresnet50", model_kwargs=TINY, img_size=32, epochs=1, max_steps=8, batch_size=32,
                      lr=0.1, hflip=0.0, crop_scale=(0.85, 1.0), output=str(out), threads=1)  # fmt: skip
    return train(cfg)


def test_digits_checkpoint_eval_and_predict_see_the_validation_view(digits_run, tmp_path, capsys):
    """The view a digits run validates on is saved with it (whole image, bilinear); eval of the checkpoint and
    predict on the digits written as 8x8 PNGs give the validation figure and the same probabilities."""
    saved = open_checkpoint(digits_run.weights).data_config
    assert (saved["crop_pct"], saved["interpolation"], saved["input_size"]) == (1.0, "bilinear", (3, 32, 32))
    assert main(["eval", "--checkpoint", str(digits_run.weights), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 359 and metrics["top1"] == pytest.approx(digits_run.val.top1, abs=1e-9)
    assert metrics["preprocessing"].startswith("resize shorter side to 32 (bilinear), centre crop 32x32")

    val = open_dataset(None, "val")
    for i, image in enumerate(val.images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:03d}.png")
    assert main(["predict", "--checkpoint", str(digits_run.weights), str(tmp_path), "--top-k", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    restored = restore_model(digits_run.weights)
    mean, std = restored.mean, restored.std
    by_hand = torch.stack(
        [
            normalize(
                _pixels(np.asarray(Image.open(tmp_path / f"{i:03d}.png").resize((32, 32), BILINEAR)))[None], mean, std
            )[0]
            for i in range(len(val))
        ]  # fmt: skip
    )
    with torch.no_grad():
        probs = restored.model(by_hand).softmax(-1)
    top = probs.max(-1)
    assert [row["top"][0]["label"] for row in rows] == [str(i) for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([row["top"][0]["probability"] for row in rows]), top.values)
    hits = sum(row["top"][0]["label"] == str(label) for row, label in zip(rows, val.labels.tolist(), strict=True))
    assert 100 * hits / len(rows) == pytest.approx(metrics["top1"], abs=1e-9)


def test_training_validates_with_the_models_interpolation(tree, tmp_path, capsys):
    """Twins' data config says bicubic, crop 0.9: an ImageFolder run validates on that view and saves it; eval of
    the checkpoint reproduces the validation figure."""
    cfg = TrainConfig(model="twins_pcpvt_small", model_kwargs=dict(depths=[1, 1, 1, 1]), data=str(tree),
                      img_size=32, epochs=1, max_steps=1, batch_size=8, lr=1e-3, optimizer="adamw",
                      output=str(tmp_path / "run"), threads=1)  # fmt: skip
    run = train(cfg)
    saved = open_checkpoint(run.weights).data_config
    assert (saved["crop_pct"], saved["interpolation"]) == (0.9, "bicubic")
    assert main(["eval", "--checkpoint", str(run.weights), "--data", str(tree), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(run.val.top1, abs=1e-9)
    # The validation images are the bicubic view: floor(32 / 0.9) = 35 on the shorter side of the 20x16 images.
    view = open_dataset(tree, "val", transform=create_transform(saved, normalize=False).pixels)[0][0]
    image = Image.open(tree / "val" / "cat" / "0.png")
    # 43x35 (int(35 * 20 / 16) = 43), crop at left round(11 / 2) = 6, top round(3 / 2) = 2.
    assert torch.equal(view, _pixels(np.asarray(image.resize((43, 35), BICUBIC))[2:34, 6:38]))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        train(TrainConfig(model="resnet50", interpolation="area"))


@pytest.fixture
def vit_tiny_hub(tmp_path, monkeypatch):
    """The ViT-Ti augreg tag in an offline hub cache (glocal's names are timm's), and the source model."""
    torch.manual_seed(0)
    source = glocal.create_model("vit_tiny_patch16_224").eval()
    _hub_cache(tmp_path, monkeypatch, f"timm/{TAG}", source.state_dict())
    return source


def _tag_view(image: Image.Image) -> torch.Tensor:
    return view_by_hand(image, 248, 224, BICUBIC, (0.5,) * 3, (0.5,) * 3)  # floor(224 / 0.9) = 248


def test_predict_with_pretrained_prints_imagenet_names_and_the_view(vit_tiny_hub, tmp_path, capsys):
    paths = []
    for i, size in enumerate(((300, 260), (180, 240))):
        paths.append(str(tmp_path / f"{i}.png"))
        _image(*size).save(paths[-1])
    with torch.no_grad():
        probs = vit_tiny_hub(torch.stack([_tag_view(Image.open(p)) for p in paths])).softmax(-1)
    values, indices = probs.topk(3, dim=-1)
    names = imagenet1k_classes()
    assert main(["predict", *paths, "--model", "vit_tiny_patch16_224", "--pretrained", "--top-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, top_values, top_indices in zip(rows, values, indices, strict=True):
        assert [t["label"] for t in row["top"]] == [names[i] for i in top_indices.tolist()]
        torch.testing.assert_close(torch.tensor([t["probability"] for t in row["top"]]), top_values, atol=1e-5, rtol=0)
    assert main(["predict", paths[0], "--model", TAG, "--pretrained", "--top-k", "1"]) == 0
    view, line = capsys.readouterr().out.splitlines()
    assert view == (
        "preprocessing: resize shorter side to 248 (bicubic), centre crop 224x224 (crop_pct 0.9), normalise mean "
        "(0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)"
    )
    assert line.startswith(f"{paths[0]}: {names[indices[0, 0]]} ")


def test_weights_flags_refuse_clearly(vit_tiny_hub, tmp_path, capsys):
    image = tmp_path / "a.png"
    _image().save(image)
    both = ["--model", "vit_tiny_patch16_224", "--pretrained", "--checkpoint", "x"]
    for args in (["predict", str(image)], ["eval"], ["export"], ["attention", str(image), "--out", "o"]):
        assert main([*args, *both]) == 2
        err = capsys.readouterr().err
        assert "give the weights once: --checkpoint x" in err and "Traceback" not in err and err.count("\n") == 1
    # argparse gives the first word after --pretrained to its TAG: an image path there is named.
    assert main(["predict", "--model", "vit_tiny_patch16_224", "--pretrained", str(image), str(image)]) == 2
    assert "--pretrained took" in capsys.readouterr().err
    assert main(["predict", str(image)]) == 2
    assert "give the weights: --checkpoint PATH" in capsys.readouterr().err
    assert main(["eval", "--model", "vit_tiny_patch16_224", "--pretrained"]) == 2
    assert "pass --data DIR whose val/" in capsys.readouterr().err


def test_offline_and_not_cached_is_one_paragraph(tmp_path, monkeypatch, capsys):
    _offline(tmp_path, monkeypatch)
    image = tmp_path / "a.png"
    _image().save(image)
    assert main(["predict", str(image), "--model", "volo_d1_224", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and "checkpoint=PATH" in err and "Traceback" not in err


def test_eval_with_pretrained_on_synset_folders(vit_tiny_hub, tmp_path, capsys):
    images, targets = synset_image_folder(tmp_path / "data" / "val")
    with torch.no_grad():
        ranked = vit_tiny_hub(torch.stack([_tag_view(image) for image in images])).topk(5, dim=-1).indices
    hit = ranked == torch.tensor(targets)[:, None]
    png = tmp_path / "confusion.png"
    args = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "augreg_in21k_ft_in1k"]
    assert main([*args, "--data", str(tmp_path / "data"), "--json", "--confusion", str(png)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 6 and metrics["top1"] == pytest.approx(100 * hit[:, 0].float().mean().item())
    assert metrics["top5"] == pytest.approx(100 * hit.any(-1).float().mean().item())
    names = imagenet1k_classes()
    assert set(metrics["per_class"]) == {names[3], names[500], names[999]} and png.is_file()


def test_export_and_attention_with_pretrained(vit_tiny_hub, tmp_path, capsys):
    out = tmp_path / "vit.torchscript.pt"
    args = ["export", "--model", "vit_tiny_patch16_224", "--pretrained", "--format", "torchscript"]
    assert main([*args, "--output", str(out)]) == 0
    assert f"weights {TAG}" in capsys.readouterr().out
    x = _tag_view(_image())[None]
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), vit_tiny_hub(x), atol=1e-4, rtol=1e-4)
    image = tmp_path / "a.png"
    _image().save(image)
    assert main(["attention", "vit_tiny_patch16_224", str(image), "--pretrained", "--out", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "attention.json").read_text())
    assert summary["img_size"] == [224, 224] and len(summary["images"][0]["layers"]) == 12


def test_train_from_pretrained_weights(vit_tiny_hub, tree, tmp_path, capsys):
    """--pretrained as fine-tuning's start: the tag's weights (the classifier re-made for the data's classes) and
    the tag's view, saved with the run."""
    out = tmp_path / "run"
    args = ["train", "--model", "vit_tiny_patch16_224", "--pretrained", "--data", str(tree), "--epochs", "1"]
    args += ["--max-steps", "1", "--batch-size", "8", "--optimizer", "sgd", "--lr", "1e-12", "--output", str(out)]
    assert main([*args, "--threads", "1", "--quiet", "--set", "weight_decay=0"]) == 0
    assert re.search(r"validation top-1 \d", capsys.readouterr().out)
    model = glocal.create_model(checkpoint=out / "model")
    assert model.num_classes == 2 and model.data_config.mean == (0.5,) * 3
    assert (model.data_config.crop_pct, model.data_config.interpolation) == (0.9, "bicubic")
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, vit_tiny_hub.blocks[0].attn.qkv.weight)
    assert main([*args, "--checkpoint", str(out / "model")]) == 2
    assert "give the weights once" in capsys.readouterr().err
