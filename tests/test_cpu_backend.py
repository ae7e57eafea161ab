"""glocal.backends.cpu: off, a model is torch's standard path; on, its routes compute F.linear's and the fused
kernel's numbers (values and gradients), are taken only where allowed, and are chosen by measurement."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import glocal
from glocal.backends import cpu
from glocal.layers.attention import attend
from glocal.optimize import optimize_for_inference

needs_onednn = pytest.mark.skipif(not cpu._ONEDNN, reason="this torch build has no oneDNN linear kernel")


def _ran_onednn(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any("_linear_pointwise" in e.key for e in prof.key_averages())


@pytest.fixture
def onednn_linear(cpu_backend_on, monkeypatch) -> list[str]:
    """The (first) candidate route wins every shape class; the list of the classes asked for."""
    keys = []
    monkeypatch.setattr(cpu, "_choose", lambda key, default, candidates: keys.append(key) or next(iter(candidates)))
    return keys


def test_off_a_model_is_the_standard_path():
    model = glocal.create_model("vit_small_patch16_224", depth=1, img_size=64).eval()
    assert all(type(m) is not cpu.RoutedLinear for m in model.modules())
    x = torch.randn(1, 3, 64, 64)
    assert model.prepare_input(x) is x
    with torch.inference_mode():
        assert not _ran_onednn(lambda: model(x))
    cpu.enable(model, malloc=False)
    cpu.disable()
    with torch.inference_mode():
        assert not _ran_onednn(lambda: model(x))  # routed layers fall back to F.linear while off
    assert model.prepare_input(x) is x


def test_enable_routes_linear_layers_keeping_parameters_and_state_dict():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert cpu.enable(model, malloc=False) is model
    assert all(isinstance(m, nn.Linear) and type(m) is cpu.RoutedLinear for m in (model[0], model[2]))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@needs_onednn
@pytest.mark.parametrize("routes", [("onednn", "onednn"), ("onednn", "default"), ("default", "onednn")])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [2 * cpu.MIN_ROWS, 8 * 160])  # the weight gradient on oneDNN, then on MKL (long sum)
def test_onednn_linear_values_and_gradients_equal_f_linear(onednn_linear, routes, bias, rows):
    """Forward product and backward products on oneDNN, each alone and both: F.linear's values and gradients."""
    torch.manual_seed(0)
    forward, backward = routes
    cpu._routes[f"linear:{cpu._rows_class(rows)}x96x160:infer"] = forward
    cpu._routes[f"linear:{cpu._rows_class(rows)}x96x160:backward"] = backward
    layer = cpu.enable(nn.Linear(96, 160, bias=bias))
    x = torch.randn(4, rows // 4, 96).transpose(0, 1)  # (rows / 4, 4, 96): non-contiguous
    x_ref = x.detach().clone().requires_grad_()
    x.requires_grad_()
    assert _ran_onednn(lambda: layer(x).sum().backward())
    y = layer(x)
    y_ref = F.linear(x_ref, layer.weight, layer.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *layer.parameters()], g)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_weights_are_packed_once_and_repacked_when_updated(onednn_linear, dtype):
    """Inference on a frozen weight reads oneDNN's packed copy, made once; an update in place or a new ``.data``
    (a cast) is seen, and the result stays F.linear's."""
    torch.manual_seed(0)
    layer = cpu.enable(nn.Linear(64, 96).to(dtype))
    x = torch.randn(2 * cpu.MIN_ROWS, 64, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    with torch.inference_mode():
        layer(x)
        assert layer.weight not in cpu._frozen  # not frozen: not packed
        cpu.freeze_weights(layer)
        assert _ran_onednn(lambda: layer(x))
        packed = cpu._frozen[layer.weight][1]
        assert packed.is_mkldnn
        layer(x)
        assert cpu._frozen[layer.weight][1] is packed  # packed once
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **tol)
        layer.weight.mul_(-2)  # an update in place
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **tol)
        assert cpu._frozen[layer.weight][1] is not packed
    layer.double().to(dtype)  # new .data
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **tol)
    assert onednn_linear[-1].endswith((":bf16" if dtype == torch.bfloat16 else "x96") + ":infer")


