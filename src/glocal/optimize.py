"""Inference optimisation of any glocal model: BatchNorm folding, channels-last memory format, reduced precision.

:func:`optimize_for_inference` returns an eval-mode model computing the same function as the eager one:

* **BN folding**: every ``BatchNorm2d`` that directly consumes a ``Conv2d``'s output is folded into that conv's
  weight and bias and replaced by ``Identity``. The pairs are found by running the model once on an example input and
  watching which tensor each BN receives, so no family needs to declare its conv/BN pairs; the folded model is then
  checked against the eager one on that input (a conv output also used elsewhere would be caught there).
* **channels-last**: 4-D weights (and the inputs the caller passes) in NHWC, the layout oneDNN's convolutions prefer
  on CPU and tensor cores on GPU.
* **dtype**: cast the weights (``torch.bfloat16`` runs the AVX512-BF16/AMX kernels on recent CPUs); the caller casts
  the input to match.
* **constant weights**: the linear weights are declared constant to the CPU backend
  (:func:`glocal.backends.cpu.freeze_weights`), whose oneDNN inference products then read them in a layout packed
  once (a second copy of each linear weight); change them in place (``copy_``, ``load_state_dict``), not through
  ``.data``.
* **freeze** (opt-in): trace the model on the example with TorchScript, freeze it (weights become constants) and run
  ``torch.jit.optimize_for_inference``, which on CPU hands convolutions to oneDNN with prepacked weights and fused
  ReLU/add: about 1.5-2x for the convolutional families on CPU, little for transformers. The result is a
  ``ScriptModule`` specialised to the example's spatial size and dtype (Python branches on shapes are frozen in), and
  TorchScript is deprecated in torch 2.x (its deprecation warnings are silenced here): use it while torch ships it.

Tolerances: in float32 the folded model equals the eager one to rounding (max abs difference below 1e-4 of the
logits' scale, checked); in bfloat16 to about 1e-2 relative, the precision of the format.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend

__all__ = ["fold_batchnorm", "optimize_for_inference"]

# Folding reorders float32 roundings; the check allows this much, relative to the largest logit.
FOLD_RTOL = 1e-4


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(x)) for a BN in eval mode: scale each output channel's filter, shift its bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BN whose input is exactly the output tensor of a conv, in one eval forward."""
    # Conv outputs stay referenced until the pass ends, so no later tensor can reuse an id.
    produced_by: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def record(mod, args, out, name=name):
                produced_by[id(out)] = (name, out)

            handles.append(module.register_forward_hook(record))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.affine:

            def match(mod, args, name=name):
                conv = produced_by.get(id(args[0]))
                if conv is not None and conv[1] is args[0]:
                    pairs.append((conv[0], name))

            handles.append(module.register_forward_pre_hook(match))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    # A conv or BN seen with several partners (shared modules) is left alone.
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return sorted({(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1})


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every conv -> BN pair of the eval-mode ``model`` in place; returns the number of BNs folded.

    ``example`` is an input the model accepts; the folded model is checked against the eager one on it and a
    mismatch raises ``RuntimeError`` (the model is then left unchanged only if the caller works on a copy).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BN uses its running statistics)")
    with torch.no_grad():
        reference = model(example)
    pairs = _conv_bn_pairs(model, example)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        _fold_into(modules[conv_name], modules[bn_name])
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, nn.Identity())
    with torch.no_grad():
        folded = model(example)
    error = (folded - reference).abs().max().item()
    if error > FOLD_RTOL * max(reference.abs().max().item(), 1.0):
        raise RuntimeError(f"BN folding changed the output by {error:.3g}: a folded conv's output is used elsewhere")
    return len(pairs)


def optimize_for_inference(
    model: nn.Module,
    *,
    example: torch.Tensor | None = None,
    fold_bn: bool = True,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    freeze: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """An eval-mode copy of ``model`` (or the model itself with ``inplace``) with BN folded, weights in channels-last
    layout and cast to ``dtype``, optionally frozen to TorchScript for the example's input size. ``example``
    defaults to one image at the model's ``data_config`` input size.

    Feed it inputs in the same layout and dtype: ``x.to(memory_format=torch.channels_last, dtype=dtype)``.

    ``dtype=torch.bfloat16`` is glocal's fast CPU inference path on CPUs with AVX512-BF16 or AMX (Intel Sapphire
    Rapids and later, AMD Zen 4 and later): the products run on oneDNN's bfloat16 kernels (AMX tiles where present),
    and with the CPU backend on the transformer MLPs fuse GELU and the residual addition into them. Top-1 agrees
    with float32 on 96-99% of real images (``benchmarks/bf16_agreement.py``); ``glocal bench MODEL --dtype bf16
    --optimize`` measures the speed and its share of the bfloat16 matmul peak (docs/benchmarks.md).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    param = next(model.parameters())
    if example is None:
        example = torch.randn(1, *model.data_config.input_size, device=param.device, dtype=param.dtype)
    if fold_bn:
        fold_batchnorm(model, example)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if dtype is not None:
        model.to(dtype)
    cpu_backend.freeze_weights(model)  # the CPU backend's inference products may pack the weights once
    if freeze:
        example = example.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example.to(dtype) if dtype is not None else example)
            model = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return model
