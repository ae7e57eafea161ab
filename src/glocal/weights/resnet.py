"""Checkpoint layouts of the ResNet family (ResNet, SE, GC, NL, SNL, and leaderj1001's BoTNet code).

glocal's ResNet names are torchvision's (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1,2,3}/bn{1,2,3}``,
``downsample.{0,1}``, ``fc``), so torchvision's and timm's ``resnet50/101`` state dicts load as they are. Block
attention sits at ``layer{s}.{i}.context``. The other sources:

``timm-legacy-seresnet``
    timm's ``legacy_seresnet50/101``, the port of the official SENet weights by Cadene's ``pretrainedmodels``
    (``se_resnet50``), which uses the same names: ``layer0.{conv1,bn1}``, ``layer{s}.{i}.se_module.{fc1,fc2}``
    (biased 1x1 convs), ``last_linear``. Stride on the first 1x1 and a ceil-mode stem pool, as glocal's
    ``seresnet50/101``; RGB input with ImageNet mean/std.
``timm-seresnet``
    timm's torchvision-style ``seresnet50`` (``layer{s}.{i}.se.{fc1,fc2}``, ``fc``): a different architecture from
    the official SENet (stride on the 3x3); it loads into ``create_model("seresnet50", stride_in_1x1=False,
    stem_pool_ceil=False)``.
``senet-caffe``
    The official Caffe release (hujie-frank/SENet ``SE-ResNet-{50,101}.caffemodel``) with its layer names, one
    tensor per Caffe blob named ``{layer}.{blob index}`` (``conv2_1_1x1_reduce.0``, ``conv2_1_1x1_reduce/bn.2``...).
    Caffe's ``BatchNorm`` blobs (mean and variance times a scale factor, the factor) become the running statistics;
    ``/bn/scale`` holds gamma and beta; ``_1x1_down``/``_1x1_up`` are the SE convs; ``classifier`` the FC. Caffe
    takes BGR images in 0..255 minus the mean (104, 117, 123) without std; the first conv is converted to glocal's
    RGB ImageNet mean/std input (channels reversed, scaled by 255 * std, the mean difference folded into ``bn1``'s
    running mean), exact everywhere except at the zero-padded border of the first conv, where Caffe pads with the
    mean-subtracted value 0 and glocal with the normalised 0 (a difference under one grey level).
``bottleneck-transformers-lj``
    leaderj1001/BottleneckTransformers ``model.py`` state dicts (no weights are released; this loads what its
    training script saves) into ``botnet50_lj``: the MHSA at ``layer4.{i}.conv2.0.{query,key,value,rel_h,rel_w}``
    (``conv2.1`` is the parameter-free pool), ``shortcut.{0,1}`` for glocal's ``downsample.{0,1}``, ``fc.1`` (after
    the Dropout) for ``fc``; the rest are torchvision's names. Embeddings saved for another resolution are resampled.
``openmmlab``
    OpenMMLab checkpoints: mmdet detectors and mmpretrain classifiers keep the backbone under ``backbone.`` (other
    parts, e.g. ``neck``, ``rpn_head``, are ignored and listed in the log; mmpretrain's ``head.fc`` is the
    classifier). GCNet's ``ContextBlock`` (xvjiarui/GCNet, mmcv) is ``context_block.{conv_mask,
    channel_add_conv.{0,1,3}}``, glocal's ``context.{attn_pool, transform.{0,1,3}}``. mmcv's ``NonLocal2d`` plugin is
    ``nonlocal_block.{g,theta,phi}.conv`` (``.0.conv`` with ``sub_sample``) and ``conv_out.conv`` plus, with a norm
    configured, ``conv_out.bn`` (mmcv then drops the conv's bias). glocal's NL block ends in a BatchNorm, as the
    official video-nonlocal-net: mmcv's default block, with no norm (its ``conv_out`` starts at zero instead), loads
    with that BatchNorm set to the identity (gamma 1, beta 0, mean 0, variance 1 - eps); exporting a block whose
    BatchNorm is exactly that identity writes mmcv's default layout, otherwise ``conv_out.bn`` with the conv's bias
    folded into the running mean. mmdet's plugins sit inside a bottleneck (``after_conv3``, before the residual
    add) while glocal's NL default is after the block: build the model with the matching ``attn_position``.
``caffe2``
    Caffe2 blob names of facebookresearch/video-nonlocal-net (and Detectron's ResNets): ``conv1_w``,
    ``res_conv1_bn_{s,b,rm,riv}``, ``res{s}_{i}_branch2{a,b,c}_w`` with ``_bn_*``, ``res{s}_{i}_branch1_*`` (the
    projection shortcut), ``pred_{w,b}``, and the non-local blocks ``nonlocal_conv{s}_{i}_{theta,phi,g,out}_{w,b}``,
    ``nonlocal_conv{s}_{i}_bn_{s,b,rm,riv}`` (``rm``, ``riv``: SpatialBN's running mean and variance outputs). A
    block inserted after res4 block ``i`` is glocal's ``layer3.{i}.context`` (``attn_position='after_add'``).
    Spatio-temporal kernels with one time step are squeezed to 2-D; inflated (T > 1) video kernels are refused.
    Optimiser blobs (``*_momentum``) are dropped. Weights are taken as stored: feed the source's preprocessing.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

from glocal.layers.non_local import NonLocal2d
from glocal.weights.io import CheckpointError
from glocal.weights.layout import KeyMap, Layout, StateDict, register_layout

__all__ = ["BOTNET_LJ", "CAFFE2", "OPENMMLAB", "SENET_CAFFE", "TIMM_LEGACY_SERESNET", "TIMM_SERESNET"]

_log = logging.getLogger(__name__)

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _drop_counters(state_dict: StateDict) -> StateDict:
    return {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}


# ---------------------------------------------------------------------------------------------------- timm
_LEGACY_SE_MAP = KeyMap(
    [
        ("layer0.conv1.{*}", "conv1.{*}"),
        ("layer0.bn1.{*}", "bn1.{*}"),
        ("layer{s}.{i}.se_module.fc1.{*}", "layer{s}.{i}.context.transform.0.{*}"),
        ("layer{s}.{i}.se_module.fc2.{*}", "layer{s}.{i}.context.transform.3.{*}"),
        ("last_linear.{*}", "fc.{*}"),
        ("{*}", "{*}"),
    ]
)

TIMM_LEGACY_SERESNET = register_layout(
    Layout.renaming(
        _LEGACY_SE_MAP,
        name="timm-legacy-seresnet",
        family="resnet",
        description="timm legacy_seresnet50/101 = Cadene pretrainedmodels se_resnet50/101 (official SENet weights)",
        markers=(r"^layer0\.conv1\.weight$", r"\.se_module\.fc1\.weight$"),
    )
)

_TIMM_SE_MAP = KeyMap(
    [
        ("layer{s}.{i}.se.fc1.{*}", "layer{s}.{i}.context.transform.0.{*}"),
        ("layer{s}.{i}.se.fc2.{*}", "layer{s}.{i}.context.transform.3.{*}"),
        ("{*}", "{*}"),
    ]
)

TIMM_SERESNET = register_layout(
    Layout.renaming(
        _TIMM_SE_MAP,
        name="timm-seresnet",
        family="resnet",
        description="timm seresnet50/101 (torchvision-style SE-ResNet, stride on the 3x3)",
        markers=(r"^layer1\.0\.se\.fc1\.weight$",),
    )
)


# ---------------------------------------------------------------------------------------------------- leaderj1001
_LJ_MAP = KeyMap(
    [
        *((f"layer{{s}}.{{i}}.conv2.0.{name}", f"layer{{s}}.{{i}}.conv2.{name}") for name in ("rel_h", "rel_w")),
        *(
            (f"layer{{s}}.{{i}}.conv2.0.{name}.{{*}}", f"layer{{s}}.{{i}}.conv2.{name}.{{*}}")
            for name in ("query", "key", "value")
        ),
        ("layer{s}.{i}.shortcut.{*}", "layer{s}.{i}.downsample.{*}"),
        ("fc.1.{*}", "fc.{*}"),
        ("{*}", "{*}"),
    ]
)

BOTNET_LJ = register_layout(
    Layout.renaming(
        _LJ_MAP,
        name="bottleneck-transformers-lj",
        family="resnet",
        description="leaderj1001/BottleneckTransformers model.py ResNet50 (botnet50_lj)",
        markers=(r"\.conv2\.0\.rel_h$", r"^fc\.1\.weight$"),
    )
)


# ---------------------------------------------------------------------------------------------------- Caffe
def _caffe_pairs(caffe: str, conv: str, bn: str | None) -> list[tuple[str, str]]:
    """Caffe blob names of a conv (weight, bias) and its BatchNorm + Scale layers, and glocal's names."""
    pairs = [(f"{caffe}.0", f"{conv}.weight"), (f"{caffe}.1", f"{conv}.bias")]
    if bn is not None:
        pairs += [
            (f"{caffe}/bn.0", f"{bn}.running_mean"),
            (f"{caffe}/bn.1", f"{bn}.running_var"),
            (f"{caffe}/bn.2", f"{bn}.scale_factor"),
            (f"{caffe}/bn/scale.0", f"{bn}.weight"),
            (f"{caffe}/bn/scale.1", f"{bn}.bias"),
        ]
    return pairs