@needs_onednn
def test_calibrating_a_training_linear_leaves_the_random_state_alone(cpu_backend_on):
    """A resumed run finds its routes recorded and calibrates nothing; the run it resumes must not have drawn random
    numbers for its calibrations either, or their dropout and augmentation would differ."""
    layer = cpu.enable(nn.Linear(32, 48))
    x = torch.randn(2 * cpu.MIN_ROWS, 32, requires_grad=True)
    state = torch.get_rng_state()
    layer(x).sum().backward()
    assert {k.rsplit(":", 1)[1] for k in cpu.route_state()} == {"infer", "backward"}  # both calibrated here
    assert torch.equal(torch.get_rng_state(), state)


@needs_onednn
def test_a_model_made_under_inference_mode_is_optimized_and_runs(onednn_linear):
    """Weights created under ``torch.inference_mode`` are inference tensors, which keep no version counter: they are
    not packed (an update would go unseen) and their products still run and equal F.linear."""
    with torch.inference_mode():
        model = glocal.create_model("vit_small_patch16_224", depth=1, img_size=32)
        optimized = cpu.enable(optimize_for_inference(model, example=torch.randn(1, 3, 32, 32)))
        fc1 = optimized.blocks[0].mlp.fc1
        x = torch.randn(2 * cpu.MIN_ROWS, fc1.in_features)
        assert fc1.weight.is_inference() and fc1.weight in cpu._frozen
        assert _ran_onednn(lambda: fc1(x))
        torch.testing.assert_close(fc1(x), F.linear(x, fc1.weight, fc1.bias), rtol=1e-5, atol=1e-5)
        assert cpu._frozen[fc1.weight] is None  # never packed
        assert optimized(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


@needs_onednn
def test_counting_macs_on_the_backend_calibrates_nothing(cpu_backend_on):
    """A FLOP count before the routes are calibrated must neither count the calibration's timed calls (they had made
    Twins-SVT-S count 11.6 GMACs for 2.9) nor measure routes under the counter's overhead and cache them."""
    from glocal.analysis.complexity import count_macs

    model = glocal.create_model("vit_small_patch16_224", depth=1, img_size=64).eval()
    cpu.disable()
    standard = count_macs(model, (3, 64, 64), batch_size=8)
    cpu.enable(model, malloc=False)
    assert count_macs(model, (3, 64, 64), batch_size=8) == standard
    assert not cpu.route_state()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))  # outside the counter the routes are measured as usual
    assert any(k.startswith("linear:") for k in cpu.route_state())
    assert count_macs(model, (3, 64, 64), batch_size=8) == standard


@needs_onednn
def test_route_choices_are_kept_per_thread_count(cpu_backend_on):
    """The engine and ``--threads`` change the thread count after the backend is on: the choices measured at one
    count are neither taken nor cached at another, and come back with it."""
    threads = torch.get_num_threads()
    layer = cpu.enable(nn.Linear(32, 48))
    x = torch.randn(2 * cpu.MIN_ROWS, 32)
    with torch.no_grad():
        layer(x)
    first, first_file = cpu.route_state(), cpu.route_cache_path()
    assert first and first_file.exists()
    try:
        torch.set_num_threads(threads + 1)
        assert cpu.route_state() == {}  # nothing measured at this count yet
        with torch.no_grad():
            layer(x)
        assert cpu.route_state().keys() == first.keys()  # measured again, for this count
        assert cpu.route_cache_path() != first_file and cpu.route_cache_path().exists()
        assert json.loads(first_file.read_text()) == first
    finally:
        torch.set_num_threads(threads)
    assert cpu.route_state() == first


