"""Reading checkpoint files without executing them, and writing files atomically.

Supported containers, chosen by the file name's suffix:

* ``.safetensors``: read with ``safetensors`` (a header and raw buffers; nothing to execute);
* ``.npz``: read with ``numpy.load(allow_pickle=False)`` (the original ViT releases of google-research/
  vision_transformer); object arrays are refused;
* ``.pkl``: Caffe2/Detectron blob pickles (facebookresearch/video-nonlocal-net releases, ``{'blobs': {name:
  ndarray}}``, written by Python 2), read by a :class:`pickle.Unpickler` whose ``find_class`` admits only numpy's
  array and dtype reconstructors, so nothing else can be looked up, let alone called;
* ``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.pth.tar``, ``.tar``: PyTorch pickles, read with
  ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers and refuses any other
  global, so a crafted ``__reduce__`` never runs. Training scripts (timm's, used by VOLO and T2T-ViT) also store their
  ``argparse.Namespace`` and numpy scalars next to the weights; those inert data types, and only those
  (:data:`DATA_GLOBALS`), are admitted to the same restricted unpickler when a file needs them.

Releases nest their weights (DeiT and Twins under ``model``, VOLO and T2T-ViT under ``state_dict`` and
``state_dict_ema``, OpenMMLab under ``state_dict``) and sometimes prefix them with DataParallel's ``module.``;
:func:`read_state_dict` unwraps both and returns a flat ``{name: tensor}``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "DATA_GLOBALS",
    "PICKLE_SUFFIXES",
    "read_state_dict",
    "read_tensors",
    "unwrap_state_dict",
    "atomic_path",
    "remove_stale_temporaries",
    "temporary_prefix",
    "write_bytes_atomic",
]

_log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# Where releases nest the weights, in the order they are looked for.
_NESTING = ("model", "state_dict", "blobs")
_EMA_NESTING = ("state_dict_ema", "model_ema")

# The concrete dtype classes numpy pickles its dtypes through (``numpy.dtypes.Float64DType``...), one per plain
# numeric, boolean or string type; object, structured (void) and variable-width string dtypes are not data a
# checkpoint needs. Derived from the types, so the names are whatever this numpy spells them.
_DTYPE_CLASSES = tuple(
    type(np.dtype(code))
    for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", "U", "S")
)

# Globals that rebuild plain data without running code of the file's choosing: the training arguments that timm's
# checkpoint saver stores, numpy arrays and scalars (metrics) and the dtype classes above; matched by exact name,
# admitted only when a file needs them. Nothing else in their modules is reachable.
DATA_GLOBALS = (
    "argparse.Namespace",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    *(f"{c.__module__}.{c.__qualname__}" for c in _DTYPE_CLASSES),
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file or the keys."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".safetensors", ".npz", ".pkl", *PICKLE_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_tensors(path: str | os.PathLike) -> dict:
    """The raw content of a checkpoint file: a (possibly nested) mapping holding tensors.

    Raises :class:`CheckpointError` naming the file and its expected format when it is corrupt, truncated, of an
    unknown suffix, or (for pickles) would need to execute code to be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    suffix = _suffix(path)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for every malformed header or buffer
            raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or truncated?): {err}") from err
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is not a .npz archive (expected a zip of .npy arrays, as numpy.savez writes)"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise CheckpointError(
                    f"{path} holds pickled object arrays; glocal reads .npz files only without pickles"
                ) from err
            raise CheckpointError(f"{path} is not a readable .npz archive (corrupt or truncated?): {err}") from err
        except (OSError, EOFError, zipfile.BadZipFile, TypeError) as err:
            raise CheckpointError(f"{path} is not a readable .npz archive (corrupt or truncated?): {err}") from err
    if suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                content = _NumpyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path} was refused: {err}") from err
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise CheckpointError(
                f"{path} is not a readable Caffe2 blob pickle (corrupt or truncated?): {err}"
            ) from err
        return _arrays_to_tensors(content)
    if suffix in PICKLE_SUFFIXES:
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                data_globals = _data_globals_needed(path)
                if data_globals is None:
                    raise
                with torch.serialization.safe_globals(data_globals):
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path} was refused: reading it would need objects other than tensors, plain containers and "
                f"inert data, and glocal never unpickles code (torch.load(weights_only=True)). If you trust the file, "
                f"re-save its state dict with torch.save(state_dict) or as .safetensors. Details: {err}"
            ) from err
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError, AttributeError) as err:
            # TypeError/AttributeError: an admitted data class called with arguments it does not take
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (a torch.save zip or legacy pickle; corrupt or "
                f"truncated?): {err}"
            ) from err
    raise CheckpointError(
        f"{path}: unknown checkpoint suffix {suffix!r}; expected .safetensors, .npz, .pkl or one of {PICKLE_SUFFIXES}"
    )


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, numbers, strings and numpy arrays; any other global is refused, never imported."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles written by Python 3 spell bytes
            return _latin1_bytes
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"a blob pickle may only hold numpy arrays, not {module}.{name}")
        return super().find_class(module, name)


