"""Weight tags: their records, resolution through huggingface_hub's cache, the eval transform, ``glocal weights``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

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
    if record.hf_hub_id is not None:  # timm's hub repos: timm/<model>.<tag>, safetensors
        assert record.hf_hub_id == f"timm/{name}" and record.revision and record.filename.endswith(".safetensors")
    else:
        assert record.url.startswith("https://github.com/") and record.url.endswith("/" + record.filename)
    assert record.origin and record.licence and record.label_set == "imagenet-1k" and record.num_classes == 1000
    assert record.interpolation in ("bicubic", "bilinear") and 0.5 < record.crop_pct <= 1.15
    assert len(record.mean) == len(record.std) == 3 and record.input_size[0] == 3
    # A tag sets the input size it was evaluated at: the model's own, except for ResNets (any size; timm's recipes
    # evaluate some at 160/176) and the one official T2T-ViT-14 file trained and evaluated at 384.
    if not record.model.startswith("resnet") and name != "t2t_vit_14.official_in1k_384":
        assert record.input_size == glocal.model_info(record.model)["input_size"]
    assert 60 < record.top1 < 90 and record.top1_resolution == record.input_size[-1]
    assert record.licence in ("apache-2.0", "bsd-3-clause", "cc-by-nc-4.0", "Clear BSD (Shanghai Yitu Technology)")


def test_transcribed_preprocessing():
    """Values as timm's default_cfgs give them (volo.py, vision_transformer.py, twins.py)."""
    assert get_pretrained("volo_d5_512").crop_pct == 1.15 and get_pretrained("volo_d5_512").input_size == (3, 512, 512)
    assert get_pretrained("volo_d1_224").crop_pct == 0.96 and get_pretrained("volo_d1_384").crop_pct == 1.0
    augreg = get_pretrained("vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert augreg.mean == augreg.std == (0.5, 0.5, 0.5) and augreg.layout == "timm-vit-augreg"
    assert get_pretrained("twins_svt_small", "in1k").crop_pct == 0.9
    tv = get_pretrained("resnet50.tv_in1k")
    assert (tv.interpolation, tv.crop_pct, tv.licence) == ("bilinear", 0.875, "bsd-3-clause")
    assert get_pretrained("vit_base_patch16_384.augreg_in1k").crop_pct == 1.0
    assert get_pretrained("seresnet50").url.endswith("v0.1-cadene/se_resnet50-ce0d4300.pth")
    tv2 = get_pretrained("resnet50.tv2_in1k")  # timm's cfg: 176 px, bilinear, 0.875
    assert (tv2.input_size, tv2.interpolation, tv2.crop_pct, tv2.top1) == ((3, 176, 176), "bilinear", 0.875, 79.434)
    assert get_pretrained("resnet50.fb_swsl_ig1b_ft_in1k").licence == "cc-by-nc-4.0"
    t2t384 = get_pretrained("t2t_vit_14.official_in1k_384")
    assert (t2t384.input_size, t2t384.top1, t2t384.ema) == ((3, 384, 384), 83.3, True)
    assert get_pretrained("volo_d1_224").licence == "apache-2.0"  # sail-sg/volo LICENSE, timm volo.py _cfg


def test_reported_top1_as_the_sources_give_it():
    """timm-hosted tags: results-imagenet.csv at the tag's view; official URL releases: their README's figure."""
    assert get_pretrained("volo_d1_224").top1 == 84.148 and get_pretrained("volo_d5_512").top1 == 87.068
    assert get_pretrained("resnet50.a1_in1k").top1 == 80.382 and get_pretrained("resnet50.tv_in1k").top1 == 76.156
    assert get_pretrained("vit_base_patch16_384.augreg_in21k_ft_in1k").top1 == 86.010
    assert get_pretrained("twins_svt_small").top1 == 81.694
    assert get_pretrained("seresnet101").top1 == 78.396 and get_pretrained("t2t_vit_t_24").top1 == 82.6


def test_models_without_weights_refuse_clearly():
    for model in NO_PUBLIC_WEIGHTS:
        with pytest.raises(ValueError, match="no public ImageNet weights"):
            glocal.create_model(model, pretrained=True)
    with pytest.raises(ValueError, match="unknown weight tag"):
        get_pretrained("twins_svt_small", "nope")


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
    # int(32 * 97 / 61) = 50 wide (torchvision's Resize truncates), centre crop at round(18 / 2) = 9.
    expected = np.asarray(_image(97, 61).resize((50, 32), Image.Resampling.BICUBIC))[:, 9:41]
    assert torch.equal(bicubic, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    assert not torch.equal(bicubic, load_image(path, 32, "bilinear"))


def test_weights_cli_lists_tags_and_models_without_weights(tmp_path, monkeypatch, capsys):
    _offline(tmp_path, monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["weights", "volo_d1*"]) == 0
    out = capsys.readouterr().out
    assert "volo_d1_224.sail_in1k" in out and "84.148" in out and "no" in out
    assert main(["weights", "botnet*"]) == 0
    assert "botnet50: no public ImageNet weights" in capsys.readouterr().out


class _Server:
    """A real HTTP server on 127.0.0.1 serving ``files`` (name -> bytes); ``truncate`` names files whose transfer
    stops halfway (Content-Length promises the whole file). Counts requests per path."""

    def __init__(self, files: dict[str, bytes], truncate: tuple[str, ...] = ()) -> None:
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.hits[name] = server.hits.get(name, 0) + 1
                if name not in files:
                    self.send_error(404)
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in truncate else body)

            def log_message(self, *args):
                pass

        self.hits: dict[str, int] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def glocal_home(tmp_path, monkeypatch):
    home = tmp_path / "glocal-home"
    monkeypatch.setenv("GLOCAL_HOME", str(home))
    monkeypatch.delenv("GLOCAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


def _official_t2t_file(tmp_path) -> tuple[bytes, torch.nn.Module, torch.nn.Module]:
    """A .pth.tar as T2T-ViT's releases are laid out (official Performer names, state_dict + state_dict_ema)."""
    from glocal.weights import export_state_dict

    torch.manual_seed(0)
    live, ema = glocal.create_model("t2t_vit_7").eval(), glocal.create_model("t2t_vit_7").eval()
    content = {
        "state_dict": export_state_dict(live, "t2t-official"),
        "state_dict_ema": export_state_dict(ema, "t2t-official"),
        "epoch": 309,
    }
    path = tmp_path / "release.pth.tar"
    torch.save(content, path)
    return path.read_bytes(), live, ema


def test_url_source_download_cache_hit_and_logits(tmp_path, monkeypatch, glocal_home):
    import glocal.pretrained as pretrained

    body, _, ema = _official_t2t_file(tmp_path)
    server = _Server({"71.7_T2T_ViT_7.pth.tar": body})
    try:
        record = pretrained._TAGS["t2t_vit_7.official_in1k"]
        monkeypatch.setitem(pretrained._TAGS, record.name, replace(record, url=server.url + record.filename))
        model = glocal.create_model("t2t_vit_7", pretrained=True).eval()
        again = glocal.create_model("t2t_vit_7", pretrained=True).eval()
    finally:
        server.close()
    assert server.hits == {"71.7_T2T_ViT_7.pth.tar": 1}  # the second call was a cache hit
    cached = glocal_home / "checkpoints" / "71.7_T2T_ViT_7.pth.tar"
    assert cached.read_bytes() == body
    manifest = json.loads((glocal_home / "manifest.json").read_text())
    assert manifest[cached.name]["sha256"] == hashlib.sha256(body).hexdigest()  # no published hash: recorded
    x = create_transform(model.pretrained_cfg)(_image())[None]
    with torch.no_grad():  # the EMA weights, as the README says, give the source's logits
        torch.testing.assert_close(model(x), ema(x), rtol=0, atol=0)
        torch.testing.assert_close(again(x), ema(x), rtol=0, atol=0)


def test_url_hash_mismatch_is_refused_and_nothing_cached(glocal_home):
    from glocal.pretrained import download_url

    server = _Server({"weights-deadbeef.pth": b"not the published file"})
    try:
        with pytest.raises(ValueError, match="does not start with deadbeef"):
            download_url(server.url + "weights-deadbeef.pth", progress=False)
    finally:
        server.close()
    assert not any(p.is_file() for p in glocal_home.rglob("*"))


def test_interrupted_transfer_leaves_nothing_half_written(glocal_home):
    from http.client import IncompleteRead

    from glocal.pretrained import download_url

    server = _Server({"big.pth": bytes(range(256)) * 4096}, truncate=("big.pth",))
    try:
        with pytest.raises((OSError, IncompleteRead)):
            download_url(server.url + "big.pth", progress=False)
    finally:
        server.close()
    assert not any(p.is_file() for p in glocal_home.rglob("*"))


def test_url_source_offline_not_cached(glocal_home, monkeypatch):
    monkeypatch.setenv("GLOCAL_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        glocal.create_model("t2t_vit_14", pretrained=True)
    message = str(err.value)
    assert "81.5_T2T_ViT_14.pth.tar" in message and str(glocal_home / "checkpoints") in message
    assert "checkpoint=PATH" in message


def test_imagenet_label_set_is_shipped():
    from glocal.data.imagenet import imagenet1k_classes, imagenet1k_synsets

    synsets, names = imagenet1k_synsets(), imagenet1k_classes()
    assert len(synsets) == len(set(synsets)) == len(names) == 1000 and list(synsets) == sorted(synsets)
    assert (synsets[0], names[0]) == ("n01440764", "tench") and (synsets[-1], names[-1]) == (
        "n15075141",
        "toilet tissue",
    )
    assert get_pretrained("volo_d1_224").classes == names


def synset_image_folder(root, seed: int = 1) -> tuple[list[Image.Image], list[int]]:
    """``root/<synset>/<i>.png``: two random images (260 wide, 240 and 250 high) for each of three ImageNet-1k
    synsets (class indices 3, 500, 999); returns the images and their class indices."""
    from glocal.data.imagenet import imagenet1k_synsets

    synsets = imagenet1k_synsets()
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for index in (3, 500, 999):
        (root / synsets[index]).mkdir(parents=True)
        for i in range(2):
            array = rng.integers(0, 256, (240 + 10 * i, 260, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / synsets[index] / f"{i}.png")
            images.append(Image.fromarray(array))
            targets.append(index)
    return images, targets


def view_by_hand(image: Image.Image, scale: int, crop: int, resample, mean, std) -> torch.Tensor:
    """An eval view built with PIL alone, as torchvision's Resize(scale) and CenterCrop(crop) compute it: shorter side
    to ``scale``, longer side truncated (``int``), centre crop at ``round((side - crop) / 2)``; normalised."""
    w, h = image.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    left, top = round((new[0] - crop) / 2), round((new[1] - crop) / 2)
    pixels = np.asarray(image.resize(new, resample))[top : top + crop, left : left + crop].copy()
    return normalize(torch.from_numpy(pixels).permute(2, 0, 1)[None], mean, std)[0]


def test_validate_on_a_synset_named_image_folder(tmp_path, monkeypatch, glocal_home, capsys):
    import glocal.pretrained as pretrained

    body, _, ema = _official_t2t_file(tmp_path)
    images, targets = synset_image_folder(tmp_path / "val")
    # The expected figures from the source's model on the view built here with PIL alone: shorter side to
    # floor(224 / 0.9) = 248 bicubic, centre 224 crop, ImageNet mean/std.
    mean, std = glocal.models._base.IMAGENET_MEAN, glocal.models._base.IMAGENET_STD
    views = [view_by_hand(image, 248, 224, Image.Resampling.BICUBIC, mean, std) for image in images]
    with torch.no_grad():
        ranked = ema(torch.stack(views)).topk(5, dim=-1).indices
    hit = ranked == torch.tensor(targets)[:, None]
    expected_top1, expected_top5 = 100 * hit[:, 0].float().mean().item(), 100 * hit.any(-1).float().mean().item()
    server = _Server({"71.7_T2T_ViT_7.pth.tar": body})
    try:
        record = pretrained._TAGS["t2t_vit_7.official_in1k"]
        monkeypatch.setitem(pretrained._TAGS, record.name, replace(record, url=server.url + record.filename))
        assert main(["validate", "t2t_vit_7", "--data", str(tmp_path / "val"), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert main(["validate", "t2t_vit_7", "--pretrained", "official_in1k", "--data", str(tmp_path / "val")]) == 0
        text = capsys.readouterr().out
    finally:
        server.close()
    assert result["images"] == 6 and result["reported_top1"] == 71.7
    assert result["top1"] == pytest.approx(expected_top1) and result["top5"] == pytest.approx(expected_top5)
    assert "reported top-1 71.70% at 224 px" in text and "resize shorter side to 248 (bicubic)" in text


def test_hash_named_url_source_in_the_caffe_port_layout(tmp_path, monkeypatch, glocal_home):
    """seresnet50.cadene_in1k: a file in Cadene's names (timm's legacy_seresnet50), served under a torch.hub name
    carrying its own sha256 prefix, is accepted, cached (no manifest entry needed) and gives the source's logits."""
    import io

    import glocal.pretrained as pretrained
    from glocal.weights import export_state_dict

    torch.manual_seed(0)
    source = glocal.create_model("seresnet50").eval()
    for module in source.modules():  # non-trivial BatchNorm statistics, so a misplaced tensor shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.save(export_state_dict(source, "timm-legacy-seresnet"), buffer)
    body = buffer.getvalue()
    name = f"se_resnet50-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    server = _Server({name: body})
    try:
        record = pretrained._TAGS["seresnet50.cadene_in1k"]
        monkeypatch.setitem(pretrained._TAGS, record.name, replace(record, filename=name, url=server.url + name))
        model = glocal.create_model("seresnet50", pretrained=True).eval()
    finally:
        server.close()
    assert (glocal_home / "checkpoints" / name).read_bytes() == body and not (glocal_home / "manifest.json").exists()
    x = create_transform(model.pretrained_cfg)(_image())[None]
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


# One tag per source (timm's hub, Cadene's URL release, T2T-ViT's URL releases) and per family, both T2T layouts:
# the default run. Every other tag runs under `-m slow` (full-size models, up to VOLO-D5 at 512 px).
_FAST_TAGS = {
    "twins_svt_small.in1k",
    "volo_d1_224.sail_in1k",
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "resnet50.a1_in1k",
    "seresnet50.cadene_in1k",
    "t2t_vit_7.official_in1k",
    "t2t_vit_t_14.official_in1k",
}
# One random-weight source per architecture, size and normalisation (the source's model takes the tag's view).
_SOURCE_MODELS: dict[tuple, torch.nn.Module] = {}


def _source_model(record) -> torch.nn.Module:
    key = (record.model, record.input_size, record.mean, record.std)
    if key not in _SOURCE_MODELS:
        _SOURCE_MODELS.clear()  # one at a time: the full-size models are large
        torch.manual_seed(0)
        model = glocal.create_model(record.name).eval()  # the tag's architecture and view, random weights
        for module in model.modules():  # non-trivial BatchNorm statistics, so a misplaced tensor shows
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        _SOURCE_MODELS[key] = model
    return _SOURCE_MODELS[key]


def _write_in_source_layout(record, source, tmp_path, monkeypatch) -> None:
    """``source``'s weights as ``record``'s source publishes them, where its downloader looks, offline."""
    from glocal.weights import export_state_dict

    if record.hf_hub_id is not None:  # timm's safetensors: glocal's names, Google's ViTs for half-normalised input
        _hub_cache(tmp_path, monkeypatch, record.hf_hub_id, export_state_dict(source, record.layout or "glocal"))
        return
    state = export_state_dict(source, record.layout or "glocal")
    # T2T-ViT's .pth.tar: a training state with the EMA weights the README loads; Cadene's .pth: the bare state dict.
    content = {"state_dict": {k: v.neg() for k, v in state.items()}, "state_dict_ema": state} if record.ema else state
    home = tmp_path / "glocal-home"
    (home / "checkpoints").mkdir(parents=True)
    torch.save(content, home / "checkpoints" / record.filename)
    monkeypatch.setenv("GLOCAL_HOME", str(home))
    monkeypatch.setenv("GLOCAL_OFFLINE", "1")


@pytest.mark.parametrize(
    "name", [n if n in _FAST_TAGS else pytest.param(n, marks=pytest.mark.slow) for n in list_pretrained()]
)
def test_every_tag_gives_its_sources_logits(name, tmp_path, monkeypatch):
    """create_model(tag, pretrained=True) from a file in the tag's source layout, found where its downloader looks,
    gives the logits of a model holding those weights directly, on the tag's own eval view."""
    record = get_pretrained(name)
    source = _source_model(record)
    _write_in_source_layout(record, source, tmp_path, monkeypatch)
    model = glocal.create_model(name, pretrained=True).eval()
    assert model.pretrained_cfg.name == name and model.img_size == record.input_size[1:]
    assert dataclasses_view(model.data_config) == record.data_config
    x = create_transform(model.pretrained_cfg)(_image())[None]
    assert x.shape[-2:] == record.input_size[1:]
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-5)


def dataclasses_view(data_config) -> dict:
    return {k: getattr(data_config, k) for k in ("input_size", "mean", "std", "crop_pct", "interpolation")}


def test_pretrained_model_folder_keeps_the_label_set(tmp_path, monkeypatch):
    """A model saved from a pretrained one keeps its class names; a new classifier drops them."""
    from glocal.weights import open_checkpoint, save_checkpoint

    source = glocal.create_model("vit_tiny_patch16_224", depth=1).eval()
    _hub_cache(tmp_path, monkeypatch, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", source.state_dict())
    model = glocal.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=True, depth=1)
    assert model.pretrained_cfg.classes[:2] == ("tench", "goldfish")
    assert open_checkpoint(save_checkpoint(model, tmp_path / "saved")).classes == model.pretrained_cfg.classes
    tuned = glocal.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=True, depth=1, num_classes=3)
    assert open_checkpoint(save_checkpoint(tuned, tmp_path / "tuned")).classes is None


def test_revision_pins_a_hub_tag(tmp_path, monkeypatch):
    """revision= (or $GLOCAL_HF_REVISION) resolves the tag at that commit of its hub repository, through the hub's
    cache; a commit that is not there is the offline error, naming it."""
    torch.manual_seed(0)
    source = glocal.create_model("resnet50").eval()
    _hub_cache(tmp_path, monkeypatch, "timm/resnet50.a1_in1k", source.state_dict())
    pinned = glocal.create_model("resnet50.a1_in1k", pretrained=True, revision=_COMMIT)
    assert pinned.pretrained_cfg.revision == _COMMIT and pinned.pretrained_cfg.source.endswith("@" + _COMMIT)
    other = "f" * 40
    with pytest.raises(FileNotFoundError, match=f"at revision {other}"):
        glocal.create_model("resnet50.a1_in1k", pretrained=True, revision=other)
    monkeypatch.setenv("GLOCAL_HF_REVISION", other)
    with pytest.raises(FileNotFoundError, match=f"at revision {other}"):
        glocal.create_model("resnet50.a1_in1k", pretrained=True)
    assert get_pretrained("t2t_vit_7").revision is None  # URL tags ignore the variable
    with pytest.raises(ValueError, match="applies to Hugging Face tags"):
        get_pretrained("t2t_vit_7", revision=other)
    with pytest.raises(ValueError, match="applies to pretrained"):
        glocal.create_model("resnet50", revision=other)


def test_checkpoints_doc_lists_every_tag(capsys):
    """docs/checkpoints.md shows `glocal weights --markdown` (every tag, its source, top-1 and licence) verbatim."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "checkpoints.md").read_text()
    begin, end = "<!-- glocal weights --markdown: begin -->\n", "<!-- glocal weights --markdown: end -->"
    shown = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert main(["weights", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert shown == table, "docs/checkpoints.md is out of date: paste `glocal weights --markdown` between its markers"
    assert all(f"| `{name}` |" in table for name in list_pretrained())
