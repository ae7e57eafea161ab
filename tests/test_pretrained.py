"""Weight tags: their records, resolution through huggingface_hub's cache, the eval transform, ``glocal weights``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import glocal
from glocal.cli import main
from glocal.data import create_transform, load_image, normalize
from glocal.pretrained import NO_PUBLIC_WEIGHTS, get_pretrained, list_pretrained

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp_path, monkeypatch, repo_id: str, state_dict: dict) -> None:
    """A cache laid out as huggingface_hub lays it out (models--ORG--NAME/refs/main, snapshots/COMMIT/), offline."""

    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    snapshot = repo / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snapshot / "model.safetensors"))
    _offline(tmp_path, monkeypatch)


def _offline(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read by huggingface_hub at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _image(width: int = 300, height: int = 260) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", list_pretrained())
def test_every_tag_record_is_complete(name):
    record = get_pretrained(name)
    assert record.name == name and record.model in glocal.list_models()
    assert record.model not in NO_PUBLIC_WEIGHTS
    assert record.hf_hub_id == f"timm/{name}" and record.revision and record.filename.endswith(".safetensors")
    assert record.origin and record.licence and record.label_set == "imagenet-1k" and record.num_classes == 1000
    assert record.interpolation == "bicubic" and 0.5 < record.crop_pct <= 1.15
    assert len(record.mean) == len(record.std) == 3 and record.input_size[0] == 3
    assert record.input_size == glocal.model_info(record.model)["input_size"]  # a tag never changes the architecture
    assert record.top1 is None or record.top1_resolution == record.input_size[-1]


def test_transcribed_preprocessing():
    """Values as timm's default_cfgs give them (volo.py, vision_transformer.py, twins.py)."""
    assert get_pretrained("volo_d5_512").crop_pct == 1.15 and get_pretrained("volo_d5_512").input_size == (3, 512, 512)
    assert get_pretrained("volo_d1_224").crop_pct == 0.96 and get_pretrained("volo_d1_384").crop_pct == 1.0
    augreg = get_pretrained("vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert augreg.mean == augreg.std == (0.5, 0.5, 0.5) and augreg.layout == "timm-vit-augreg"
    assert get_pretrained("twins_svt_small", "in1k").crop_pct == 0.9


def test_models_without_weights_refuse_clearly():
    for model in NO_PUBLIC_WEIGHTS:
        with pytest.raises(ValueError, match="no public ImageNet weights"):
            glocal.create_model(model, pretrained=True)
    with pytest.raises(ValueError, match="unknown weight tag"):
        get_pretrained("twins_svt_small", "nope")


def test_pretrained_resolves_through_huggingface_hub_offline(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = glocal.create_model("twins_svt_small").eval()  # timm's twins_* names are glocal's
    _hub_cache(tmp_path, monkeypatch, "timm/twins_svt_small.in1k", source.state_dict())
    model = glocal.create_model("twins_svt_small", pretrained=True).eval()
    assert model.pretrained_cfg.name == "twins_svt_small.in1k"
    assert model.data_config.interpolation == "bicubic" and model.data_config.crop_pct == 0.9
    x = create_transform(model.pretrained_cfg)(_image())[None]
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_augreg_tag_gives_the_half_normalised_source_logits(tmp_path, monkeypatch):
    """timm's augreg file holds weights for (x - 0.5) / 0.5 inputs: glocal's eval view of the tag must give what the
    source's model gives on that view."""
    torch.manual_seed(0)
    source = glocal.create_model("vit_small_patch16_224").eval()
    _hub_cache(tmp_path, monkeypatch, "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", source.state_dict())
    model = glocal.create_model("vit_small_patch16_224.augreg_in21k_ft_in1k", pretrained=True).eval()
    assert model.data_config.mean == (0.5, 0.5, 0.5)
    image = _image()
    x = create_transform(model.data_config)(image)[None]
    # 300x260, crop_pct 0.9: shorter side to floor(224 / 0.9) = 248 (286x248), centre 224 crop at (31, 12).
    resized = np.asarray(image.resize((286, 248), Image.Resampling.BICUBIC))[12:236, 31:255].copy()
    reference = normalize(torch.from_numpy(resized).permute(2, 0, 1)[None], (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(x, reference, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)


def test_offline_and_not_cached_names_the_file_and_checkpoint(tmp_path, monkeypatch):
    _offline(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"timm/volo_d1_224\.sail_in1k.*checkpoint=PATH"):
        glocal.create_model("volo_d1_224", pretrained=True)


def test_tagged_name_without_pretrained_sets_the_view_only():
    model = glocal.create_model("vit_small_patch16_224.augreg_in21k_ft_in1k", depth=1)
    assert model.pretrained_cfg.tag == "augreg_in21k_ft_in1k" and model.data_config.std == (0.5, 0.5, 0.5)


def test_create_transform_crop_pct_above_one_pads():
    cfg = {"input_size": (3, 448, 448), "mean": (0.0,) * 3, "std": (1 / 255,) * 3, "crop_pct": 1.15,
           "interpolation": "bicubic"}  # fmt: skip
    x = create_transform(cfg)(Image.new("RGB", (500, 400), (200, 200, 200)))
    assert x.shape == (3, 448, 448)
    # floor(448 / 1.15) = 389 rows of image, centred; the rest of the crop lies outside it (black).
    assert x[:, 0].abs().max() == 0 and x[:, 224].min() > 190


def test_loader_uses_the_given_interpolation(tmp_path):
    path = tmp_path / "img.png"
    _image(97, 61).save(path)
    bicubic = load_image(path, 32, "bicubic")
    expected = np.asarray(_image(97, 61).resize((51, 32), Image.Resampling.BICUBIC))[:, 9:41]
    assert torch.equal(bicubic, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    assert not torch.equal(bicubic, load_image(path, 32, "bilinear"))


def test_weights_cli_lists_tags_and_models_without_weights(tmp_path, monkeypatch, capsys):
    _offline(tmp_path, monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["weights", "volo_d1*"]) == 0
    out = capsys.readouterr().out
    assert "volo_d1_224.sail_in1k" in out and "84.20" in out and "no" in out
    assert main(["weights", "botnet*"]) == 0
    assert "botnet50: no public ImageNet weights" in capsys.readouterr().out