@needs_onednn
def test_recalibrate_measures_the_step_anew_and_keeps_other_classes(cpu_backend_on):
    layer = cpu.enable(nn.Linear(32, 48))
    x = torch.randn(2 * cpu.MIN_ROWS, 32)
    key, other = f"linear:{cpu._rows_class(x.shape[0])}x32x48:infer", "attention:8x64x64x32x32:infer"
    cpu._routes.update({key: "stale", other: "explicit"})

    def step() -> None:
        with torch.no_grad():
            layer(x)

    measured = cpu.recalibrate(step)
    assert measured.keys() == {key} and measured[key] in ("default", "onednn")
    assert cpu.route_state() == {key: measured[key], other: "explicit"}
    assert cpu.cached_routes() == cpu.route_state()
    assert cpu.clear_route_cache() == 2
    assert not cpu.route_state() and not cpu.cached_routes() and not cpu.route_cache_path().exists()


@needs_onednn
def test_saving_routes_keeps_the_classes_another_process_cached(cpu_backend_on):
    path = cpu.route_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"linear:4096x8x8:infer": "onednn"}))  # written after this process loaded the file
    layer = cpu.enable(nn.Linear(32, 48))
    with torch.no_grad():
        layer(torch.randn(2 * cpu.MIN_ROWS, 32))
    saved = json.loads(path.read_text())
    assert saved["linear:4096x8x8:infer"] == "onednn" and saved.keys() > cpu.route_state().keys()


def test_optimize_for_inference_freezes_the_copy_not_the_model():
    model = glocal.create_model("vit_small_patch16_224", depth=1, img_size=32)
    optimized = optimize_for_inference(model, example=torch.randn(1, 3, 32, 32))
    linears = [m for m in optimized.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight in cpu._frozen for m in linears)
    assert not any(m.weight in cpu._frozen for m in model.modules() if isinstance(m, nn.Linear))


@needs_onednn
def test_bfloat16_training_takes_f_linear(onednn_linear):
    layer = cpu.enable(nn.Linear(32, 32).bfloat16())
    x = torch.randn(2 * cpu.MIN_ROWS, 32, dtype=torch.bfloat16)
    assert not _ran_onednn(lambda: layer(x).sum().backward())
    assert not onednn_linear


@needs_onednn
@pytest.mark.parametrize(
    ("rows", "dtype", "autocast"),
    [
        (cpu.MIN_ROWS - 1, torch.float32, False),
        (cpu.MIN_ROWS, torch.float64, False),
        (cpu.MIN_ROWS, torch.float32, True),
    ],
)
def test_small_products_other_dtypes_and_autocast_take_f_linear(onednn_linear, rows, dtype, autocast):
    layer = cpu.enable(nn.Linear(32, 32).to(dtype))
    x = torch.randn(rows, 32, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert not _ran_onednn(lambda: layer(x))
        y = layer(x)
    assert y.dtype == (torch.bfloat16 if autocast else dtype)


@needs_onednn
def test_traced_graphs_hold_the_standard_operator(onednn_linear):
    layer = cpu.enable(nn.Linear(32, 48))
    x = torch.randn(2 * cpu.MIN_ROWS, 32)
    traced = torch.jit.trace(layer, x)
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    torch.testing.assert_close(traced(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_and_residual_routes_equal_the_standard_ops(onednn_linear, approximate, bias, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, cpu.MIN_ROWS, 48).transpose(0, 1)  # non-contiguous rows
    w1, w2 = torch.randn(96, 48) * 0.2, torch.randn(48, 96) * 0.2
    b1, b2 = (torch.randn(96), torch.randn(48)) if bias else (None, None)
    residual = torch.randn(cpu.MIN_ROWS, 3, 48)
    h_ref = F.gelu(F.linear(x, w1, b1), approximate=approximate)
    out_ref = residual + F.linear(h_ref, w2, b2)
    x, w1, w2, residual = (t.to(dtype) for t in (x, w1, w2, residual))
    b1, b2 = (None if b is None else b.to(dtype) for b in (b1, b2))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}  # bf16 rounding
    with torch.inference_mode():
        assert _ran_onednn(lambda: cpu.linear_gelu(x, w1, b1, approximate))
        h = cpu.linear_gelu(x, w1, b1, approximate)
        torch.testing.assert_close(h.float(), h_ref, **tol)
        assert _ran_onednn(lambda: cpu.linear_add(h, w2, b2, residual))
        out = cpu.linear_add(h, w2, b2, residual)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), out_ref, **tol)