def _latin1_bytes(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` limited to what pickle's protocol 2 uses it for: a str of bytes, spelled in latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"a blob pickle may call _codecs.encode only as pickle writes bytes (a str, 'latin1'), not with "
            f"{type(text).__name__} and {encoding!r}"
        )
    return text.encode("latin1")


def _arrays_to_tensors(content: object) -> object:
    if isinstance(content, np.ndarray):
        if content.dtype == object:
            raise CheckpointError("a blob pickle holds an object array; only numeric arrays are weights")
        return torch.from_numpy(np.ascontiguousarray(content))
    if isinstance(content, Mapping):
        return {k: _arrays_to_tensors(v) for k, v in content.items()}
    return content


def _data_globals_needed(path: Path) -> list | None:
    """The :data:`DATA_GLOBALS` objects a zip checkpoint's pickle names, or None when it names anything else."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, AttributeError):
        return None
    if not names or any(n not in DATA_GLOBALS for n in names):
        return None
    found = []
    for name in names:
        module_name, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):
            return None
    if "numpy.dtype" in names:  # a dtype unpickles through its concrete class (Float64DType...)
        found += _DTYPE_CLASSES
    return found


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(content: Mapping, path: Path, ema: bool) -> Mapping:
    """The flat mapping of tensors inside a release's nesting."""
    order = (*_EMA_NESTING, *_NESTING) if ema else _NESTING
    for _ in range(3):  # DeiT: {'model': ...}; some trainers nest once more
        if _is_state_dict(content):
            return content
        found = next((k for k in order if isinstance(content.get(k), Mapping)), None)
        if found is None:
            break
        skipped = [k for k in (*_EMA_NESTING, *_NESTING) if k != found and isinstance(content.get(k), Mapping)]
        if ema and found not in _EMA_NESTING:
            _log.warning("%s holds no EMA weights (%s); using %r", path, "/".join(_EMA_NESTING), found)
        elif skipped:
            _log.info("%s: using the weights under %r (the file also holds %s)", path, found, skipped)
        content = content[found]
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors where weights are expected (top-level keys: {sorted(map(str, content))[:10]})"
        )
    others = sorted(str(k) for k, v in content.items() if not isinstance(v, torch.Tensor))
    if others:
        _log.info("%s: ignoring %d non-tensor entries: %s", path, len(others), others[:10])
    return tensors


def read_state_dict(path: str | os.PathLike, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint file as a flat ``{name: tensor}``, unwrapped from its nesting and ``module.`` prefix.

    ``ema=True`` prefers the exponential moving average weights (``state_dict_ema``, ``model_ema``) when the file
    holds them, as T2T-ViT's README recommends for its releases.
    """
    path = Path(path)
    return unwrap_state_dict(read_tensors(path), path, ema=ema)


def unwrap_state_dict(content: object, path: Path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` inside the content of ``path`` as :func:`read_tensors` returned it."""
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a mapping of names to tensors")
    state_dict = dict(_unwrap(content, path, ema))
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path`` (then fsync the
    folder), on failure remove it. Readers see the old file or the complete new one, never a torn write, even if the
    process is killed."""
    path = Path(path)
    blocking = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"cannot write {path}: {blocking} is a file, not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def temporary_prefix(path: Path) -> str:
    """The name prefix of this process's temporaries for ``path``: hidden, beside it, with the writer's PID so that a
    later writer can tell a dead writer's leftovers from a live one's."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries (files or folders ``.NAME.PID.*.tmp``) that writers of ``path`` killed before they
    finished left beside it; those of processes still running are kept. Returns what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\..*\.tmp$")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    if removed:
        _log.info("removed %d temporaries of interrupted writes to %s", len(removed), path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
