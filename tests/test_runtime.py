"""glocal.runtime: keeping freed memory removes the page faults of re-allocating a large tensor."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from glocal.cli import main

# A child process allocates and touches 64 MiB a few times, then prints the minor page faults of ten more such
# allocations (a training step's activations, allocated and freed every step).
_CHILD = """
import resource, sys, torch
from glocal.runtime import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
for _ in range(3):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 * 2**20).fill_(2.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _steady_state_faults(setting: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHILD, setting], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings exist only in glibc")
def test_freed_memory_is_reused_without_page_faults():
    system = _steady_state_faults("system")
    tuned = _steady_state_faults("tuned")
    # glibc maps every 64 MiB block afresh (one fault per page touched, fewer with transparent huge pages); kept
    # memory is touched already.
    assert system > 2000, f"expected the system allocator to fault every new block in, got {system} faults"
    assert tuned < system / 10, (tuned, system)


def test_cli_runs_with_either_allocator(capsys):
    assert main(["--system-malloc", "list", "resnet*"]) == 0
    assert main(["list", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert out.count("resnet50") == 2
