"""``glocal bench`` and its library function on a tiny size: records, JSON, CSV and PNG (no timed assertions)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from glocal.analysis.bench import BenchRecord, bench_model, fit_scaling
from glocal.cli import main

TINY = ["--img-size", "64", "--batch-size", "1", "--warmup", "0", "--runs", "2"]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_model_record(mode):
    r = bench_model("resnet50", 64, batch_size=2, mode=mode, warmup=0, runs=2)
    assert r.model == "resnet50" and r.params == 25_557_032 and r.mode == mode
    assert r.gmacs == pytest.approx(4.09 * (64 / 224) ** 2, rel=0.05)
    assert r.step_gmacs > 2.5 * r.gmacs if mode == "train" else r.step_gmacs == r.gmacs
    assert r.latency_ms > 0 and r.img_per_s == pytest.approx(2000 / r.latency_ms)
    assert 0 < r.peak_fraction and r.peak_tflops > 0
    assert r.tokens == 16


def test_bench_optimized_bf16_and_frozen():
    r = bench_model("resnet50", 64, batch_size=1, dtype="bf16", optimize=True, warmup=0, runs=1)
    assert r.optimized == "optimize" and r.dtype == "bf16" and r.img_per_s > 0
    r = bench_model("resnet50", 64, batch_size=1, freeze=True, warmup=0, runs=1)
    assert r.optimized == "freeze" and r.img_per_s > 0


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        bench_model("resnet50", 64, mode="eval")
    with pytest.raises(ValueError, match="inference only"):
        bench_model("resnet50", 64, mode="train", optimize=True)
    with pytest.raises(ValueError, match="choose one"):
        bench_model("resnet50", 64, compile=True, freeze=True)


@pytest.mark.slow
def test_bench_compiled():
    r = bench_model("vit_small_patch16_224", 64, batch_size=1, compile=True, warmup=1, runs=1)
    assert r.compiled and r.img_per_s > 0


def _record(model: str, size: int, latency: float, gmacs: float, mem: float) -> BenchRecord:
    return BenchRecord(model, size, 1, "infer", "fp32", "cpu", 1, "", False, 1, gmacs, gmacs, size * size // 256, 1,
                       latency, 0.0, 1e3 / latency, mem, 1.0, 1.0, 1.0)  # fmt: skip


def test_fit_scaling_recovers_exponents():
    records = [_record("quad", s, (s * s) ** 2, s * s, s * s) for s in (224, 320, 448)]
    fit = fit_scaling(records)["quad"]
    assert fit["time_exponent"] == pytest.approx(2.0)
    assert fit["gmacs_exponent"] == pytest.approx(1.0) == fit["mem_exponent"]
    assert fit["gmacs_growth"] == pytest.approx(4.0)


def test_cli_json_one_record_per_model(capsys):
    assert main(["bench", "resnet50", "snlresnet50", "--json", *TINY]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in lines] == ["resnet50", "snlresnet50"]
    assert all(r["gmacs"] > 0 and r["img_per_s"] > 0 for r in lines)


def test_cli_scaling_csv_and_png(tmp_path, capsys):
    csv_path, png_path = tmp_path / "bench.csv", tmp_path / "scaling.png"
    args = ["bench", "resnet50", "--img-sizes", "64,96", "--batch-size", "1", "--warmup", "0", "--runs", "1"]
    assert main([*args, "--csv", str(csv_path), "--plot", str(png_path)]) == 0
    out = capsys.readouterr().out
    assert "resolution scaling" in out and "GMACs" in out
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["img_size"]) for r in rows] == [64, 96]
    assert math.isclose(float(rows[1]["gmacs"]) / float(rows[0]["gmacs"]), (96 / 64) ** 2, rel_tol=0.05)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_unknown_model_is_an_error(capsys):
    assert main(["bench", "no_such_model", *TINY]) == 2
    assert "unknown model" in capsys.readouterr().err
