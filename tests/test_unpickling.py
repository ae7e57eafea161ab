"""The restricted unpickler admits exactly the data classes a checkpoint needs: payloads that reach for the names
beside each admitted one (in the same module) or call an admitted one with hostile arguments are refused, in
glocal's words, and nothing they ask for runs."""

from __future__ import annotations

import argparse
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from glocal.weights.io import DATA_GLOBALS, CheckpointError, read_state_dict


class Global:
    """A reference to ``module.name`` in a hand-written pickle."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def _op(value) -> bytes:
    if isinstance(value, Global):
        return b"c" + value.module.encode() + b"\n" + value.name.encode() + b"\n"
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, tuple):
        return b"(" + b"".join(map(_op, value)) + b"t"
    raise TypeError(value)


def call_pickle(func: Global, *args) -> bytes:
    """Protocol-2 pickle of ``{"w": func(*args)}``: the file asks the unpickler to call ``func``."""
    return b"\x80\x02}" + _op("w") + _op(func) + _op(tuple(args)) + b"Rs."


def torch_zip(path: Path, pickle_bytes: bytes) -> Path:
    """A file in torch.save's zip layout whose ``data.pkl`` is ``pickle_bytes``."""
    torch.save({"w": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            dst.writestr(info, pickle_bytes if info.filename.endswith("/data.pkl") else data)
    return path


def test_the_zip_builder_is_what_torch_reads(tmp_path):
    good = pickle.dumps({"w": 3}, protocol=2)
    assert torch.load(torch_zip(tmp_path / "ok.pth", good), weights_only=True) == {"w": 3}


def test_numpy_dtypes_helper_does_not_run(tmp_path):
    """The hole found by the fuzz run: every ``numpy.dtypes.*`` name was admitted, including a function that writes
    into numpy's module."""
    payload = call_pickle(Global("numpy.dtypes", "_add_dtype_helper"), Global("argparse", "Namespace"), "PwnedDType")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(torch_zip(tmp_path / "helper.pth", payload))
    assert not hasattr(np.dtypes, "PwnedDType")


def test_numpy_functions_beside_admitted_names_do_not_run(tmp_path):
    marker = tmp_path / "written.npy"
    payload = call_pickle(Global("numpy", "save"), str(marker), "x")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(torch_zip(tmp_path / "save.pth", payload))
    assert not marker.exists()


NEIGHBOURS = [
    ("numpy.dtypes", "ObjectDType"),
    ("numpy.dtypes", "VoidDType"),
    ("numpy.dtypes", "StringDType"),
    ("numpy", "load"),
    ("numpy", "fromfile"),
    ("numpy.core.multiarray", "fromfile"),
    ("numpy._core.multiarray", "frombuffer"),
    ("numpy._core.multiarray", "_reconstructor"),
    ("argparse", "ArgumentParser"),
    ("argparse", "FileType"),
    ("argparse", "_sys"),
    ("builtins", "eval"),
    ("os", "system"),
]


@pytest.mark.parametrize(("module", "name"), NEIGHBOURS, ids=[f"{m}.{n}" for m, n in NEIGHBOURS])
def test_names_beside_the_admitted_ones_are_refused(tmp_path, module, name):
    assert f"{module}.{name}" not in DATA_GLOBALS
    payload = call_pickle(Global(module, name), "w")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(torch_zip(tmp_path / "n.pth", payload))


HOSTILE_CALLS = [
    (Global("argparse", "Namespace"), ("positional",)),
    (Global("numpy", "dtype"), ("O",)),
    (Global("numpy", "ndarray"), (2, "O")),
    (Global("numpy._core.multiarray", "scalar"), ("x",)),
    (Global("numpy.dtypes", "Float64DType"), ("x",)),
]


@pytest.mark.parametrize(("func", "args"), HOSTILE_CALLS, ids=[f.name for f, _ in HOSTILE_CALLS])
def test_admitted_names_called_with_hostile_arguments_give_glocal_errors(tmp_path, func, args):
    path = torch_zip(tmp_path / "h.pth", call_pickle(func, *args))
    with pytest.raises(CheckpointError, match="h.pth"):
        read_state_dict(path)


def test_inert_training_data_still_reads(tmp_path):
    """What timm's CheckpointSaver stores beside the weights: arguments, numpy scalars of every plain dtype."""
    sd = {"a": torch.arange(3.0)}
    extras = {f"m_{t}": np.array(1, dtype=t)[()] for t in ("f2", "f4", "f8", "i4", "i8", "u1", "?")}
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1, name="x"), **extras}, tmp_path / "t.pth")
    assert torch.equal(read_state_dict(tmp_path / "t.pth")["a"], sd["a"])


def test_random_bytes_named_npz_are_not_reported_as_pickles(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"not a \.npz archive") as err:
        read_state_dict(path)
    assert "pickle" not in str(err.value)
