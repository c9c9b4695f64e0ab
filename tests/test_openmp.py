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


def test_threads_fit_the_cores_other_processes_leave():
    assert openmp.fitting_threads(2, 2, 0.0) == 2
    assert openmp.fitting_threads(2, 2, 0.4) == 2  # a mostly idle neighbour: no change
    assert openmp.fitting_threads(2, 2, 0.6) == 1
    assert openmp.fitting_threads(2, 2, 5.0) == 1  # never below one thread
    assert openmp.fitting_threads(8, 16, 3.0) == 8  # room left: what the run asked for
    assert openmp.fitting_threads(16, 16, 3.0) == 13


def test_running_elsewhere_counts_other_processes_threads(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 5\nprocs_blocked 0\n")
    for tid, state in ((10, "R"), (11, "S"), (12, "R")):
        (tmp_path / "self" / "task" / str(tid)).mkdir(parents=True)
        # a thread's name may hold spaces and parentheses: the state follows the last ')'
        (tmp_path / "self" / "task" / str(tid) / "stat").write_text(
            f"{tid} (py (worker) 1) {state} 1 2 3\n")
    assert openmp.running_elsewhere(str(tmp_path)) == 3
    assert openmp.running_elsewhere(str(tmp_path / "missing")) is None
    assert isinstance(openmp.running_elsewhere(), int)  # this machine's /proc (Linux)


def wait_for(predicate, timeout: float = 10.0) -> None:
    import time

    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)


def test_the_governor_lowers_torch_s_threads_while_a_neighbour_runs_and_raises_them_after():
    import torch

    seen = [1]
    before = torch.get_num_threads()
    governor = openmp.ThreadGovernor(2, cores=2, period=0.005, window=3, sample=lambda: seen[0])
    try:
        torch.set_num_threads(2)
        assert governor.start()
        wait_for(lambda: governor.allowed == 1)
        assert governor.apply() == 1 and torch.get_num_threads() == 1
        assert governor.apply() is None  # unchanged: nothing set
        seen[0] = 0  # the neighbour ended: the mean of the last 3 samples falls to 0
        wait_for(lambda: governor.allowed == 2)
        assert governor.apply() == 2 and torch.get_num_threads() == 2 and governor.changes == 2
    finally:
        governor.stop()
        torch.set_num_threads(before)
    assert not openmp.ThreadGovernor(2, sample=lambda: None).start()  # /proc says nothing
    assert not openmp.ThreadGovernor(1, sample=lambda: 0).start()  # nothing to lower


def test_a_run_with_share_cores_trains_on_the_threads_the_neighbours_leave(tmp_path, monkeypatch,
                                                                            capsys):
    import functools

    import torch

    from reverie.config import build_config
    from reverie.run import driver

    monkeypatch.setattr(driver, "governable", lambda: True)
    monkeypatch.setattr(driver, "ThreadGovernor", functools.partial(
        openmp.ThreadGovernor, cores=2, period=0.005, window=2, sample=lambda: 1))
    cfg = build_config("random", ["run.share_cores=true", "run.threads=2", "run.progress=false",
                                  "run.eval_episodes=0"], {"steps": 400})
    before = torch.get_num_threads()
    trainer = driver.Trainer(cfg, tmp_path / "run")
    threads: list[int] = []
    act = trainer._act

    def recording(*args):
        threads.append(torch.get_num_threads())
        __import__("time").sleep(0.002)  # room for the governor's samples
        return act(*args)

    trainer._act = recording
    trainer.train()
    assert threads[-1] == 1  # lowered (from run.threads=2, the note below) by the samples
    assert torch.get_num_threads() == before  # the caller's count back, the governor stopped
    assert trainer._governor is None
    err = capsys.readouterr().err
    assert err.count("run.share_cores: other processes are using the cores: 1 torch thread "
                     "instead of 2") == 1
    # where the machine cannot show its load, the run says so and keeps its threads
    monkeypatch.setattr(driver, "governable", lambda: False)
    driver.Trainer(cfg, tmp_path / "other").train()
    assert "does not show what else runs" in capsys.readouterr().err
    assert torch.get_num_threads() == before


def test_the_command_keeps_the_long_spin_only_for_a_train_with_share_cores(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(openmp, "governable", lambda: True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  threads: 0\n  share_cores: true\n")
    assert openmp.wants_long_spin(["train", "--set", "run.share_cores=true"])
    assert openmp.wants_long_spin(["train", "--resume", str(run)])
    assert not openmp.wants_long_spin(["train", "--resume", str(run), "--set",
                                       "run.share_cores=false"])
    assert not openmp.wants_long_spin(["train", "--resume", str(tmp_path / "none")])
    assert not openmp.wants_long_spin(["train"]) and not openmp.wants_long_spin([])
    assert not openmp.wants_long_spin(["eval", "--set", "run.share_cores=true"])
    monkeypatch.setattr(openmp, "governable", lambda: False)  # no governor: the short spin
    assert not openmp.wants_long_spin(["train", "--set", "run.share_cores=true"])


TRAIN_PROBE = """
import os, sys
from reverie.cli import main
try:
    main(["train", "--set", "run.share_cores=true", "--help"])  # decides, then only prints help
except SystemExit:
    pass
print("GOMP_SPINCOUNT=" + os.environ.get("GOMP_SPINCOUNT", "unset"), file=sys.stderr)
"""


def test_the_command_leaves_libgomp_s_spin_to_a_train_with_share_cores():
    env = {k: v for k, v in os.environ.items() if k not in openmp.USER_SETTINGS}
    err = subprocess.run([sys.executable, "-c", TRAIN_PROBE], capture_output=True, text=True,
                         env=env, check=True).stderr
    kept = "GOMP_SPINCOUNT=unset" if openmp.governable() else "GOMP_SPINCOUNT=1000"
    assert err.strip().splitlines()[-1] == kept
