"""Every timm-listed tag against timm itself: preprocessing, licence and logits from timm's own model.

For each tag that timm lists (its Hugging Face repos, and the legacy_seresnet URL releases), timm builds the model
with random weights, its state_dict is saved where the tag's downloader looks (``model.safetensors`` in a cache laid
out as the hub lays it out, read with ``HF_HUB_OFFLINE=1``; the ``.pth`` in ``$GLOCAL_HOME`` for URL tags), glocal
loads ``create_model(tag, pretrained=True)`` from it, and both models run on the same image preprocessed with
glocal's ``create_transform`` of the tag. Printed per tag: the tag's fields that differ from timm's pretrained cfg
(``ok`` when none), max |glocal - timm| of the preprocessed input (timm's eval transform against glocal's, where
torchvision's transforms import) and of the logits. Needs timm (see benchmarks/README.md for the peer environment):

    PYTHONPATH=src:/tmp/peers_pkgs OMP_NUM_THREADS=1 python benchmarks/check_pretrained_timm.py [PATTERN ...]

``--results-csv PATH`` (timm's results/results-imagenet.csv, from a checkout of timm) also checks each tag's
reported top-1 against the CSV row at the tag's input size, crop_pct and interpolation.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import os
import sys
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="glocal-timm-check-"))
os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(_CACHE / "hub"), GLOCAL_HOME=str(_CACHE / "glocal"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare_peers import disable_torchvision_native_ops  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import glocal  # noqa: E402
from glocal.data import create_transform  # noqa: E402
from glocal.pretrained import get_pretrained, list_pretrained  # noqa: E402

_COMMIT = "0" * 40  # the snapshot folder's name in the generated cache; refs/main points at it


def timm_name(record) -> str:
    return f"legacy_{record.model}.in1k" if record.model.startswith("seresnet") else record.name


def cfg_differences(record, cfg: dict) -> list[str]:
    """The record's preprocessing, classes and licence fields that differ from timm's pretrained cfg."""
    ours = {**record.data_config, "num_classes": record.num_classes, "license": record.licence}
    theirs = {k: cfg.get(k) for k in ours}
    out = []
    for key, value in ours.items():
        other = theirs[key]
        same = np.allclose(value, other) if key in ("mean", "std", "crop_pct") else tuple_or(value) == tuple_or(other)
        if not same:
            out.append(f"{key}: glocal {value} timm {other}")
    return out


def tuple_or(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def csv_differences(record, rows: list[dict]) -> list[str]:
    """Where the record's top-1 is not the results CSV's figure at the record's view (Cadene's tags report the
    README's figure for the port: the CSV's is shown)."""
    view = [r for r in rows if r["model"] == timm_name(record) and int(r["img_size"]) == record.input_size[-1]
            and float(r["crop_pct"]) == record.crop_pct and r["interpolation"] == record.interpolation]  # fmt: skip
    if len(view) != 1:
        return [f"results CSV: {len(view)} rows at {record.input_size[-1]} px, crop_pct {record.crop_pct}"]
    top1 = float(view[0]["top1"])
    return [] if top1 == record.top1 else [f"top1: glocal {record.top1} results CSV {top1}"]


def place(record, state_dict: dict) -> None:
    """Put ``state_dict`` where ``record``'s downloader looks for its file."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if record.hf_hub_id is not None:
        repo = _CACHE / "hub" / ("models--" + record.hf_hub_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(_COMMIT)
        (repo / "snapshots" / _COMMIT).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(repo / "snapshots" / _COMMIT / record.filename))
    else:
        (_CACHE / "glocal" / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(tensors, _CACHE / "glocal" / "checkpoints" / record.filename)


def timm_view(timm, model, image: Image.Image) -> torch.Tensor | None:
    """timm's own eval transform of ``image`` for ``model``'s pretrained cfg (None where torchvision cannot run)."""
    try:
        config = timm.data.resolve_model_data_config(model)
        return timm.data.create_transform(**config, is_training=False)(image)[None]
    except Exception as err:  # torchvision's transforms failed to import or run in this environment
        print(f"  timm transform unavailable: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", nargs="*", default=["*"], help="glob patterns of tags (default: all)")
    parser.add_argument("--results-csv", type=Path, help="timm's results/results-imagenet.csv to check top-1 against")
    args = parser.parse_args()
    rows = list(csv.DictReader(args.results_csv.open())) if args.results_csv else None
    disable_torchvision_native_ops()
    try:
        import timm
    except ImportError as err:
        print(f"timm is not importable ({err}); see benchmarks/README.md for the peer environment")
        return 1
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 340, 3), dtype=np.uint8))
    names = [n for n in list_pretrained() if any(fnmatch.fnmatch(n, p) for p in args.patterns)]
    print(f"timm {timm.__version__}, torch {torch.__version__}, {len(names)} tags")
    print(f"{'tag':44} {'timm model':44} {'cfg':6} {'|x diff|':>9} {'|logit diff|':>12} {'|logit|':>8}")
    worst = 0.0
    for name in names:
        record = get_pretrained(name)
        if record.hf_hub_id is None and not record.model.startswith("seresnet"):
            continue  # the official T2T-ViT releases: timm lists none
        peer = timm.create_model(timm_name(record), pretrained=False).eval()
        for module in peer.modules():  # non-trivial BatchNorm statistics, so a misplaced tensor shows
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        place(record, peer.state_dict())
        model = glocal.create_model(name, pretrained=True).eval()
        differences = cfg_differences(record, peer.pretrained_cfg) + (csv_differences(record, rows) if rows else [])
        x = create_transform(model.pretrained_cfg)(image)[None]
        theirs = timm_view(timm, peer, image)
        x_diff = f"{(x - theirs).abs().max().item():9.2e}" if theirs is not None else f"{'n/a':>9}"
        with torch.no_grad():
            ours, reference = model(x), peer(x)
        diff = (ours - reference).abs().max().item()
        worst = max(worst, diff)
        print(f"{name:44} {timm_name(record):44} {'ok' if not differences else 'DIFF':6} {x_diff} {diff:12.2e} "
              f"{reference.abs().max().item():8.3f}")  # fmt: skip
        for line in differences:
            print(f"  {line}")
        del peer, model
    print(f"max |glocal - timm| logits over all tags: {worst:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
