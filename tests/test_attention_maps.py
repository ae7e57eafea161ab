"""Attention maps on the image grid for every attention kind, rollout, query independence and ``glocal attention``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import glocal
from glocal.analysis.attention import (
    attention_rollout,
    image_map,
    query_independence,
    query_independence_table,
    record_attention,
)
from glocal.cli import main
from glocal.data.datasets import load_digits_split
from tests.conftest import build, perturb_

SIZE = (64, 96)  # non-square, a multiple of every family's divisor here

# model -> {kind: (first layer of that kind, query grid, key grid, heads)} at SIZE, worked out from the
# architecture: strides 4/8/16/32 for ResNet and Twins, 8/16 for VOLO, 16 for ViT, 4 for T2T's first soft split.
EXPECTED = {
    "nlresnet50": {"nl": ("layer3.0.context", (4, 6), (4, 6), 1)},
    "gcresnet50": {"pool": ("layer2.0.context", None, (8, 12), 1)},
    "snlresnet50": {"pool": ("layer3.0.context", None, (4, 6), 1)},
    "botnet50": {"bot": ("layer4.0.conv2", (4, 6), (4, 6), 4)},  # c5's first MHSA runs before its 2x2 pool
    "twins_svt_small": {
        "lsa": ("blocks.0.0.attn", (16, 24), (16, 24), 2),
        "gsa": ("blocks.0.1.attn", (16, 24), (2, 3), 2),
    },
    "twins_pcpvt_small": {"gsa": ("blocks.0.0.attn", (16, 24), (2, 3), 1)},
    "volo_d1_224": {
        "outlook": ("network.0.0.attn", (8, 12), (8, 12), 6),
        "global": ("network.2.0.attn", (4, 6), (4, 6), 12),
        "class": ("post_network.0.attn", None, (4, 6), 12),
    },
    "vit_small_patch16_224": {"global": ("blocks.0.attn", (4, 6), (4, 6), 6)},
    "t2t_vit_t_14": {"global": ("tokens_to_token.attention1.attn", (16, 24), (16, 24), 1)},
}


def scene(size: tuple[int, int] = (96, 128)) -> Image.Image:
    """A drawn photograph-like scene: sky, grass, sun, a house with a roof."""
    H, W = size
    image = Image.new("RGB", (W, H), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(H * 0.7), W, H], fill=(60, 140, 50))
    draw.ellipse([int(W * 0.6), int(H * 0.1), int(W * 0.8), int(H * 0.35)], fill=(250, 220, 60))
    draw.rectangle([int(W * 0.15), int(H * 0.45), int(W * 0.45), int(H * 0.75)], fill=(170, 40, 40))
    draw.polygon([(int(W * 0.1), int(H * 0.45)), (int(W * 0.3), int(H * 0.25)), (int(W * 0.5), int(H * 0.45))], fill=0)
    return image


def scene_batch(size: tuple[int, int] = SIZE) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(scene(size), dtype=np.float32))  # (H, W, 3)
    return ((array / 255 - 0.45) / 0.25).permute(2, 0, 1)[None]  # (1, 3, H, W)


def recorded(name: str):
    model = perturb_(build(name)).eval()
    with torch.no_grad(), record_attention(model) as records:
        model(scene_batch())
    return records


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_and_map_shapes_for_every_kind(name):
    records = recorded(name)
    for kind, (layer, query_grid, key_grid, heads) in EXPECTED[name].items():
        record = records[layer][-1]
        layout = record.layout
        assert (layout.kind, layout.query_grid, layout.key_grid, layout.heads) == (kind, query_grid, key_grid, heads)
        grid = query_grid or key_grid
        assert layout.stride == (SIZE[0] / grid[0], SIZE[1] / grid[1])
        assert layout.image_size == SIZE
        shown = image_map(record, (20.0, 50.0))
        assert shown.shape == (1, heads, *(query_grid or key_grid))
        assert torch.isfinite(shown).all() and (shown >= 0).all()
    assert {r[-1].layout.kind for r in records.values()} == set(EXPECTED[name])


def test_window_and_prefix_metadata():
    svt = recorded("twins_svt_small")["blocks.0.0.attn"][-1].layout
    assert (svt.window, svt.padding) == (7, (5, 4))  # 16 x 24 padded to 21 x 28
    volo = recorded("volo_d1_224")
    assert (volo["network.0.0.attn"][-1].layout.window, volo["network.0.0.attn"][-1].layout.window_stride) == (3, 2)
    assert volo["post_network.0.attn"][-1].layout.prefix_tokens == 1
    assert recorded("vit_small_patch16_224")["blocks.0.attn"][-1].layout.prefix_tokens == 1


def _queries(layout):
    """Query pixels at the centre of every query cell."""
    H, W = layout.query_grid
    return [((i + 0.5) * layout.stride[0], (j + 0.5) * layout.stride[1]) for i in range(H) for j in range(W)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unfolded_maps_are_distributions_over_the_image(name):
    """Every softmax kind, unfolded onto the grid, sums to 1 per query (less the prefix tokens' weight); outlook's
    mean over covering windows too, away from the zero-padded border."""
    for kind, (layer, *_rest) in EXPECTED[name].items():
        record = recorded(name)[layer][-1]
        layout = record.layout
        queries = [None] if layout.query_grid is None else _queries(layout)
        if kind == "outlook":
            H, W = layout.query_grid
            # Cells 0 and 1 lie in the first window, which reaches into the padding; likewise at the far side.
            queries = [q for q in queries if 2 <= q[0] // layout.stride[0] <= H - 3]
            queries = [q for q in queries if 2 <= q[1] // layout.stride[1] <= W - 3]
        for query in queries:
            total = image_map(record, query).sum(dim=(-2, -1))  # (B, heads)
            if layout.prefix_tokens:
                P = layout.prefix_tokens
                row = 0 if query is None else P + (int(query[0] // layout.stride[0])) * layout.query_grid[1]
                row += 0 if query is None else int(query[1] // layout.stride[1])
                total = total + record.attn[:, :, row, :P].sum(-1)
            torch.testing.assert_close(total, torch.ones_like(total), msg=f"{name} {layer} {query}")


def test_lsa_map_stays_inside_the_query_window():
    record = recorded("twins_svt_small")["blocks.0.0.attn"][-1]
    shown = image_map(record, (9 * 4.0, 15 * 4.0))[0, 0]  # cell (9, 15): window rows 7-13, cols 14-20
    outside = shown.clone()
    outside[7:14, 14:21] = 0
    assert shown[7:14, 14:21].sum() == pytest.approx(1.0) and outside.abs().max() == 0


def test_rollout_is_a_distribution_over_the_grid_and_reduces_to_one_layer():
    records = recorded("vit_small_patch16_224")
    last = [calls[-1] for calls in records.values()]
    rollout = attention_rollout(last)
    assert rollout.shape == (1, 4, 6)
    # One layer: 0.5 A + 0.5 I averaged over heads, the class row without the class key.
    a = last[0].attn.mean(1)[0]
    expected = (0.5 * a + 0.5 * torch.eye(a.shape[0]))[0, 1:].reshape(4, 6)
    torch.testing.assert_close(attention_rollout(last[:1])[0], expected)
    with pytest.raises(ValueError, match="class token"):
        attention_rollout([c[-1] for c in recorded("twins_pcpvt_small").values()])


@pytest.fixture(scope="module")
def trained_nl():
    """A narrow NL-ResNet (NL blocks in c4, as GCNet compares) trained briefly on the bundled digits at 64 px."""
    torch.manual_seed(0)
    model = glocal.create_model(
        "resnet50",
        depths=(1, 1, 2, 1),
        widths=(16, 32, 64, 128),
        stem_width=16,
        block_attn="nl",
        attn_stages=(4,),
        attn_blocks=(0, 1),
        num_classes=10,
    )
    digits = load_digits_split("train")
    images = F.interpolate(digits.images.float() / 16, size=64, mode="bilinear")  # (N, 3, 64, 64)
    labels = digits.labels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(60):
        index = torch.randint(0, len(labels), (32,))
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), images[:8]


def test_query_independence_zero_for_pooling_positive_for_trained_nl(trained_nl):
    model, images = trained_nl
    table = query_independence_table(model, [images])
    assert [row["kind"] for row in table["layers"]] == ["nl", "nl"]
    assert all(row["query_independence"] > 1e-4 for row in table["layers"])  # pooling kinds: exactly 0
    assert [(s["stride"], s["kind"], s["layers"]) for s in table["stages"]] == [(16, "nl", 2)]
    pooled = perturb_(glocal.create_model("snlresnet50", depths=(1, 1, 2, 1))).eval()
    table = query_independence_table(pooled, [images])
    assert table["layers"] and all(row["query_independence"] == 0.0 for row in table["layers"])


def test_query_independence_of_local_kinds_is_within_windows():
    volo = recorded("volo_d1_224")["network.0.0.attn"][-1]
    same_rows = volo.attn[..., :1, :].expand_as(volo.attn)  # every output of a window attends alike
    assert query_independence(type(volo)(volo.name, same_rows, volo.layout)) == pytest.approx(0.0, abs=1e-6)
    assert query_independence(volo) > 0


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scene.png"
    scene().save(path)
    return path


# One model of every family, full size at 64 px; the three that take seconds to build run with the slow tests.
FAMILY_MODELS = ["nlresnet50", "botnet50", "vit_tiny_patch16_224"]
FAMILY_MODELS += [pytest.param(n, marks=pytest.mark.slow) for n in ("twins_svt_small", "volo_d1_224", "t2t_vit_t_14")]


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_cli_writes_overlays_for_every_family(name, scene_file, tmp_path, capsys):
    args = ["attention", name, str(scene_file), "--img-size", "64", "--out", str(tmp_path)]
    if name.startswith(("vit", "t2t")):
        args.append("--class-token")
    assert main(args) == 0
    png = tmp_path / "scene_attention.png"
    summary = json.loads((tmp_path / "attention.json").read_text())
    layers = summary["images"][0]["layers"]
    panels = len(layers) + (1 if name.startswith(("vit", "t2t")) else 0)  # + rollout
    cols = min(4, panels + 1)
    rows = -(-(panels + 1) // cols)
    with Image.open(png) as image:
        assert image.size == (round(3.2 * cols * 110), round(3.0 * rows * 110))
        extrema = image.convert("L").getextrema()
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20))
    assert extrema[1] - extrema[0] > 100 and colours > 100  # not blank
    assert all(0 <= layer["query_independence"] <= 2 for layer in layers)


def test_cli_stats_over_a_folder_and_bad_input(scene_file, tmp_path, capsys):
    assert (
        main(["attention", "nlresnet50", str(scene_file.parent), "--stats", "--img-size", "64", "--out", str(tmp_path)])
        == 0
    )
    table = json.loads((tmp_path / "query_independence.json").read_text())
    assert table["images"] == 1 and {row["kind"] for row in table["layers"]} == {"nl"}
    assert (tmp_path / "query_independence.png").stat().st_size > 1000
    assert (
        main(
            ["attention", "nlresnet50", str(scene_file), "--query", "99,1", "--img-size", "64", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "--query 99,1" in capsys.readouterr().err
    assert main(["attention", "resnet50", str(scene_file), "--img-size", "64", "--out", str(tmp_path)]) == 2
    assert "no attention map" in capsys.readouterr().err
    assert (
        main(["attention", "vit_tiny_patch16_224", str(scene_file), "--pretrained", "in1k", "--out", str(tmp_path)])
        == 2
    )
    assert "unknown weight tag 'vit_tiny_patch16_224.in1k'" in capsys.readouterr().err