@needs_onednn
@pytest.mark.parametrize("case", ["grad", "off", "broadcast residual"])
def test_fused_routes_step_aside_for_autograd_the_standard_path_and_other_shapes(onednn_linear, case):
    if case == "off":
        cpu.disable()
    x = torch.randn(cpu.MIN_ROWS, 16, requires_grad=case == "grad")
    w, b = torch.randn(16, 16), torch.randn(16)
    residual = torch.randn(1, 16) if case == "broadcast residual" else torch.randn(cpu.MIN_ROWS, 16)
    torch.testing.assert_close(cpu.linear_gelu(x, w, b), F.gelu(F.linear(x, w, b)))
    torch.testing.assert_close(cpu.linear_add(x, w, b, residual), residual + F.linear(x, w, b))
    fused = {k.split(":")[0] for k in onednn_linear} & {"linear_gelu", "linear_add"}
    assert fused == ({"linear_gelu"} if case == "broadcast residual" else set())


@needs_onednn
def test_transformer_blocks_fuse_in_eval_only_without_hooks(onednn_linear):
    torch.manual_seed(0)
    model = glocal.create_model("vit_small_patch16_224", depth=2, embed_dim=96, num_heads=3, img_size=64).eval()
    x = torch.randn(4, 3, 64, 64)  # 4 x 17 tokens: at least MIN_ROWS rows
    with torch.inference_mode():
        reference = model(x)  # backend off: the modules called one by one
        cpu.enable(model, malloc=False)
        fused = model(x)
        seen = []
        model.blocks[1].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        model.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        hooked = model(x)
    assert {k.split(":")[0] for k in onednn_linear} >= {"linear_gelu", "linear_add"}
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hooked, reference, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2  # the hooked modules were called, not fused away


def _qkv(nq: int, nk: int, requires_grad: bool = False):
    torch.manual_seed(0)
    q = torch.randn(2, 3, nq, 16, requires_grad=requires_grad)
    k = torch.randn(2, 3, nk, 16, requires_grad=requires_grad)
    v = torch.randn(2, 3, nk, 24, requires_grad=requires_grad)
    return q, k, v


@needs_onednn
def test_blocked_attention_equals_the_fused_kernel(onednn_linear):
    q, k, v = _qkv(cpu.QUERY_BLOCK + 37, cpu.MIN_KEYS + 5)  # a partial last block of queries
    # Non-contiguous operands, as the heads of a fused qkv projection are.
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    with torch.inference_mode():
        assert _ran_onednn(lambda: attend(q, k, v, scale=0.3))
        out = attend(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), rtol=1e-5, atol=1e-5)


def _ran_fused_kernel(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any("_scaled_dot_product" in e.key for e in prof.key_averages())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True])
def test_explicit_attention_equals_the_fused_kernel(onednn_linear, dtype, grad):
    """Short sequences (Twins' 7x7 windows, ViT's 197 tokens) on the explicit route: the fused kernel's values and
    gradients, in float32 to rounding and in bfloat16 to its precision."""
    q, k, v = _qkv(49, 49)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2).to(dtype).requires_grad_(grad) for t in (q, k, v))
    refs = [t.detach().clone().requires_grad_(grad) for t in (q, k, v)]
    with torch.set_grad_enabled(grad):
        assert not _ran_fused_kernel(lambda: attend(q, k, v, scale=0.3))
        out = attend(q, k, v, scale=0.3)
        ref = F.scaled_dot_product_attention(*refs, scale=0.3)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(out, ref, **tol)
    assert onednn_linear[-1].endswith(("bf16" if dtype == torch.bfloat16 else "x24") + (":grad" if grad else ":infer"))
    if grad:
        g = torch.randn_like(out)
        for got, want in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, refs, g), strict=True):
            torch.testing.assert_close(got, want, **tol)