_SENET_CAFFE_MAP = KeyMap(
    _caffe_pairs("conv1/7x7_s2", "conv1", "bn1")
    + _caffe_pairs("conv{s+1}_{i+1}_1x1_reduce", "layer{s}.{i}.conv1", "layer{s}.{i}.bn1")
    + _caffe_pairs("conv{s+1}_{i+1}_3x3", "layer{s}.{i}.conv2", "layer{s}.{i}.bn2")
    + _caffe_pairs("conv{s+1}_{i+1}_1x1_increase", "layer{s}.{i}.conv3", "layer{s}.{i}.bn3")
    + _caffe_pairs("conv{s+1}_{i+1}_1x1_proj", "layer{s}.{i}.downsample.0", "layer{s}.{i}.downsample.1")
    + _caffe_pairs("conv{s+1}_{i+1}_1x1_down", "layer{s}.{i}.context.transform.0", None)
    + _caffe_pairs("conv{s+1}_{i+1}_1x1_up", "layer{s}.{i}.context.transform.3", None)
    + _caffe_pairs("classifier", "fc", None)
)

# SENet's Caffe input: BGR pixels in 0..255 minus this per-channel mean (hujie-frank/SENet README), no std.
_SENET_CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


def _caffe_input_terms(model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per RGB channel: the weight scale 255 * std, and the offset 255 * mean - Caffe mean (glocal's 0 in Caffe's
    units)."""
    mean = torch.tensor(model.data_config.mean, dtype=torch.float64, device=device)
    std = torch.tensor(model.data_config.std, dtype=torch.float64, device=device)
    caffe_mean_rgb = torch.tensor(_SENET_CAFFE_MEAN_BGR[::-1], dtype=torch.float64, device=device)
    return 255 * std, 255 * mean - caffe_mean_rgb


def _senet_caffe_to_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    sd = _SENET_CAFFE_MAP.rename_to_ours(state_dict)
    for key in [k for k in sd if k.endswith(".scale_factor")]:
        factor = sd.pop(key).reshape(-1)[0].item()
        inv = 0.0 if factor == 0 else 1.0 / factor  # as Caffe's BatchNorm layer
        bn = key[: -len(".scale_factor")]
        for stat in ("running_mean", "running_var"):
            sd[f"{bn}.{stat}"] = sd[f"{bn}.{stat}"] * inv
    if "conv1.weight" in sd and "bn1.running_mean" in sd:
        scale, offset = _caffe_input_terms(model, sd["conv1.weight"].device)
        w_rgb = sd["conv1.weight"].double().flip(1)  # (O, 3, 7, 7), channels now R, G, B
        sd["bn1.running_mean"] = (sd["bn1.running_mean"].double() - (w_rgb.sum((2, 3)) @ offset)).float()
        sd["conv1.weight"] = (w_rgb * scale[None, :, None, None]).float()
    return sd


def _senet_caffe_from_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    sd = _drop_counters(state_dict)
    scale, offset = _caffe_input_terms(model, sd["conv1.weight"].device)
    w_rgb = sd["conv1.weight"].double() / scale[None, :, None, None]
    sd["bn1.running_mean"] = (sd["bn1.running_mean"].double() + (w_rgb.sum((2, 3)) @ offset)).float()
    sd["conv1.weight"] = w_rgb.flip(1).float()
    for key in [k for k in sd if k.endswith(".running_mean")]:
        sd[key[: -len("running_mean")] + "scale_factor"] = torch.ones(1, device=sd[key].device)
    return _SENET_CAFFE_MAP.rename_to_theirs(sd)


SENET_CAFFE = register_layout(
    Layout(
        name="senet-caffe",
        family="resnet",
        description="official SENet Caffe blobs, '{layer}.{blob index}' (hujie-frank/SENet)",
        markers=(r"^conv2_1_1x1_reduce\.0$",),
        to_glocal=_senet_caffe_to_glocal,
        from_glocal=_senet_caffe_from_glocal,
    )
)


# ---------------------------------------------------------------------------------------------------- Caffe2
def _caffe2_pairs(caffe2: str, conv: str, bn_prefix: str | None, bn: str | None) -> list[tuple[str, str]]:
    pairs = [(f"{caffe2}_w", f"{conv}.weight"), (f"{caffe2}_b", f"{conv}.bias")]
    if bn is not None:
        pairs += [
            (f"{bn_prefix}_bn_{c2}", f"{bn}.{p}") for c2, p in zip(("s", "b", "rm", "riv"), _BN_PARAMS, strict=True)
        ]
    return pairs


_CAFFE2_MAP = KeyMap(
    _caffe2_pairs("conv1", "conv1", "res_conv1", "bn1")
    + [
        pair
        for letter, n in (("a", 1), ("b", 2), ("c", 3))
        for pair in _caffe2_pairs(
            f"res{{s+1}}_{{i}}_branch2{letter}",
            f"layer{{s}}.{{i}}.conv{n}",
            f"res{{s+1}}_{{i}}_branch2{letter}",
            f"layer{{s}}.{{i}}.bn{n}",
        )
    ]
    + _caffe2_pairs(
        "res{s+1}_{i}_branch1", "layer{s}.{i}.downsample.0", "res{s+1}_{i}_branch1", "layer{s}.{i}.downsample.1"
    )
    + [
        pair
        for part in ("theta", "phi", "g", "out")
        for pair in _caffe2_pairs(f"nonlocal_conv{{s+1}}_{{i}}_{part}", f"layer{{s}}.{{i}}.context.{part}", None, None)
    ]
    + [
        (f"nonlocal_conv{{s+1}}_{{i}}_bn_{c2}", f"layer{{s}}.{{i}}.context.norm.{p}")
        for c2, p in zip(("s", "b", "rm", "riv"), _BN_PARAMS, strict=True)
    ]
    + _caffe2_pairs("pred", "fc", None, None)
)


def _caffe2_to_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    dropped = [k for k in state_dict if k.endswith("_momentum")]
    if dropped:
        _log.info("caffe2 checkpoint: ignoring %d optimiser blobs (*_momentum)", len(dropped))
    sd = _CAFFE2_MAP.rename_to_ours({k: v for k, v in state_dict.items() if k not in dropped})
    for key, value in sd.items():
        if value.ndim == 5:
            if value.shape[2] != 1:
                raise CheckpointError(
                    f"{_CAFFE2_MAP.to_theirs(key)}: a video kernel inflated over {value.shape[2]} time steps "
                    f"{tuple(value.shape)} has no 2-D equivalent in an image model"
                )
            sd[key] = value.squeeze(2)
    return sd


CAFFE2 = register_layout(
    Layout(
        name="caffe2",
        family="resnet",
        description="Caffe2 blobs of video-nonlocal-net / Detectron ResNets (res2_0_branch2a_w, nonlocal_conv4_*)",
        markers=(r"^res2_0_branch2a_w$",),
        to_glocal=_caffe2_to_glocal,
        from_glocal=lambda sd, model: _CAFFE2_MAP.rename_to_theirs(_drop_counters(sd)),
    )
)


# ---------------------------------------------------------------------------------------------------- OpenMMLab
_MM_MAP = KeyMap(
    [
        ("layer{s}.{i}.context_block.conv_mask.{*}", "layer{s}.{i}.context.attn_pool.{*}"),
        ("layer{s}.{i}.context_block.channel_add_conv.{j}.{*}", "layer{s}.{i}.context.transform.{j}.{*}"),
        ("layer{s}.{i}.nonlocal_block.theta.conv.{*}", "layer{s}.{i}.context.theta.{*}"),
        ("layer{s}.{i}.nonlocal_block.phi.conv.{*}", "layer{s}.{i}.context.phi.{*}"),
        ("layer{s}.{i}.nonlocal_block.g.conv.{*}", "layer{s}.{i}.context.g.{*}"),
        ("layer{s}.{i}.nonlocal_block.conv_out.conv.{*}", "layer{s}.{i}.context.out.{*}"),
        ("layer{s}.{i}.nonlocal_block.conv_out.bn.{*}", "layer{s}.{i}.context.norm.{*}"),
        ("{*}", "{*}"),
    ]
)


def _nl_blocks(model: nn.Module) -> list[tuple[str, NonLocal2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NonLocal2d)]


def _identity_bn(like: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """BatchNorm tensors computing the identity in eval mode: (x - 0) / sqrt((1 - eps) + eps) * 1 + 0."""
    return {
        "weight": torch.ones_like(like),
        "bias": torch.zeros_like(like),
        "running_mean": torch.zeros_like(like),
        "running_var": torch.full_like(like, 1 - eps),
    }


def _unwrap_subsampled(key: str) -> str:
    """mmcv's sub-sampling NL block wraps g and phi with their max-pool in a Sequential: ``g.0.conv`` -> ``g.conv``."""
    for part in ("g", "phi"):
        key = key.replace(f".nonlocal_block.{part}.0.conv.", f".nonlocal_block.{part}.conv.")
    return key


def _openmmlab_to_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    sd = dict(state_dict)
    if any(k.startswith("backbone.") for k in sd):
        ignored = Counter(k.split(".")[0] for k in sd if not k.startswith(("backbone.", "head.fc.")))
        if ignored:
            _log.info("openmmlab checkpoint: ignoring non-backbone parts %s", dict(ignored))
        sd = {
            (k[len("backbone.") :] if k.startswith("backbone.") else "fc." + k[len("head.fc.") :]): v
            for k, v in sd.items()
            if k.startswith(("backbone.", "head.fc."))
        }
    present = {k.split(".nonlocal_block.")[0] + ".context" for k in sd if ".nonlocal_block.g." in k}
    subsampled = {k.split(".nonlocal_block.")[0] + ".context" for k in sd if ".nonlocal_block.g.0.conv." in k}
    for name, block in _nl_blocks(model):
        if name in present and (name in subsampled) != isinstance(block.pool, nn.MaxPool2d):
            raise CheckpointError(
                f"{name}: the checkpoint's non-local block "
                f"{'sub-samples' if name in subsampled else 'does not sub-sample'} phi and g (mmcv sub_sample), the "
                f"model's does not: build it with nl_subsample={name in subsampled}"
            )
    sd = _MM_MAP.rename_to_ours({_unwrap_subsampled(k): v for k, v in sd.items()})
    for name, block in _nl_blocks(model):
        out_w = sd.get(f"{name}.out.weight")
        if out_w is None:
            continue
        if f"{name}.norm.weight" not in sd:  # mmcv's default: no norm after conv_out
            like = torch.zeros(out_w.shape[0], dtype=out_w.dtype)
            sd.update({f"{name}.norm.{p}": t for p, t in _identity_bn(like, block.norm.eps).items()})
        elif f"{name}.out.bias" not in sd:  # a norm configured: mmcv's ConvModule drops the conv's bias
            sd[f"{name}.out.bias"] = torch.zeros(out_w.shape[0], dtype=out_w.dtype)
    return sd


def _openmmlab_from_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    sd = _drop_counters(state_dict)
    for name, block in _nl_blocks(model):
        norm = {p: sd[f"{name}.norm.{p}"] for p in _BN_PARAMS}
        identity = _identity_bn(norm["weight"], block.norm.eps)
        if not norm["weight"].is_meta and all(torch.equal(norm[p], identity[p]) for p in _BN_PARAMS):
            for p in _BN_PARAMS:
                del sd[f"{name}.norm.{p}"]
        else:
            sd[f"{name}.norm.running_mean"] = norm["running_mean"] - sd.pop(f"{name}.out.bias")
    sd = _MM_MAP.rename_to_theirs(sd)
    for name, block in _nl_blocks(model):
        if isinstance(block.pool, nn.MaxPool2d):
            host = name.rsplit(".", 1)[0]  # layer{s}.{i}
            for part in ("g", "phi"):
                for p in ("weight", "bias"):
                    sd[f"{host}.nonlocal_block.{part}.0.conv.{p}"] = sd.pop(f"{host}.nonlocal_block.{part}.conv.{p}")
    return {(f"head.{k}" if k.startswith("fc.") else f"backbone.{k}"): v for k, v in sd.items()}


OPENMMLAB = register_layout(
    Layout(
        name="openmmlab",
        family="resnet",
        description="mmdet/mmpretrain ResNets with GCNet's ContextBlock and mmcv's NonLocal2d (backbone., head.fc)",
        markers=(r"^backbone\.|\.context_block\.|\.nonlocal_block\.",),
        to_glocal=_openmmlab_to_glocal,
        from_glocal=_openmmlab_from_glocal,
    )
)
