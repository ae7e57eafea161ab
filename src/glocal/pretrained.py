"""Released weights by name: timm's ``architecture.tag`` convention, each tag's source and preprocessing as data.

Every record is transcribed from its source, never guessed; ``origin`` cites where. Hugging Face sources are fetched
by ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``); URL sources (official GitHub releases) are streamed into one
cache folder (``$GLOCAL_HOME``, default ``~/.cache/glocal``) through a temporary file renamed when complete, checked
against the sha256 prefix in the file name where the source publishes one (torch.hub's ``name-<hash>.ext``
convention) and otherwise recorded in the cache's ``manifest.json``. ``GLOCAL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``
never touches the network. A tag only loads weights and sets the preprocessing and input size it was evaluated
with; it never changes the architecture. Hugging Face tags resolve their recorded revision, ``main`` (the commit
hashes of timm's hub repositories could not be read where the records were transcribed, so none is invented);
``get_pretrained(..., revision=COMMIT)``, ``create_model(..., revision=COMMIT)`` or ``$GLOCAL_HF_REVISION`` pin one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from glocal.data.imagenet import imagenet1k_classes
from glocal.models._base import IMAGENET_MEAN, IMAGENET_STD
from glocal.registry import get_entry
from glocal.weights.io import atomic_path, write_bytes_atomic

__all__ = [
    "NO_PUBLIC_WEIGHTS",
    "PretrainedTag",
    "cache_dir",
    "download_url",
    "get_pretrained",
    "is_cached",
    "list_pretrained",
    "pretrained_file",
]


@dataclass(frozen=True)
class PretrainedTag:
    """One public release: where it is, how it is laid out, and the eval view its reported top-1 was measured with."""

    model: str
    tag: str
    hf_hub_id: str | None  # None: the file is fetched from ``url``
    revision: str | None  # the Hugging Face revision (branch or commit); get_pretrained(revision=) pins another
    filename: str
    layout: str | None  # None: detected from the keys (glocal's names)
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    num_classes: int
    label_set: str
    top1: float  # as the source reports it, for the eval view above (input_size, crop_pct, interpolation)
    top1_resolution: int
    licence: str
    origin: str
    url: str | None = None
    ema: bool = False  # take the file's EMA weights (state_dict_ema), as the source's README says

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the label set, in classifier order."""
        return imagenet1k_classes()

    @property
    def source(self) -> str:
        return f"hf:{self.hf_hub_id}@{self.revision}" if self.hf_hub_id else str(self.url)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def data_config(self) -> dict:
        return {
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }


# timm, transcribed at commit aa4b5850c1543fa488abf260f18390eda46cf85d: each tag's preprocessing and licence from its
# model file's pretrained cfg (default_cfgs: input_size, crop_pct, interpolation, mean/std, 'license'), its top-1
# from results/results-imagenet.csv (the row of the tag at its cfg's input size and crop_pct).
_TIMM = "huggingface/pytorch-image-models@aa4b5850c1543fa488abf260f18390eda46cf85d"
_TIMM_TOP1 = f"top-1: {_TIMM} results/results-imagenet.csv"
_HALF = (0.5, 0.5, 0.5)  # IMAGENET_INCEPTION_MEAN / _STD: Google's ViTs take (x - 0.5) / 0.5


def _timm(model: str, tag: str, cfg: str, size: int, crop_pct: float, interpolation: str, top1: float, licence: str,
          *, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout=None, url=None) -> PretrainedTag:  # fmt: skip
    """A timm-hosted release: hub repo ``timm/<model>.<tag>``, ``model.safetensors``."""
    return PretrainedTag(
        model=model, tag=tag, hf_hub_id=f"timm/{model}.{tag}", revision="main", filename="model.safetensors",
        layout=layout, input_size=(3, size, size), mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
        interpolation=interpolation, num_classes=1000, label_set="imagenet-1k", top1=top1, top1_resolution=size,
        licence=licence, origin=f"{_TIMM} {cfg} default_cfgs['{model}.{tag}']; {_TIMM_TOP1}", url=url,
    )  # fmt: skip


_TAGS: dict[str, PretrainedTag] = {}


def _add(record: PretrainedTag) -> None:
    _TAGS[record.name] = record


# Twins (timm/models/twins.py: _cfg crop_pct .9, bicubic, ImageNet mean/std, apache-2.0): timm's twins_* are glocal's.
for _model, _top1 in (
    ("twins_pcpvt_small", 81.116), ("twins_pcpvt_base", 82.724), ("twins_pcpvt_large", 83.158),
    ("twins_svt_small", 81.694), ("twins_svt_base", 83.122), ("twins_svt_large", 83.718),
):  # fmt: skip
    _add(_timm(_model, "in1k", "timm/models/twins.py", 224, 0.9, "bicubic", _top1, "apache-2.0"))

