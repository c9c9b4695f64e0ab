"""reverie.allocator: freed activations stay mapped, unless the user set glibc's thresholds."""

import json
import os
import subprocess
import sys

import pytest

import reverie.allocator as allocator

PROBE = """
import json, sys
import reverie.allocator as a
took = a.keep_freed_memory()
import torch

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

x = torch.ones(32 * 2**20 // 4)  # 32 MiB, every page touched
before = rss_mb()
del x
print(json.dumps({"took": took, "released_mb": before - rss_mb()}))
"""


def probe(**glibc: str) -> dict:
    """PROBE in a fresh Python whose environment sets exactly these glibc variables."""
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**env, **glibc}, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._libc() is None,
                    reason="glibc's mallopt only")
def test_freed_memory_stays_mapped_unless_the_environment_says_otherwise():
    kept = probe()
    assert kept["took"] is True and kept["released_mb"] < 4  # the 32 MiB stay in the process
    # the user's own glibc setting wins: a 128 KiB mmap threshold hands the block back
    user = probe(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    assert user["took"] is False and user["released_mb"] > 28


def test_the_users_glibc_setting_is_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "set_thresholds", lambda *a: calls.append(a) or True)
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is True
    assert calls == [(allocator.KEEP, allocator.KEEP)]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.keep_freed_memory() is False and len(calls) == 1
