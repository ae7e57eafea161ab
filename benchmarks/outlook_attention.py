"""Outlook attention: glocal's pad/unfold-view/overlap-add formulation against the official unfold -> matmul -> fold.

Shapes of VOLO-D1's stage 1 at 224 x 224 (tokens 28 x 28, 192 channels, 6 heads), batch 8, float32. Both paths share
one module's weights (:meth:`OutlookAttention.forward` and :meth:`OutlookAttention.forward_reference`); the script
first checks that outputs and gradients agree, then times the forward pass (no grad) and forward + backward, the two
formulations interleaved repeat by repeat so that load from other processes hits both alike, and prints the median
times and the ratio reference / ours (> 1: ours is faster).

    python benchmarks/outlook_attention.py [--batch 8] [--repeats 30] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glocal.models.volo import OutlookAttention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=28, help="token grid side (VOLO-D1 stage 1 at 224: 28)")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    attn = OutlookAttention(args.dim, args.heads).to(device)
    x = torch.randn(args.batch, args.size, args.size, args.dim, device=device)

    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = attn(xo), attn.forward_reference(xr)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    ref.backward(grad)
    out_err = (ours - ref).abs().max().item()
    grad_err = (xo.grad - xr.grad).abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-4)

    def forward(f):
        def run():
            with torch.no_grad():
                f(x)

        return run

    def forward_backward(f):
        def run():
            f(x.detach().requires_grad_()).sum().backward()

        return run

    print(
        f"outlook attention, x {tuple(x.shape)} float32 on {device}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}"
    )
    print(f"agreement: max |out diff| {out_err:.2e}, max |input grad diff| {grad_err:.2e}")
    for name, wrap in (("forward", forward), ("forward+backward", forward_backward)):
        runs = {"ours": wrap(attn), "unfold-fold": wrap(attn.forward_reference)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(args.warmup + args.repeats):
            for key, run in runs.items():
                t = _time(run, device)
                if i >= args.warmup:
                    times[key].append(t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratio = med["unfold-fold"] / med["ours"]
        print(
            f"{name:>17}: ours {med['ours']:8.2f} ms  unfold-fold {med['unfold-fold']:8.2f} ms  "
            f"ratio (unfold-fold / ours) {ratio:.2f}x  (median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
