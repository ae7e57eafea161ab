"""bfloat16 inference against float32 on real images: top-1 agreement of each family, trained on the bundled digits.

For each model: a short ``glocal.engine.train`` run on scikit-learn's handwritten digits (small widths and depths,
64 px, a few epochs), then the validation images through the float32 model and through
``optimize_for_inference(model, dtype=torch.bfloat16)``. Prints both accuracies, the fraction of images on which the
two predict the same class, and the largest logit difference relative to the largest float32 logit.

    python benchmarks/bf16_agreement.py --epochs 6 --out /tmp/bf16_agreement
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from glocal.data.datasets import load_digits_split, open_dataset
from glocal.data.transforms import normalize
from glocal.engine import TrainConfig, train
from glocal.engine.inference import restore_model
from glocal.optimize import optimize_for_inference

# One small variant per family (the real block kinds, fewer and narrower blocks), trainable on a CPU in a minute.
MODELS = {
    "resnet50": dict(depths=[1, 1, 1, 1], widths=[16, 32, 64, 128], stem_width=16),
    "seresnet50": dict(depths=[1, 1, 1, 1], widths=[16, 32, 64, 128], stem_width=16),
    "botnet50": dict(depths=[1, 1, 1, 1], widths=[16, 32, 64, 128], stem_width=16),
    "twins_pcpvt_small": dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4]),
    "vit_small_patch16_224": dict(depth=4, embed_dim=96, num_heads=3, patch_size=8),
    "twins_svt_small": dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4]),
    "volo_d1_224": dict(depths=[1, 1, 1, 1], embed_dims=[64, 128, 128, 128], num_heads=[2, 4, 4, 4]),
    "t2t_vit_14": dict(depth=4, embed_dim=96, num_heads=3),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help=f"any of {list(MODELS)}")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bf16_agreement", help="folder for the training runs")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    val = load_digits_split("val")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits val: {len(val)} images")
    print(f"{'model':24s} {'fp32 top-1':>10s} {'bf16 top-1':>10s} {'agree':>7s} {'max |dlogit|/max':>16s}")
    for name in args.models:
        cfg = TrainConfig(model=name, model_kwargs=MODELS[name], img_size=args.img_size, epochs=args.epochs,
                          batch_size=64, lr=1e-3, optimizer="adamw", warmup_epochs=1, threads=args.threads,
                          output=tempfile.mkdtemp(prefix=f"{name}-", dir=args.out))  # fmt: skip
        result = train(cfg)
        restored = restore_model(result.checkpoint)  # the training state: architecture and view come with it
        viewed = open_dataset(None, "val", transform=restored.transform.pixels)  # the eval view of each digit
        x = normalize(viewed.images, restored.mean, restored.std)
        half = optimize_for_inference(restored.model, example=x[:8], dtype=torch.bfloat16)
        with torch.inference_mode():
            fp32 = restored.model(x)
            bf16 = half(x.to(memory_format=torch.channels_last, dtype=torch.bfloat16)).float()
        labels = val.labels
        agree = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
        err = ((bf16 - fp32).abs().max() / fp32.abs().max()).item()
        acc32, acc16 = ((out.argmax(1) == labels).float().mean().item() for out in (fp32, bf16))
        print(f"{name:24s} {acc32:10.1%} {acc16:10.1%} {agree:7.1%} {err:16.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
