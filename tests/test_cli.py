"""Command-line smoke tests: help texts, list, info, summary, errors."""

from __future__ import annotations

import json

import pytest

from glocal.cli import build_parser, main


def test_help_of_every_subcommand(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"glocal {name}" in out and len(out.splitlines()) > 3
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "COMMAND" in capsys.readouterr().out


def test_list_filters(capsys):
    assert main(["list", "*resnet101"]) == 0
    out = capsys.readouterr().out
    assert "gcresnet101" in out and "49,326,872" in out and "resnet50 " not in out


def test_info_json(capsys):
    assert main(["info", "seresnet50", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["params"] == record["paper_params"] == 28_088_024
    assert abs(record["gmacs"] - 3.86) < 0.01
    assert [t["reduction"] for t in record["taps"]] == [2, 4, 8, 16, 32]  # timm's taps: the stem, then c2..c5


def test_summary_builds_and_runs_models(capsys):
    assert main(["summary", "snlresnet50"]) == 0
    out = capsys.readouterr().out
    assert "snlresnet50" in out and "128x192 ok" in out


def test_errors_exit_2_with_message(capsys):
    assert main(["info", "gcresnet5"]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert main(["list", "nothing_*"]) == 2
    assert "no registered model" in capsys.readouterr().err


def test_routes_measures_lists_and_forgets(capsys):
    assert main(["routes"]) == 0
    assert "no route choices cached" in capsys.readouterr().out
    assert main(["routes", "vit_small_patch16_224", "--img-size", "64", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert {k.split(":")[0] for k in measured} == {"linear", "linear_gelu", "linear_add", "attention"}
    assert set(measured.values()) <= {"default", "onednn", "explicit", "explicit_native_softmax"}
    assert main(["routes", "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert measured.items() <= cached.items()
    assert main(["routes"]) == 0
    listing = capsys.readouterr().out
    assert all(key in listing for key in cached) and f"{len(cached)} shape classes" in listing
    assert main(["routes", "--clear"]) == 0
    assert f"forgot {len(cached)} cached route choices" in capsys.readouterr().out
    assert main(["routes", "--json"]) == 0 and json.loads(capsys.readouterr().out) == {}


def test_routes_refuses_what_it_cannot_measure(capsys):
    assert main(["routes", "vit_small_patch16_224", "--mode", "train", "--dtype", "bf16"]) == 2
    assert "inference mode" in capsys.readouterr().err
    assert main(["--standard-path", "routes"]) == 2
    assert "drop --standard-path" in capsys.readouterr().err