# VOLO (timm/models/volo.py: bicubic, ImageNet mean/std, apache-2.0 as sail-sg/volo's LICENSE): the official files
# (sail-sg/volo README, release volo_1) re-hosted by timm; crop_pct as each cfg gives it (1.15 at 448/512 for d4/d5).
_VOLO_URL = "https://github.com/sail-sg/volo/releases/download/volo_1/"
for _model, _crop, _size, _file, _top1 in (
    ("volo_d1_224", 0.96, 224, "d1_224_84.2.pth.tar", 84.148), ("volo_d1_384", 1.0, 384, "d1_384_85.2.pth.tar", 85.262),
    ("volo_d2_224", 0.96, 224, "d2_224_85.2.pth.tar", 85.204), ("volo_d2_384", 1.0, 384, "d2_384_86.0.pth.tar", 86.054),
    ("volo_d3_224", 0.96, 224, "d3_224_85.4.pth.tar", 85.440), ("volo_d3_448", 1.0, 448, "d3_448_86.3.pth.tar", 86.514),
    ("volo_d4_224", 0.96, 224, "d4_224_85.7.pth.tar", 85.868),
    ("volo_d4_448", 1.15, 448, "d4_448_86.79.pth.tar", 86.788),
    ("volo_d5_224", 0.96, 224, "d5_224_86.10.pth.tar", 86.076),
    ("volo_d5_448", 1.15, 448, "d5_448_87.0.pth.tar", 86.974),
    ("volo_d5_512", 1.15, 512, "d5_512_87.07.pth.tar", 87.068),
):  # fmt: skip
    _add(_timm(_model, "sail_in1k", "timm/models/volo.py", _size, _crop, "bicubic", _top1, "apache-2.0",
               url=_VOLO_URL + _file))  # fmt: skip

