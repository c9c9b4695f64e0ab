"""reverie.openmp: the CLI shortens libgomp's spin waits before torch loads, unless the user
set libgomp's variables."""

import os
import subprocess
import sys

import reverie.openmp as openmp


def test_spin_count_is_set_only_where_the_user_set_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as at the CLI's start-up
    env: dict[str, str] = {}
    assert openmp.shorten_spin_waits(env) is True and env == {"GOMP_SPINCOUNT": "1000"}
    mine = {"GOMP_SPINCOUNT": "300000"}
    assert openmp.shorten_spin_waits(mine) is False and mine == {"GOMP_SPINCOUNT": "300000"}
    policy = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp.shorten_spin_waits(policy) is False and policy == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_too_late_once_torch_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", object())  # libgomp has read its settings
    env: dict[str, str] = {}
    assert openmp.shorten_spin_waits(env) is False and env == {}


PROBE = """
import os, sys
from reverie.cli import main
main(["presets", "cartpole"])
print("GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "unset"), file=sys.stderr)
"""


def run_cli(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in openmp.USER_SETTINGS}
    err = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**env, **extra}, check=True).stderr
    return err.strip().splitlines()[-1]


def test_the_cli_sets_it_before_torch_loads():
    # importing the CLI must not load torch, or the setting would come too late to count
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, reverie.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "False"
    assert run_cli() == "GOMP_SPINCOUNT=1000"
    assert run_cli(GOMP_SPINCOUNT="5") == "GOMP_SPINCOUNT=5"
    assert run_cli(OMP_WAIT_POLICY="ACTIVE") == "GOMP_SPINCOUNT=unset"
