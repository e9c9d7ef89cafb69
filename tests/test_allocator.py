"""heta_fast.allocator: heta-fast's own processes keep freed memory for reuse; other programs keep their allocator."""
import subprocess
import sys

import pytest

from heta_fast import allocator

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

# Allocates, fills and frees a 64 MB tensor six times and prints the minor page faults of rounds 2-6.
# (Kept memory is not reused every round: a small object placed after the block keeps it off the
# heap's top, so an aligned request of the same size may take fresh memory once more.)
REUSE = """
import resource, sys
import torch
from heta_fast.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(16 << 20, dtype=torch.float32).fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _later_rounds_faults(mode: str) -> int:
    import os

    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS and k != allocator.OPT_OUT}
    out = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@linux_only
def test_freed_blocks_are_reused_not_faulted_in_again():
    default = _later_rounds_faults("default")
    kept = _later_rounds_faults("keep")
    # glibc's default maps a 64 MB block afresh each time (5 x 16,384 pages of 4 KB, fewer with huge pages)
    assert default > 0
    assert kept * 2 < default, (kept, default)


@pytest.mark.parametrize("env", [{allocator.OPT_OUT: "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000"}])
def test_the_users_choice_is_kept(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False


def test_a_worker_process_gets_the_settings_as_its_starting_environment(monkeypatch):
    for name in (*allocator.USER_SETTINGS, allocator.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    assert allocator.worker_environment() == allocator.KEEP_FREED_ENV
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.worker_environment() == {}


def test_not_linux_changes_nothing(monkeypatch):
    for name in (*allocator.USER_SETTINGS, allocator.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    # a driver elsewhere still starts its (Linux) actors with the settings
    assert allocator.worker_environment() == allocator.KEEP_FREED_ENV
