"""Released weights by name: timm's ``architecture.tag`` convention, each tag's source and preprocessing as data.

Every record is transcribed from its source, never guessed; ``origin`` cites where. Hugging Face sources are fetched
by ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``); URL sources (official GitHub releases) are streamed into one
cache folder (``$GLOCAL_HOME``, default ``~/.cache/glocal``) through a temporary file renamed when complete, checked
against the sha256 prefix in the file name where the source publishes one (torch.hub's ``name-<hash>.ext``
convention) and otherwise recorded in the cache's ``manifest.json``. ``GLOCAL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``
never touches the network. A tag only loads weights and sets the preprocessing it was evaluated with; it never
changes the architecture.
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
    revision: str | None
    filename: str
    layout: str | None  # None: detected from the keys (glocal's names)
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    num_classes: int
    label_set: str
    top1: float | None
    top1_resolution: int | None
    licence: str
    origin: str
    url: str | None = None
    ema: bool = False  # take the file's EMA weights (state_dict_ema), as the source's README says
    # The release is the paper's own weights (re-hosted or ported), so the paper's top-1 is its reported figure.
    paper_release: bool = False

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


_TIMM_TWINS = "huggingface/pytorch-image-models timm/models/twins.py default_cfgs (_cfg: crop_pct .9, bicubic)"
_TIMM_VOLO = "huggingface/pytorch-image-models timm/models/volo.py default_cfgs (_cfg: bicubic, ImageNet mean/std)"
_TIMM_VIT = "huggingface/pytorch-image-models timm/models/vision_transformer.py default_cfgs (_cfg: mean=std=0.5)"
_TIMM_RESNET = "huggingface/pytorch-image-models timm/models/resnet.py default_cfgs (_rcfg, _cfg)"
_TIMM_SENET = "huggingface/pytorch-image-models timm/models/senet.py default_cfgs (legacy_seresnet*.in1k, _cfg)"
# Licences as timm's cfgs state them ('license'); where a cfg states none (VOLO) the licence is marked unverified
# rather than guessed. timm transcribed at commit aa4b5850c1543fa488abf260f18390eda46cf85d.
_UNVERIFIED = "unverified"


def _timm(
    model: str,
    tag: str,
    origin: str,
    *,
    crop_pct: float,
    size: int = 224,
    top1=None,
    top1_at=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layout=None,
    url=None,
    interpolation="bicubic",
    licence=_UNVERIFIED,
) -> PretrainedTag:
    return PretrainedTag(
        model=model, tag=tag, hf_hub_id=f"timm/{model}.{tag}", revision="main", filename="model.safetensors",
        layout=layout, input_size=(3, size, size), mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
        interpolation=interpolation, num_classes=1000, label_set="imagenet-1k", top1=top1,
        top1_resolution=top1_at if top1 is not None else None, licence=licence, origin=origin, url=url,
    )  # fmt: skip


_VOLO_URL = "https://github.com/sail-sg/volo/releases/download/volo_1/"
# VOLO: the top-1 is the figure in the official file name (d1_224_84.2.pth.tar), at the tag's resolution.
_VOLO = [
    ("volo_d1_224", 0.96, 224, "d1_224_84.2.pth.tar", 84.2), ("volo_d1_384", 1.0, 384, "d1_384_85.2.pth.tar", 85.2),
    ("volo_d2_224", 0.96, 224, "d2_224_85.2.pth.tar", 85.2), ("volo_d2_384", 1.0, 384, "d2_384_86.0.pth.tar", 86.0),
    ("volo_d3_224", 0.96, 224, "d3_224_85.4.pth.tar", 85.4), ("volo_d3_448", 1.0, 448, "d3_448_86.3.pth.tar", 86.3),
    ("volo_d4_224", 0.96, 224, "d4_224_85.7.pth.tar", 85.7), ("volo_d4_448", 1.15, 448, "d4_448_86.79.pth.tar", 86.79),
    ("volo_d5_224", 0.96, 224, "d5_224_86.10.pth.tar", 86.10), ("volo_d5_448", 1.15, 448, "d5_448_87.0.pth.tar", 87.0),
    ("volo_d5_512", 1.15, 512, "d5_512_87.07.pth.tar", 87.07),
]  # fmt: skip

_TAGS: dict[str, PretrainedTag] = {}
for _model in ("twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large", "twins_svt_small", "twins_svt_base",
               "twins_svt_large"):  # fmt: skip
    # Twins: the top-1 is the paper's (the registry's PaperFigures), at 224.
    _TAGS[f"{_model}.in1k"] = replace(
        _timm(_model, "in1k", _TIMM_TWINS, crop_pct=0.9, licence="apache-2.0"), paper_release=True
    )
for _model, _crop, _size, _file, _top1 in _VOLO:
    _TAGS[f"{_model}.sail_in1k"] = _timm(
        _model, "sail_in1k", _TIMM_VOLO, crop_pct=_crop, size=_size, top1=_top1, top1_at=_size, url=_VOLO_URL + _file
    )
# ViT: every timm vit_* cfg takes mean = std = 0.5 (IMAGENET_INCEPTION_*), crop_pct 0.9 (1.0 at 384), bicubic; the
# files are Google's (augreg, orig); the records name the .npz originals as ``url`` where timm's cfg gives one.
_AUGREG = "https://storage.googleapis.com/vit_models/augreg/"
_VIT = [
    ("vit_tiny_patch16_224", "augreg_in21k_ft_in1k", 224,
     "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz"),
    ("vit_small_patch16_224", "augreg_in21k_ft_in1k", 224,
     "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz"),
    ("vit_small_patch16_224", "augreg_in1k", 224,
     "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_224", "augreg2_in21k_ft_in1k", 224, None),
    ("vit_base_patch16_224", "augreg_in21k_ft_in1k", 224,
     "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_224", "orig_in21k_ft_in1k", 224, None),
    ("vit_base_patch16_224", "augreg_in1k", 224,
     "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
    ("vit_base_patch16_384", "augreg_in21k_ft_in1k", 384,
     "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
    ("vit_base_patch16_384", "orig_in21k_ft_in1k", 384, None),
    ("vit_base_patch16_384", "augreg_in1k", 384,
     "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz"),
    ("vit_large_patch16_224", "augreg_in21k_ft_in1k", 224,
     "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz"),
]  # fmt: skip
for _model, _tag, _size, _npz in _VIT:
    _TAGS[f"{_model}.{_tag}"] = _timm(
        _model, _tag, _TIMM_VIT, crop_pct=0.9 if _size == 224 else 1.0, size=_size, mean=(0.5,) * 3,
        std=(0.5,) * 3, layout="timm-vit-augreg", licence="apache-2.0", url=_AUGREG + _npz if _npz else None,
    )  # fmt: skip

# ResNet: timm's resnet50/101 are glocal's (torchvision names). _rcfg (the ResNet strikes back a1/a2 recipes):
# bicubic, crop_pct 0.95; _cfg (torchvision's tv_in1k): bilinear, 0.875, bsd-3-clause. The records keep timm's
# input_size (224); its test_input_size (288) is not used here.
for _model in ("resnet50", "resnet101"):
    for _tag in ("a1_in1k", "a2_in1k"):
        _TAGS[f"{_model}.{_tag}"] = _timm(_model, _tag, _TIMM_RESNET, crop_pct=0.95, licence="apache-2.0")
    _TAGS[f"{_model}.tv_in1k"] = replace(
        _timm(_model, "tv_in1k", _TIMM_RESNET, crop_pct=0.875, interpolation="bilinear", licence="bsd-3-clause"),
        paper_release=True,  # the registry's figure for ResNet is torchvision's, these weights
    )

# SE-ResNet: timm's legacy_seresnet50/101.in1k are Cadene's port of the official SENet Caffe weights, published as
# URLs whose names carry the sha256 prefix (torch.hub convention); glocal's seresnet50/101 is that architecture.
_CADENE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
for _model, _file in (("seresnet50", "se_resnet50-ce0d4300.pth"), ("seresnet101", "se_resnet101-7e38fcc6.pth")):
    _TAGS[f"{_model}.cadene_in1k"] = PretrainedTag(
        model=_model, tag="cadene_in1k", hf_hub_id=None, revision=None, filename=_file,
        layout="timm-legacy-seresnet", input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        crop_pct=0.875, interpolation="bilinear", num_classes=1000, label_set="imagenet-1k", top1=None,
        top1_resolution=None, licence="apache-2.0", origin=_TIMM_SENET, url=_CADENE + _file, paper_release=True,
    )  # fmt: skip

_T2T_URL = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
_T2T_ORIGIN = ("yitu-opensource/T2T-ViT README.md model tables (file, top-1) and models/t2t_vit.py _cfg (crop_pct .9, "
               "bicubic, ImageNet mean/std); licence from the file header")  # fmt: skip
# The official release files, their top-1 (224 px), and whether the T2T module is Performer (own key names).
_T2T = [
    ("t2t_vit_7", "71.7_T2T_ViT_7.pth.tar", 71.7), ("t2t_vit_10", "75.2_T2T_ViT_10.pth.tar", 75.2),
    ("t2t_vit_12", "76.5_T2T_ViT_12.pth.tar", 76.5), ("t2t_vit_14", "81.5_T2T_ViT_14.pth.tar", 81.5),
    ("t2t_vit_19", "81.9_T2T_ViT_19.pth.tar", 81.9), ("t2t_vit_24", "82.3_T2T_ViT_24.pth.tar", 82.3),
    ("t2t_vit_t_14", "81.7_T2T_ViTt_14.pth.tar", 81.7), ("t2t_vit_t_19", "82.4_T2T_ViTt_19.pth.tar", 82.4),
    ("t2t_vit_t_24", "82.6_T2T_ViTt_24.pth.tar", 82.6),
]  # fmt: skip
for _model, _file, _top1 in _T2T:
    _TAGS[f"{_model}.official_in1k"] = PretrainedTag(
        model=_model, tag="official_in1k", hf_hub_id=None, revision=None, filename=_file,
        layout=None if "_t_" in _model else "t2t-official", input_size=(3, 224, 224), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, crop_pct=0.9, interpolation="bicubic", num_classes=1000, label_set="imagenet-1k",
        top1=_top1, top1_resolution=224, licence="Clear BSD (Shanghai Yitu Technology)", origin=_T2T_ORIGIN,
        url=_T2T_URL + _file, ema=True,
    )  # fmt: skip

# Registered models with no public ImageNet-1k classification weights, and why.
NO_PUBLIC_WEIGHTS = {
    "nlresnet50": "non-local blocks were released for video (Kinetics) and detection (COCO), not ImageNet classifiers",
    "snlresnet50": "no ImageNet classification weights were released",
    "gcresnet50": "GCNet released COCO detectors only (backbone loadable from them, classifier not)",
    "gcresnet101": "GCNet released COCO detectors only (backbone loadable from them, classifier not)",
    "botnet50": "BoTNet's authors released no weights",
}


def _with_paper_top1(record: PretrainedTag) -> PretrainedTag:
    """The paper's top-1 for the paper's own releases; other releases report only the figure their source gives."""
    if record.top1 is not None or not record.paper_release:
        return record
    paper = get_entry(record.model).paper
    return replace(record, top1=paper.top1, top1_resolution=record.input_size[-1] if paper.top1 else None)


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Every tag (``model.tag``), sorted, optionally filtered by a glob pattern (``'volo_*'``)."""
    names = sorted(_TAGS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_pretrained(name: str, pretrained: bool | str = True) -> PretrainedTag:
    """The record of ``name`` (``model`` or ``model.tag``) for ``pretrained`` (True: the model's default tag, the
    first listed; a string: that tag). Raises ``ValueError`` naming the tags there are."""
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
    return _with_paper_top1(_TAGS[full])


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