def test_bfloat16_softmax_computes_in_float32_and_rounds_once():
    """What the explicit_native_softmax route relies on: torch's CPU softmax of bfloat16 logits is the float32
    softmax rounded to bfloat16 (accumulated in float32: a bfloat16 sum over 196 keys would be off by percents)."""
    torch.manual_seed(0)
    logits = (4 * torch.randn(64, 196, 196)).bfloat16()
    native = logits.softmax(-1).float()
    rounded = logits.softmax(-1, dtype=torch.float32).bfloat16().float()
    ulp = torch.finfo(torch.bfloat16).eps * rounded.abs()  # one bfloat16 step at each value
    assert ((native - rounded).abs() <= ulp).all()
    assert (native == rounded).float().mean() > 0.999


@pytest.mark.parametrize("keys", [49, 196])
def test_explicit_native_softmax_route_equals_the_fused_kernel(cpu_backend_on, monkeypatch, keys):
    chosen = []

    def pick(key, default, candidates):
        chosen.append(sorted(candidates))
        return "explicit_native_softmax"

    monkeypatch.setattr(cpu, "_choose", pick)
    q, k, v = (t.bfloat16() for t in _qkv(keys, keys))
    with torch.inference_mode():
        assert not _ran_fused_kernel(lambda: attend(q, k, v, scale=0.3))
        out = attend(q, k, v, scale=0.3)
        ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    assert chosen[0] == ["explicit", "explicit_native_softmax"]


