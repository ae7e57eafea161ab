"""Speed and memory of a segmenter at high resolution: ``glocal bench --task segment``."""

from __future__ import annotations

import dataclasses
import statistics

import torch

from glocal.analysis.bench import _memory_meter, _time_runs
from glocal.dense.segmenter import create_segmenter

__all__ = ["SegBenchRecord", "bench_segmenter"]


@dataclasses.dataclass
class SegBenchRecord:
    """One segmenter at one square input size; latency per batch, memory in MiB (peak growth of the timed runs)."""

    model: str
    head: str
    img_size: int
    batch_size: int
    mode: str
    device: str
    threads: int
    grad_checkpointing: bool
    latency_ms: float
    img_per_s: float
    mem_mib: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bench_segmenter(
    name: str,
    img_size: int,
    *,
    head: str = "upernet",
    batch_size: int = 1,
    mode: str = "infer",
    num_classes: int = 150,
    device: str = "cpu",
    grad_checkpointing: bool = False,
    warmup: int = 1,
    runs: int = 3,
) -> SegBenchRecord:
    """Time ``runs`` forward passes (``mode='infer'``) or training steps (forward, per-pixel cross-entropy with the
    auxiliary loss, backward, SGD) of ``create_segmenter(name, head=head)`` on a random ``img_size`` square batch."""
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    torch.manual_seed(0)
    model = create_segmenter(name, head=head, num_classes=num_classes, grad_checkpointing=grad_checkpointing)
    model.to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)

    else:
        model.train()
        target = torch.randint(0, num_classes, (batch_size, img_size, img_size), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.loss(model.forward_train(x), target).backward()
            optimizer.step()

    with _memory_meter(device) as mem:
        times = _time_runs(step, device, warmup, runs)
    latency = statistics.median(times)
    return SegBenchRecord(
        model=name,
        head=head,
        img_size=img_size,
        batch_size=batch_size,
        mode=mode,
        device=device,
        threads=torch.get_num_threads(),
        grad_checkpointing=grad_checkpointing,
        latency_ms=latency * 1e3,
        img_per_s=batch_size / latency,
        mem_mib=mem["mib"],
    )
