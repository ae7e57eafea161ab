"""The model contract, checked on every registered model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import glocal
from glocal.analysis import analytic
from glocal.analysis.complexity import count_macs, count_params
from glocal.layers.context import GlobalContext
from glocal.layers.probe import AttentionProbe
from glocal.models.t2t_vit import TokenPerformer
from glocal.registry import get_entry
from tests.conftest import build, perturb_, small_size


def test_forward_shape_and_finite(model_name):
    model = build(model_name, num_classes=7).eval()
    h, w = small_size(model)
    with torch.no_grad():
        y = model(torch.randn(2, 3, h, w))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


def test_train_and_eval_return_same_type(model_name):
    model = build(model_name, num_classes=5)
    x = torch.randn(2, 3, *small_size(model))
    y_train = model.train()(x)
    with torch.no_grad():
        y_eval = model.eval()(x)
    assert isinstance(y_train, torch.Tensor) and y_train.shape == y_eval.shape == (2, 5)


def test_every_parameter_gets_a_gradient(model_name):
    model = perturb_(build(model_name, num_classes=4)).train()
    x = torch.randn(2, 3, *small_size(model))
    model(x).square().sum().backward()
    # Frozen parameters (T2T's fixed random features and sinusoidal table) are counted but never trained.
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"
    # A bias added to softmax logits has an analytically zero gradient (softmax is shift-invariant): the official
    # GC/SNL attention-pooling conv carries one. Every other parameter must receive a non-zero gradient.
    zero = [n for n, p in params.items() if not p.grad.abs().sum() > 0 and not n.endswith("attn_pool.bias")]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_parameter_count_matches_paper_and_pin(model_name):
    entry = get_entry(model_name)
    with torch.device("meta"):
        model = glocal.create_model(model_name)
    n = count_params(model)
    if entry.paper.exact_params:
        assert n == entry.paper.params
    else:
        assert abs(n - entry.paper.params) / entry.paper.params <= entry.paper.params_tolerance
    assert entry.pinned_params is not None, "every model pins its exact parameter count"
    assert n == entry.pinned_params


def test_macs_match_reference(model_name):
    entry = get_entry(model_name)
    if entry.paper.gmacs is None:
        pytest.skip(f"{model_name}: no published or reference GMACs to compare with")
    with torch.device("meta"):
        model = glocal.create_model(model_name)
    gmacs = count_macs(model, entry.input_size) / 1e9
    assert abs(gmacs - entry.paper.gmacs) / entry.paper.gmacs <= 0.03, f"{gmacs:.3f} vs {entry.paper.gmacs}"


def test_pyramid_channels_reductions_and_last_map(model_name):
    torch.manual_seed(0)
    model = perturb_(build(model_name)).eval()
    h, w = small_size(model)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        last = model.forward_features(x)
    torch.testing.assert_close(final, last)
    info = model.feature_info
    assert len(maps) == len(info) == len(info.channels())
    for fmap, chs, red in zip(maps, info.channels(), info.reduction(), strict=True):
        assert fmap.shape[:2] == (1, chs)
        assert fmap.shape[2:] == (h // red, w // red)
    if last.ndim == 4:
        torch.testing.assert_close(maps[-1], last)


def test_features_only_keeps_only_used_parameters(model_name):
    torch.manual_seed(0)
    full = build(model_name)
    n_taps = len(full.feature_info)
    torch.manual_seed(0)
    pyramid = perturb_(build(model_name, features_only=True, out_indices=(0, 1)))
    assert pyramid.out_indices == [0, 1]
    assert pyramid.feature_info.channels() == full.feature_info.channels([0, 1])
    h, w = small_size(full)
    maps = pyramid(torch.randn(1, 3, h, w))
    assert len(maps) == 2 and all(m.ndim == 4 for m in maps)
    sum(m.square().sum() for m in maps).backward()
    unused = [n for n, p in pyramid.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"features_only keeps parameters its output does not use: {unused[:10]}"
    assert count_params(pyramid) < count_params(full) or n_taps == 2


def test_fused_and_explicit_attention_agree(model_name):
    torch.manual_seed(0)
    model = perturb_(build(model_name)).eval()
    x = torch.randn(1, 3, *small_size(model))
    with torch.no_grad():
        fused = model(x)
        with glocal.explicit_attention():
            explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-4)


def test_memory_layout_changes_speed_not_numbers(model_name, cpu_backend_on):
    """With the CPU backend on, prepare_input hands the image over in the model's memory_format; either layout
    computes the same logits and gradients. In float64, so that the other kernels' float reordering (amplified by
    train-mode BN over tiny maps) cannot hide a real difference."""
    torch.manual_seed(0)
    model = perturb_(build(model_name)).train().double()
    x = torch.randn(2, 3, *small_size(model), dtype=torch.float64)
    assert model.prepare_input(x).is_contiguous(memory_format=model.memory_format)
    outputs, grads = [], []
    for layout in (torch.channels_last, torch.contiguous_format):
        model.memory_format = layout
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout and drop-path draws in both passes
        y = model(x)
        y.square().sum().backward()
        outputs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9 * grads[0].abs().max().item())


def test_same_seed_same_weights_and_outputs(model_name):
    torch.manual_seed(123)
    a = build(model_name).eval()
    torch.manual_seed(123)
    b = build(model_name).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb), ka
    x = torch.randn(1, 3, *small_size(a))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_bad_inputs_raise_clear_errors(model_name):
    model = build(model_name).eval()
    h, w = small_size(model)
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, h, w))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 4, h, w))
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, 3, model.min_input_size - 1, w))


def test_in_chans_and_reset_classifier(model_name):
    model = build(model_name, in_chans=1, num_classes=3).eval()
    x = torch.randn(1, 1, *small_size(model))
    with torch.no_grad():
        assert model(x).shape == (1, 3)
        model.reset_classifier(11)
        assert model(x).shape == (1, 11)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, model.num_features)


def test_no_weight_decay_names_real_parameters(model_name):
    model = build(model_name)
    names = dict(model.named_parameters())
    assert all(n in names for n in model.no_weight_decay())


def test_adaptation_hooks_name_real_modules(model_name):
    model = build(model_name)
    modules = dict(model.named_modules())
    first = modules[model.first_conv]
    # A conv over the image, or (T2T) a linear layer over unfolded patches of it.
    if isinstance(first, torch.nn.Conv2d):
        assert first.in_channels == 3
    else:
        assert isinstance(first, torch.nn.Linear) and first.in_features % 3 == 0
    assert model.classifier and all(isinstance(modules[c], torch.nn.Linear) for c in model.classifier)
    state = model.state_dict()
    adapted = model.adapt_state_dict(dict(state))
    assert adapted.keys() == state.keys() and all(torch.equal(adapted[k], state[k]) for k in state)


def test_every_attention_probe_fires_in_a_forward(model_name):
    model = build(model_name).eval()
    fired: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, AttentionProbe):
            fired[name] = 0
            module.register_forward_hook(lambda _m, _i, _o, name=name: fired.__setitem__(name, fired[name] + 1))
    with torch.no_grad():
        model(torch.randn(1, 3, *small_size(model)))
    silent = [n for n, calls in fired.items() if calls == 0]
    assert not silent, f"probes no forward reaches (attention maps an analysis would miss): {silent}"


def test_every_attention_module_has_a_flop_formula(model_name):
    entry = get_entry(model_name)
    with torch.device("meta"):
        model = glocal.create_model(model_name)
    owners = {name.rsplit(".", 1)[0] for name, m in model.named_modules() if isinstance(m, AttentionProbe)}
    # Attention without a map to probe: Performer's kernel features, SE's average-pooled context.
    owners |= {name for name, m in model.named_modules() if isinstance(m, (TokenPerformer, GlobalContext))}
    costed = {cost.module for cost in analytic.attention_costs(model, entry.input_size)}
    cfg = entry.config()
    plain = entry.family == "resnet" and cfg.block_attn is None and not cfg.bot_stages
    assert bool(owners) != plain, "every model but the plain ResNets attends somewhere"
    assert owners <= costed, f"attention modules without an analytic formula: {sorted(owners - costed)}"


def test_unknown_keyword_raises_type_error_naming_valid_ones(model_name):
    with pytest.raises(TypeError, match="unknown keyword argument.*not_an_option.*Config fields"):
        glocal.create_model(model_name, not_an_option=1)


def test_img_size_is_one_config_field_on_every_family(model_name):
    entry = get_entry(model_name)
    assert "img_size" in {f.name for f in dataclasses.fields(entry.config())}
    with torch.device("meta"):
        model = glocal.create_model(model_name, img_size=(256, 320))
    assert model.img_size == (256, 320) and model.data_config.input_size == (3, 256, 320)
    assert model.cfg.img_size == (256, 320) and model.num_classes == 1000 and model.in_chans == 3