@pytest.mark.parametrize("case", ["long grad", "bias", "dropout", "off", "autocast", "float64", "broadcast"])
def test_other_attention_calls_keep_the_fused_kernel(onednn_linear, case):
    if case == "off":
        cpu.disable()
    nk = cpu.EXPLICIT_MAX_KEYS_TRAINING + 1 if case == "long grad" else 49
    q, k, v = _qkv(cpu.QUERY_BLOCK, nk, requires_grad=case == "long grad")
    if case == "float64":
        q, k, v = (t.double() for t in (q, k, v))
    if case == "broadcast":
        k, v = k[:1], v[:1]
    kwargs = {"bias": torch.zeros(1, nk)} if case == "bias" else {"dropout_p": 0.5} if case == "dropout" else {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        assert _ran_fused_kernel(lambda: attend(q, k, v, **kwargs))
    assert not onednn_linear  # no route was even considered


@pytest.mark.parametrize(("default_s", "candidate_s", "route"), [(0.0, 0.01, "default"), (0.01, 0.0, "fast")])
def test_routes_are_chosen_by_measurement_and_cached_on_disk(cpu_backend_on, default_s, candidate_s, route):
    calls = []

    def timed(seconds, name):
        return lambda: (calls.append(name), time.sleep(seconds))

    key = "test:shape"
    assert cpu._choose(key, timed(default_s, "default"), {"fast": timed(candidate_s, "fast")}) == route
    assert cpu._choose(key, timed(0, "default"), {"fast": timed(0, "fast")}) == route  # cached: not measured again
    assert len(calls) == 2 * (1 + cpu.CALIBRATION_RUNS)
    assert json.loads(cpu.route_cache_path().read_text())[key] == route
    cpu._routes.clear()
    cpu._load_disk_cache()  # a new process on this CPU
    assert cpu.route_state() == {key: route}


def test_the_fastest_of_several_candidates_is_chosen(cpu_backend_on):
    routes = {"slow": lambda: time.sleep(0.008), "fast": lambda: time.sleep(0.001)}
    assert cpu._choose("test:several", lambda: time.sleep(0.01), routes) == "fast"


def test_a_loaded_route_state_overrides_what_was_measured(cpu_backend_on):
    cpu._routes["linear:x"] = "default"
    cpu.load_route_state({"linear:x": "onednn"})
    assert cpu.route_state()["linear:x"] == "onednn"


def test_standard_path_is_not_overridden_by_use_by_default(cpu_backend_on):
    cpu.disable()
    model = cpu.use_by_default(nn.Linear(2, 2))
    assert type(model) is nn.Linear and not cpu.is_enabled()


@pytest.mark.parametrize(
    "name, img_size",
    [("vit_small_patch16_224", 32), ("twins_svt_small", 32), ("volo_d1_224", 32), ("botnet50", 64), ("nlresnet50", 64)],
)
def test_torch_compile_sees_each_family_as_one_graph(name, img_size):
    """Attention probes must not break the graph (a ``ContextVar.get`` did in every attention call, which made
    compiled transformers slower than eager and Twins hit dynamo's recompile limit)."""
    torch._dynamo.reset()
    model = glocal.create_model(name, img_size=img_size).eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.randn(1, 3, img_size, img_size))
    assert explained.graph_break_count == 0, [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_route_caches_of_cpus_that_share_a_name_are_apart(tmp_path):
    """Under KVM, AMD Zen 4 and Zen 5 both read "AMD EPYC": their family numbers keep their calibrations apart."""
    paths = {}
    for zen, family in (("zen4", 25), ("zen5", 26)):
        info = tmp_path / zen
        info.write_text(f"processor\t: 0\ncpu family\t: {family}\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                        f"stepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 99\n")  # fmt: skip
        paths[zen] = cpu.cpu_model(str(info))
    assert paths == {"zen4": "AMD EPYC (family 25, model 17, stepping 1)",
                     "zen5": "AMD EPYC (family 26, model 17, stepping 1)"}  # fmt: skip
    assert cpu.cpu_model(str(tmp_path / "missing"))  # no /proc/cpuinfo: still a name to cache under


def test_compiled_graphs_may_branch_on_sizes_and_traced_ones_may_not():
    seen = []

    def f(x):
        seen.append((cpu.capturing_graph(), cpu.capturing_graph(size_guards=False)))
        return x + 1

    torch._dynamo.reset()
    torch.compile(f, backend="eager")(torch.zeros(2))
    torch.jit.trace(f, torch.zeros(2), check_trace=False)
    f(torch.zeros(2))
    assert seen == [(True, False), (True, True), (False, False)]


# Stage maps 14, 7, 3, 1 (the first two whole 7x7 windows) and 16, 8, 4, 2 (every stage padded).
@pytest.mark.parametrize(("img_size", "unpadded"), [(56, 2), (64, 0)])
def test_compiled_twins_pads_only_where_eager_does_and_equals_eager(img_size, unpadded, monkeypatch):
    from glocal.models.twins import LocallyGroupedAttention

    padded = []
    bias = LocallyGroupedAttention._padding_bias
    monkeypatch.setattr(
        LocallyGroupedAttention, "_padding_bias", lambda self, *a: padded.append(a[:2]) or bias(self, *a)
    )
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = glocal.create_model("twins_svt_small", img_size=img_size, depths=(2, 2, 2, 2)).eval()
    x = torch.randn(1, 3, img_size, img_size)
    with torch.no_grad():
        eager = model(x)
        eager_padded, padded[:] = list(padded), []
        compiled = torch.compile(model, backend="eager")(x)
    assert padded == eager_padded  # the maps that eager code pads (traced once), no others
    assert len(eager_padded) == 4 - unpadded  # one LSA block per stage
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