# ViT (timm/models/vision_transformer.py: mean = std = 0.5, crop_pct .9 at 224 and 1.0 at 384, bicubic, apache-2.0):
# Google's weights (augreg, the original in21k fine-tunes, SAM), timm's safetensors in glocal's names with the
# half-normalised input (layout timm-vit-augreg); ``url`` names the .npz original where timm's cfg gives one.
_AUGREG = "https://storage.googleapis.com/vit_models/augreg/"
for _model, _tag, _size, _top1, _npz in (
    ("vit_tiny_patch16_224", "augreg_in21k_ft_in1k", 224, 75.452,
     "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz"),
    ("vit_small_patch16_224", "augreg_in21k_ft_in1k", 224, 81.402,
     "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz"),
    ("vit_small_patch16_224", "augreg_in1k", 224, 78.842,
     "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_224", "augreg2_in21k_ft_in1k", 224, 85.108, None),
    ("vit_base_patch16_224", "augreg_in21k_ft_in1k", 224, 84.534,
     "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_224", "orig_in21k_ft_in1k", 224, 81.782, None),
    ("vit_base_patch16_224", "augreg_in1k", 224, 79.154,
     "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_224", "sam_in1k", 224, 80.246, None),
    ("vit_base_patch16_384", "augreg_in21k_ft_in1k", 384, 86.010,
     "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
    ("vit_base_patch16_384", "orig_in21k_ft_in1k", 384, 84.212, None),
    ("vit_base_patch16_384", "augreg_in1k", 384, 81.102,
     "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
    ("vit_large_patch16_224", "augreg_in21k_ft_in1k", 224, 85.856,
     "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
):  # fmt: skip
    _add(_timm(_model, _tag, "timm/models/vision_transformer.py", _size, 0.9 if _size == 224 else 1.0, "bicubic",
               _top1, "apache-2.0", mean=_HALF, std=_HALF, layout="timm-vit-augreg",
               url=_AUGREG + _npz if _npz else None))  # fmt: skip

# ResNet (timm/models/resnet.py): timm's resnet50/101 are glocal's (torchvision names), whatever the recipe. _rcfg /
# _r3cfg (ResNet strikes back, timm's own recipes): bicubic, 0.95 (a3: 160 px; a1h: 176 px, 0.9); _gcfg (Gluon
# v1b ports), _tcfg-like timm recipes (ra, ram, am, bt): bicubic 0.875; _cfg (torchvision tv/tv2, Facebook's
# semi-/weakly supervised): bilinear 0.875 (tv2: 176 px). The records keep each cfg's input_size, not its
# test_input_size, and its licence: bsd-3-clause (torchvision), cc-by-nc-4.0 (Facebook's), else apache-2.0.
_RESNET = [
    ("resnet50", "a1_in1k", 224, 0.95, "bicubic", 80.382, "apache-2.0"),
    ("resnet50", "a1h_in1k", 176, 0.9, "bicubic", 79.264, "apache-2.0"),
    ("resnet50", "a2_in1k", 224, 0.95, "bicubic", 79.828, "apache-2.0"),
    ("resnet50", "a3_in1k", 160, 0.95, "bicubic", 75.994, "apache-2.0"),
    ("resnet50", "am_in1k", 224, 0.875, "bicubic", 79.004, "apache-2.0"),
    ("resnet50", "b1k_in1k", 224, 0.95, "bicubic", 79.564, "apache-2.0"),
    ("resnet50", "b2k_in1k", 224, 0.95, "bicubic", 79.388, "apache-2.0"),
    ("resnet50", "bt_in1k", 224, 0.875, "bicubic", 78.444, "apache-2.0"),
    ("resnet50", "c1_in1k", 224, 0.95, "bicubic", 79.766, "apache-2.0"),
    ("resnet50", "c2_in1k", 224, 0.95, "bicubic", 79.868, "apache-2.0"),
    ("resnet50", "d_in1k", 224, 0.95, "bicubic", 79.904, "apache-2.0"),
    ("resnet50", "fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", 79.252, "cc-by-nc-4.0"),
    ("resnet50", "fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 81.146, "cc-by-nc-4.0"),
    ("resnet50", "gluon_in1k", 224, 0.875, "bicubic", 77.580, "apache-2.0"),
    ("resnet50", "ra_in1k", 224, 0.875, "bicubic", 78.820, "apache-2.0"),
    ("resnet50", "ram_in1k", 224, 0.875, "bicubic", 79.034, "apache-2.0"),
    ("resnet50", "tv2_in1k", 176, 0.875, "bilinear", 79.434, "bsd-3-clause"),
    ("resnet50", "tv_in1k", 224, 0.875, "bilinear", 76.156, "bsd-3-clause"),
    ("resnet101", "a1_in1k", 224, 0.95, "bicubic", 81.494, "apache-2.0"),
    ("resnet101", "a1h_in1k", 224, 0.95, "bicubic", 81.950, "apache-2.0"),
    ("resnet101", "a2_in1k", 224, 0.95, "bicubic", 81.344, "apache-2.0"),
    ("resnet101", "a3_in1k", 160, 0.95, "bicubic", 77.928, "apache-2.0"),
    ("resnet101", "gluon_in1k", 224, 0.875, "bicubic", 79.306, "apache-2.0"),
    ("resnet101", "tv2_in1k", 176, 0.875, "bilinear", 79.908, "bsd-3-clause"),
    ("resnet101", "tv_in1k", 224, 0.875, "bilinear", 77.404, "bsd-3-clause"),
]
for _model, _tag, _size, _crop, _interp, _top1, _licence in _RESNET:
    _add(_timm(_model, _tag, "timm/models/resnet.py", _size, _crop, _interp, _top1, _licence))

# SE-ResNet: timm's legacy_seresnet50/101.in1k (timm/models/senet.py: _cfg bilinear, 0.875, apache-2.0, a URL and no
# hub repo) are Cadene's port of the official SENet Caffe weights (hujie-frank/SENet, Apache-2.0), published under
# names carrying their sha256 prefix (torch.hub convention); glocal's seresnet50/101 is that architecture. Top-1 as
# Cadene/pretrained-models.pytorch's README reports its port ("Our porting", 224 px).
_CADENE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
_CADENE_ORIGIN = (f"{_TIMM} timm/models/senet.py default_cfgs['legacy_{{}}.in1k'] (preprocessing, licence); top-1: "
                  "Cadene/pretrained-models.pytorch@8aae3d8f1135b6b13fed79c1d431e3449fdbf6e0 README.md accuracy "
                  "table")  # fmt: skip
for _model, _file, _top1 in (("seresnet50", "se_resnet50-ce0d4300.pth", 77.636),
                             ("seresnet101", "se_resnet101-7e38fcc6.pth", 78.396)):  # fmt: skip
    _add(PretrainedTag(
        model=_model, tag="cadene_in1k", hf_hub_id=None, revision=None, filename=_file,
        layout="timm-legacy-seresnet", input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        crop_pct=0.875, interpolation="bilinear", num_classes=1000, label_set="imagenet-1k", top1=_top1,
        top1_resolution=224, licence="apache-2.0", origin=_CADENE_ORIGIN.format(_model), url=_CADENE + _file,
    ))  # fmt: skip

# T2T-ViT: the official release files (yitu-opensource/T2T-ViT README.md model tables: file, top-1), evaluated by its
# main.py with models/t2t_vit.py's _cfg (crop_pct .9, bicubic, ImageNet mean/std) at --img-size (384 for the
# "T2T-ViT-14, 384" file); EMA weights (the README's use_ema=True); Clear BSD (the repository's LICENSE). The
# Performer T2T modules use the official key names (layout t2t-official), the Transformer ones (t2t_vit_t_*) glocal's.
_T2T_URL = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
_T2T_ORIGIN = ("yitu-opensource/T2T-ViT@0f63dc9558f4d192de926504dbddfa1b3f5db6ca README.md model tables (file, top-1), "
               "models/t2t_vit.py _cfg (crop_pct .9, bicubic, ImageNet mean/std), LICENSE (Clear BSD)")  # fmt: skip
for _model, _tag, _size, _file, _top1 in (
    ("t2t_vit_7", "official_in1k", 224, "71.7_T2T_ViT_7.pth.tar", 71.7),
    ("t2t_vit_10", "official_in1k", 224, "75.2_T2T_ViT_10.pth.tar", 75.2),
    ("t2t_vit_12", "official_in1k", 224, "76.5_T2T_ViT_12.pth.tar", 76.5),
    ("t2t_vit_14", "official_in1k", 224, "81.5_T2T_ViT_14.pth.tar", 81.5),
    ("t2t_vit_14", "official_in1k_384", 384, "83.3_T2T_ViT_14.pth.tar", 83.3),
    ("t2t_vit_19", "official_in1k", 224, "81.9_T2T_ViT_19.pth.tar", 81.9),
    ("t2t_vit_24", "official_in1k", 224, "82.3_T2T_ViT_24.pth.tar", 82.3),
    ("t2t_vit_t_14", "official_in1k", 224, "81.7_T2T_ViTt_14.pth.tar", 81.7),
    ("t2t_vit_t_19", "official_in1k", 224, "82.4_T2T_ViTt_19.pth.tar", 82.4),
    ("t2t_vit_t_24", "official_in1k", 224, "82.6_T2T_ViTt_24.pth.tar", 82.6),
):  # fmt: skip
    _add(PretrainedTag(
        model=_model, tag=_tag, hf_hub_id=None, revision=None, filename=_file,
        layout=None if "_t_" in _model else "t2t-official", input_size=(3, _size, _size), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, crop_pct=0.9, interpolation="bicubic", num_classes=1000, label_set="imagenet-1k",
        top1=_top1, top1_resolution=_size, licence="Clear BSD (Shanghai Yitu Technology)", origin=_T2T_ORIGIN,
        url=_T2T_URL + _file, ema=True,
    ))  # fmt: skip

# Registered models with no public ImageNet-1k classification weights, and why.
NO_PUBLIC_WEIGHTS = {
    "nlresnet50": "non-local blocks were released for video (Kinetics) and detection (COCO), not ImageNet classifiers",
    "snlresnet50": "no ImageNet classification weights were released",
    "gcresnet50": "GCNet released COCO detectors only (backbone loadable from them, classifier not)",
    "gcresnet101": "GCNet released COCO detectors only (backbone loadable from them, classifier not)",
    "botnet50": "BoTNet's authors released no weights",
}


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Every tag (``model.tag``), sorted, optionally filtered by a glob pattern (``'volo_*'``)."""
    names = sorted(_TAGS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_pretrained(name: str, pretrained: bool | str = True, *, revision: str | None = None) -> PretrainedTag:
    """The record of ``name`` (``model`` or ``model.tag``) for ``pretrained`` (True: the model's default tag, the
    first listed; a string: that tag). Raises ``ValueError`` naming the tags there are.

    ``revision`` pins a Hugging Face tag to a commit of its repository (or another branch) instead of the recorded
    one; without it ``$GLOCAL_HF_REVISION`` does the same for Hugging Face tags (URL tags ignore the variable)."""
    model, _, tag = name.partition(".")
    if isinstance(pretrained, str):
        if tag and tag != pretrained:
            raise ValueError(f"{name!r} names tag {tag!r} but pretrained={pretrained!r}")
        tag = pretrained
    get_entry(model)
    if model in NO_PUBLIC_WEIGHTS:
        raise ValueError(f"{model!r} has no public ImageNet weights: {NO_PUBLIC_WEIGHTS[model]}; pass checkpoint=PATH")
    tags = [t for t in list_pretrained() if t.partition(".")[0] == model]
    if not tags:
        raise ValueError(f"{model!r} has no registered weights yet; pass checkpoint=PATH (see `glocal weights`)")
    full = f"{model}.{tag}" if tag else tags[0]
    if full not in _TAGS:
        raise ValueError(f"unknown weight tag {full!r}; {model!r} has {tags}")
    record = _TAGS[full]
    if revision is not None:
        if not isinstance(revision, str) or not revision:
            raise TypeError(f"revision must be a commit hash or branch name of {record.hf_hub_id}, got {revision!r}")
        if record.hf_hub_id is None:
            raise ValueError(f"revision={revision!r} applies to Hugging Face tags; {full} is fetched from {record.url}")
    elif record.hf_hub_id is not None:
        revision = os.environ.get("GLOCAL_HF_REVISION") or None
    return replace(record, revision=revision) if revision else record


def cache_dir() -> Path:
    """Where URL sources are cached: ``$GLOCAL_HOME``, default ``~/.cache/glocal``."""
    return Path(os.environ.get("GLOCAL_HOME") or Path.home() / ".cache" / "glocal")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("GLOCAL_OFFLINE", "HF_HUB_OFFLINE")
    )


_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")


def download_url(url: str, filename: str | None = None, *, progress: bool = True) -> Path:
    """``url`` as a file in :func:`cache_dir` (``checkpoints/FILENAME``): the cached file when there is one, else
    streamed into a temporary file, checked and renamed. A ``-<hex>.`` in the file name is the sha256 prefix the
    file must have (torch.hub's convention): a mismatch raises ``ValueError`` and leaves nothing in the cache.
    Without one, the file's sha256 is recorded in ``manifest.json``. Offline and not cached: ``FileNotFoundError``."""
    filename = filename or url.rsplit("/", 1)[-1]
    dest = cache_dir() / "checkpoints" / filename
    if dest.is_file():
        return dest
    if _offline():
        raise FileNotFoundError(
            f"{filename} is not cached and glocal is offline (GLOCAL_OFFLINE / HF_HUB_OFFLINE). Download {url} and "
            f"put it at {dest}, or pass the file itself: create_model(NAME, checkpoint=PATH)"
        )
    expected = _HASH_PREFIX.search(filename)
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(filename, total, progress) as advance:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
            if total is not None and out.tell() != total:
                raise OSError(f"download of {url} stopped at {out.tell()} of {total} bytes")
        sha256 = digest.hexdigest()
        if expected and not sha256.startswith(expected.group(1)):
            raise ValueError(f"{url}: sha256 {sha256} does not start with {expected.group(1)} (its name's hash)")
    if not expected:
        manifest = cache_dir() / "manifest.json"
        entries = json.loads(manifest.read_text()) if manifest.is_file() else {}
        entries[filename] = {"url": url, "sha256": sha256}
        write_bytes_atomic(json.dumps(entries, indent=1, sort_keys=True).encode(), manifest)
    return dest


class _progress:
    """A rich progress bar over a download (silent when ``enabled`` is False); yields ``advance(n_bytes)``."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self.bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task(f"downloading {self.name}", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def pretrained_file(record: PretrainedTag) -> Path:
    """The local file of ``record``: from huggingface_hub's cache (downloaded unless ``HF_HUB_OFFLINE`` is set), or
    for URL sources from :func:`download_url`.

    Offline and not cached, raises ``FileNotFoundError`` naming the file, where to put it and ``checkpoint=PATH``.
    """
    if record.hf_hub_id is None:
        return download_url(str(record.url), record.filename)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(record.hf_hub_id, record.filename, revision=record.revision))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"the weights of {record.name} ({record.hf_hub_id}/{record.filename} at revision {record.revision}) are "
            f"not in the Hugging Face cache ({os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}) and "
            f"cannot be downloaded (offline). Download them where there is network (`hf download "
            f"{record.hf_hub_id}`), or pass the file itself: create_model({record.model!r}, checkpoint=PATH)"
        ) from err


def is_cached(record: PretrainedTag) -> bool:
    """Whether ``record``'s file is in huggingface_hub's cache (nothing is downloaded)."""
    if record.hf_hub_id is None:
        return (cache_dir() / "checkpoints" / record.filename).is_file()
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(record.hf_hub_id, record.filename, revision=record.revision)
    return isinstance(found, str)
