"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix, summed over data-parallel ranks."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from glocal.data.transforms import normalize
from glocal.engine.distributed import DistInfo, all_reduce_sum, shard

__all__ = ["EvalResult", "autocast", "evaluate", "save_confusion_png", "save_curves_png"]


@dataclass
class EvalResult:
    """Metrics over ``count`` images; accuracies in percent. ``confusion[i, j]`` counts class i predicted as j."""

    top1: float
    top5: float
    loss: float
    count: int
    per_class: list[float]
    confusion: torch.Tensor
    classes: tuple[str, ...]

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    img_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    info: DistInfo | None = None,
    workers: int = 0,
) -> EvalResult:
    """Evaluate ``model`` on every image of ``dataset`` (each rank takes a strided shard; the sums are reduced).

    The dataset's images are the eval view already, uint8 at ``img_size`` (open it with
    ``transform=create_transform(model.data_config, normalize=False)``); they are normalised with ``mean``/``std``.
    """
    num_classes = len(dataset.classes)
    indices = shard(len(dataset), info)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-5 hits, count
    for images, labels in loader:
        if tuple(images.shape[-2:]) != tuple(img_size):
            raise ValueError(
                f"the evaluation images are {images.shape[-2]}x{images.shape[-1]}, not the {img_size[0]}x{img_size[1]} "
                f"eval view; open the dataset with transform=glocal.data.create_transform(data_config, normalize=False)"
            )
        x = normalize(images, mean, std).to(device)
        labels = labels.to(device)
        with autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        k = min(5, num_classes)
        top = logits.topk(k, dim=1).indices  # (B, k)
        sums[0] += F.cross_entropy(logits, labels, reduction="sum")
        sums[1] += (top == labels[:, None]).any(dim=1).sum()
        sums[2] += len(labels)
        confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels, dtype=confusion.dtype), accumulate=True)
    model.train(was_training)
    if info is not None:
        all_reduce_sum(confusion, info)
        all_reduce_sum(sums, info)
    confusion, sums = confusion.cpu(), sums.cpu()
    count = int(sums[2])
    if count == 0:
        raise ValueError("the evaluation split has no images")
    per_class = (confusion.diagonal() / confusion.sum(1).clamp(min=1) * 100).tolist()
    return EvalResult(
        top1=float(confusion.diagonal().sum() / count * 100),
        top5=float(sums[1] / count * 100),
        loss=float(sums[0] / count),
        count=count,
        per_class=per_class,
        confusion=confusion.long(),
        classes=tuple(dataset.classes),
    )


def save_confusion_png(result: EvalResult, path: str | Path, title: str = "") -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) with matplotlib and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    k = len(result.classes)
    size = min(4 + 0.4 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(result.confusion.numpy(), cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"top-1 {result.top1:.2f}% on {result.count} images")
    if k <= 50:
        ax.set_xticks(range(k), result.classes, rotation=90)
        ax.set_yticks(range(k), result.classes)
        threshold = result.confusion.max().item() / 2
        for i in range(k):
            for j in range(k):
                value = int(result.confusion[i, j])
                if value:
                    color = "white" if value > threshold else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curves_png(records: list[dict], path: str | Path, title: str = "", metric: str = "top1") -> Path:
    """Loss and ``metric`` (top-1; mIoU for segmentation) per epoch (training, validation, and the EMA's validation
    when kept) from ``log.jsonl`` records, side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in ((loss_ax, "loss"), (metric_ax, metric)):
        for key, label in ((f"train_{name}", "train"), (f"val_{name}", "val"), (f"ema_val_{name}", "val, EMA")):
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if name == "loss" else {"top1": "top-1"}.get(name, name) + " %")
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
