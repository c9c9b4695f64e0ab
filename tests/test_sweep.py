"""`reverie sweep`: grids of real `reverie train` runs, kills, resumes, reruns, Ray, bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reverie.cli import main
from reverie.distributed.grid import parse_grid, trial_name
from reverie.distributed.sweep import Sweep, run_sweep
from reverie.errors import UserError

TINY = ["--preset", "random", "--env", "CartPole-v1", "--steps", "200",
        "--set", "run.eval_episodes=0"]


def sweep_json(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


@pytest.fixture(scope="module")
def grid_2x2(tmp_path_factory) -> Path:
    """A finished local 2x2 sweep: two train ratios x two seeds."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    assert main(["sweep", *TINY, "--seeds", "2", "--grid", "run.train_ratio=8,16",
                 "--workers", "2", "--out", str(out)]) == 0
    return out


def test_local_2x2_grid_end_to_end(grid_2x2, capsys):
    names = sorted(p.name for p in grid_2x2.iterdir() if (p / "config.yaml").exists())
    assert names == [trial_name("CartPole-v1", [("run.train_ratio", r)], s)
                     for r in ("16", "8") for s in (0, 1)]
    summary = sweep_json(grid_2x2)
    assert (summary["trials"], summary["finished"], summary["failed"]) == (4, 4, 0)
    for name in names:  # each trial is an ordinary, complete run folder
        manifest = json.loads((grid_2x2 / name / "checkpoints" / "manifest.json").read_text())
        assert manifest["checkpoints"][-1]["step"] == 200
    text = (grid_2x2 / "report" / "report.md").read_text()
    assert "4 runs, 1 env, 2 groups" in text
    assert "| random/train_ratio=8 | 1 | 2 |" in text
    assert "| random/train_ratio=16 | 1 | 2 |" in text


def test_rerun_skips_finished_trials(grid_2x2, capsys):
    before = {p: p.stat().st_mtime_ns for p in grid_2x2.glob("*/metrics.jsonl")}
    first = {r["name"]: r for r in sweep_json(grid_2x2)["results"]}
    t0 = time.time()
    assert main(["sweep", *TINY, "--seeds", "2", "--grid", "run.train_ratio=8,16",
                 "--workers", "2", "--out", str(grid_2x2)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["finished"]) == (4, 0)
    assert {p: p.stat().st_mtime_ns for p in grid_2x2.glob("*/metrics.jsonl")} == before
    assert time.time() - t0 < 15  # no trial process was started
    # the run that trained each trial stays on record (attempts, exit codes, wall time)
    for r in sweep_json(grid_2x2)["results"]:
        trained = {k: v for k, v in first[r["name"]].items() if k not in ("name", "folder")}
        assert r["status"] == "skipped" and r["trained"] == trained
        assert trained["status"] == "finished" and trained["wall_s"] > 0


def test_a_skipped_trial_keeps_the_record_of_the_run_that_trained_it():
    from reverie.distributed.sweep import _keep_history

    trained = {"name": "a", "folder": "x/a", "status": "finished", "attempts": 2,
               "returncodes": [137, 0], "wall_s": 9.5}
    skip = {"name": "a", "status": "skipped", "attempts": 0, "returncodes": [], "wall_s": 0.0}
    again = [dict(skip)]
    _keep_history(again, {"results": [trained]})
    assert again[0]["trained"] == {"status": "finished", "attempts": 2,
                                   "returncodes": [137, 0], "wall_s": 9.5}
    third = [dict(skip)]
    _keep_history(third, {"results": [again[0]]})  # a third run: still the run that trained it
    assert third[0]["trained"] == again[0]["trained"]
    failed = [dict(skip)]  # failed then, finished since with `reverie train --resume`
    _keep_history(failed, {"results": [{**trained, "status": "failed",
                                       "returncodes": [137] * 3}]})
    assert "trained" not in failed[0]
    fresh = [{"name": "b", "status": "finished", "attempts": 1}]
    _keep_history(fresh, {"results": [{**trained, "name": "b"}]})  # it ran now: its own record
    assert "trained" not in fresh[0]


def _trial_pid(folder: Path) -> int | None:
    """The pid of this test's own `reverie train` child writing `folder`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"train" in argv and str(folder).encode() in argv:
            return int(proc.name)
    return None


def test_killed_trial_is_resumed_and_reported(tmp_path):
    out = tmp_path / "kill"
    sweep = Sweep(preset="random", envs=["CartPole-v1"], seeds=1, steps=4000, workers=1,
                  overrides=["run.eval_episodes=0", "run.checkpoint_every=500",
                             "run.log_every=100"], out=str(out), retries=2)
    folder = out / trial_name("CartPole-v1", [], 0)
    summary: dict = {}
    worker = threading.Thread(target=lambda: summary.update(run_sweep(sweep)))
    worker.start()
    killed = False
    deadline = time.time() + 60
    while time.time() < deadline and not killed:
        pid = _trial_pid(folder)
        rows = folder / "timing.jsonl"
        if pid and rows.exists() and rows.read_text().count("\n") >= 2:
            os.kill(pid, signal.SIGKILL)  # mid-run, after its first logged steps
            killed = True
        time.sleep(0.05)
    worker.join(timeout=120)
    assert killed and not worker.is_alive()
    (result,) = sweep_json(out)["results"]
    assert result["status"] == "finished" and result["resumes"] == 1
    assert result["returncodes"] == [-signal.SIGKILL, 0]
    assert summary["resumed"] == 1 and summary["failed"] == 0
    manifest = json.loads((folder / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["step"] == 4000
    text = (out / "report" / "report.md").read_text()
    assert "1 trial: 1 run now (1 of them after a resume), 0 already finished" in text
    assert f"| {folder.name} | resumed 1x, finished | 2 | -9, 0 |" in text
    assert "4,000 / 4,000" in text  # the resumed run is scored over its whole budget


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_sweep_stops_its_trials_once_with_their_checkpoints(tmp_path, sig, capsys):
    """`kill SWEEP` (or Ctrl-C): each running trial gets the signal once and stops with a
    checkpoint at the step it reached (SIGTERM to the sweep used to reach a trial twice,
    its second 'stop at once' losing the steps since its last checkpoint); the sweep ends
    with the signal's exit code and one line; its next run resumes the trial."""
    import subprocess

    out = tmp_path / "sw"
    args = ["sweep", "--preset", "random", "--env", "CartPole-v1", "--steps", "100000000",
            "--set", "run.eval_episodes=0", "--set", "run.checkpoint_every=100000000",
            "--out", str(out)]
    # SIGINT as a terminal's job has it: a suite started in the background (`make test &`)
    # passes on an ignored SIGINT, which the sweep then keeps ignoring (run/stop.py)
    sweep = subprocess.Popen([sys.executable, "-m", "reverie", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = out / trial_name("CartPole-v1", [], 0)
    deadline = time.time() + 120
    while not (folder / "timing.jsonl").exists() or \
            (folder / "timing.jsonl").read_text().count("\n") < 2:
        assert time.time() < deadline and sweep.poll() is None, sweep.stderr.read()
        time.sleep(0.1)
    sweep.send_signal(sig)
    try:
        _, err = sweep.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        sweep.kill()  # its trial ends with it (follow_parent)
        raise
    assert sweep.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1].startswith(f"reverie: sweep stopped by {name}; its "
                                                   "running trials stopped with their "
                                                   "checkpoints")
    log = (out / "logs" / f"{folder.name}.log").read_text()
    assert f"stopped by {name} at env step" in log and "interrupted" not in log
    step = json.loads((folder / "checkpoints" / "manifest.json").read_text())[
        "checkpoints"][-1]["step"]
    assert step > 0  # the step it reached, not its first checkpoint's
    assert main([*args[:5], "--steps", str(step + 50), *args[7:]]) == 0
    (result,) = sweep_json(out)["results"]
    assert result["status"] == "finished" and result["resumes"] == 1
    assert "1 of 1 trial(s) to run (1 continued from its run folder, 0 finished before), " in \
        capsys.readouterr().err

def test_a_stopped_sweep_keeps_the_records_of_its_ended_trials(tmp_path):
    """A stopped sweep wrote no sweep.json: the record of a trial that finished before the
    stop (its attempts, exit codes, wall time) was lost, as the next run only skips it. Now
    sweep.json holds what ended, marked stopped, and the next run carries the record on."""
    import subprocess

    out = tmp_path / "sw"
    args = ["sweep", "--preset", "random", "--env", "CartPole-v1", "--set",
            "run.eval_episodes=0", "--set", "run.checkpoint_every=100000000", "--out", str(out)]
    short, long_ = (out / trial_name("CartPole-v1", [("run.steps", v)], 0)
                    for v in ("300", "100000000"))
    err_path = tmp_path / "err"
    with open(err_path, "w") as err:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "reverie", *args, "--grid", "run.steps=300,100000000",
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while f"trial {short.name} finished" not in err_path.read_text() or \
                not (long_ / "timing.jsonl").exists():
            assert time.time() < deadline and sweep.poll() is None, err_path.read_text()
            time.sleep(0.1)
        sweep.send_signal(signal.SIGTERM)
        try:
            assert sweep.wait(timeout=120) == 128 + signal.SIGTERM, err_path.read_text()
        except subprocess.TimeoutExpired:
            sweep.kill()
            raise
    stopped = sweep_json(out)
    assert stopped["stopped"] == "SIGTERM" and "report" not in stopped
    assert (stopped["finished"], stopped["unfinished"]) == (1, 1)
    records = {r["name"]: r for r in stopped["results"]}
    assert records[short.name]["status"] == "finished"
    assert records[long_.name]["status"] == "stopped"
    assert not (out / "report").exists()
    # the next run names the short trial only: it skips it with the stopped run's record
    summary = run_sweep(Sweep(preset="random", envs=["CartPole-v1"], seeds=1,
                              overrides=["run.eval_episodes=0",
                                         "run.checkpoint_every=100000000"],
                              grid=["run.steps=300"], out=str(out)))
    assert summary["skipped"] == 1 and "stopped" not in summary
    (result,) = [r for r in sweep_json(out)["results"] if r["name"] == short.name]
    assert result["status"] == "skipped"
    assert result["trained"]["returncodes"] == records[short.name]["returncodes"] == [0]


def test_a_stopped_sweep_says_its_report_is_an_earlier_runs(tmp_path, monkeypatch):
    """A stopped sweep writes no report: the report/ beside its sweep.json is of the last run
    that ended, and the stop's line says so."""
    from reverie.distributed import sweep as sweep_module
    from reverie.errors import Stopped

    out = tmp_path / "sw"
    base = dict(preset="random", envs=["CartPole-v1"], seeds=1, out=str(out),
                overrides=["run.eval_episodes=0", "run.checkpoint_every=100000000"])
    run_sweep(Sweep(**base, grid=["run.steps=100"]))
    assert (out / "report" / "report.md").is_file()

    def stopped(*args, **kwargs):
        raise Stopped("sweep stopped by SIGTERM; its running trials stopped with their "
                      "checkpoints: run the same command again to resume them", "SIGTERM")

    monkeypatch.setattr(sweep_module, "_run_local", stopped)
    with pytest.raises(Stopped) as e:
        run_sweep(Sweep(**base, grid=["run.steps=100,200"]))
    assert str(e.value).endswith(f"resume them; {out / 'report'} is still the report of an "
                                 "earlier run of this sweep") and e.value.exit_code == 143
    assert sweep_json(out)["stopped"] == "SIGTERM"


def _long_run_args(folder: Path) -> list[str]:
    return ["train", "--preset", "random", "--env", "CartPole-v1", "--steps", "100000000",
            "--set", "run.eval_episodes=0", "--no-progress", "--out", str(folder)]


def test_an_interrupted_wait_stops_the_trial_with_its_checkpoint(tmp_path):
    """Ray's cancel interrupts a task by `interrupt_main`, which a blocking wait on the trial
    process never saw (the trial trained on until Ray killed it, without a checkpoint):
    the wait is in steps, and the interrupted one stops the trial with SIGTERM."""
    import _thread

    from reverie.distributed import trial as trial_module
    from reverie.distributed.trial import _run_child

    folder = tmp_path / "run"
    # interrupt_main does nothing where SIGINT is ignored (a suite run in the background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(8.0, _thread.interrupt_main)
    # never a hang: if the interrupt is not seen, the trial is killed after a minute
    guard = threading.Timer(60.0, lambda: trial_module.signal_trials(signal.SIGKILL))
    timer.start()
    guard.start()
    t0 = time.time()
    try:
        with open(tmp_path / "log", "w") as log, pytest.raises(KeyboardInterrupt):
            _run_child(_long_run_args(folder), log)
    finally:
        guard.cancel()
        timer.cancel()
        trial_module.reset_stop()
        signal.signal(signal.SIGINT, previous)
    assert time.time() - t0 < 60
    text = (tmp_path / "log").read_text()
    assert "stopped by SIGTERM at env step" in text, text
    assert json.loads((folder / "checkpoints" / "manifest.json").read_text())[
        "checkpoints"][-1]["step"] > 0


def test_a_trial_started_after_the_stop_gets_it_and_none_starts_once_stopped(tmp_path,
                                                                               monkeypatch):
    from reverie.distributed import trial as trial_module
    from reverie.distributed.grid import Trial

    trial_module.signal_trials(signal.SIGTERM)  # a stop, before this trial's process exists
    try:
        t0 = time.time()
        with open(tmp_path / "log", "w") as log:
            rc = trial_module._run_child(_long_run_args(tmp_path / "run"), log)
        assert rc in (128 + signal.SIGTERM, -signal.SIGTERM) and time.time() - t0 < 60
    finally:
        trial_module.reset_stop()
    monkeypatch.setattr(trial_module, "_run_child", lambda *a: pytest.fail("started"))
    t = Trial(name="t", folder=str(tmp_path / "t"), preset="random", env=None, seed=0,
              steps=100)
    result = trial_module.run_trial(t, retries=2, stop=lambda: True)
    assert result["status"] == "stopped" and result["attempts"] == 0

def test_an_interrupt_between_a_trials_attempts_still_gives_its_record(tmp_path, monkeypatch):
    """Ray's cancel interrupts a task wherever it is: in the wait after an attempt found its
    folder busy it escaped run_trial, and the stopped trial had no record (no line, nothing in
    sweep.json). A Ray task's run_trial (interruptible) returns the stopped record; the
    local backend's (which a cancel never reaches) lets the interrupt through."""
    from reverie.distributed import trial as trial_module
    from reverie.distributed.grid import Trial
    from reverie.errors import Busy

    def busy_wait(seconds, stop):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_module, "_run_child", lambda *a: Busy.exit_code)
    monkeypatch.setattr(trial_module, "_wait_busy", busy_wait)
    t = Trial(name="t", folder=str(tmp_path / "t"), preset="random", env=None, seed=0,
              steps=100)
    result = trial_module.run_trial(t, retries=2, interruptible=True)
    assert result["status"] == "stopped"
    assert result["attempts"] == 1 and result["returncodes"] == [Busy.exit_code]
    with pytest.raises(KeyboardInterrupt):
        trial_module.run_trial(t, retries=2)


def test_bad_grid_key_suggests_and_launches_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    rc = main(["sweep", *TINY, "--grid", "run.trian_ratio=8,16", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown config key 'run.trian_ratio' (did you mean 'run.train_ratio'?)" in err
    assert not out.exists()
    rc = main(["sweep", *TINY, "--grid", "run.train_ratio=8,x", "--out", str(out)])
    assert rc == 2 and "run.train_ratio" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("item", ["run.steps", "=1,2", "run.steps=1,,2"])
def test_grid_syntax(item):
    with pytest.raises(UserError, match="key=v1,v2"):
        parse_grid([item])
    assert parse_grid(["a.b=1, 2"]) == [("a.b", ["1", "2"])]
    with pytest.raises(UserError, match="--grid a.b lists 1 more than once; give each value "
                                        "once"):
        parse_grid(["a.b=1,2, 1"])
    # one number spelt twice ran the same trial twice, averaged as seeds in the report
    with pytest.raises(UserError, match=r"--grid run.train_ratio lists 128 and 128\.0, the "
                                        "same value; give each value once"):
        parse_grid(["run.train_ratio=128,128.0"])
    with pytest.raises(UserError, match=r"lists 1e-3 and 0\.001, the same value"):
        parse_grid(["imagine.lr_world=1e-3,0.001"])
    with pytest.raises(UserError, match="lists null and ~, the same value"):
        parse_grid(["a=null,~"])
    assert parse_grid(["a=1,true,one,null"]) == [("a", ["1", "true", "one", "null"])]


def test_a_key_in_both_set_and_grid_is_refused(tmp_path, capsys):
    """--set imagine.world.backbone=gru with --grid imagine.world.backbone=gru,mamba2 ran
    the grid's values and dropped the --set in silence."""
    out = tmp_path / "both"
    rc = main(["sweep", *TINY, "--set", "run.train_ratio=8", "--grid", "run.train_ratio=8,16",
               "--out", str(out)])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        "reverie: error: --set and --grid both set run.train_ratio; give it in one of them")
    assert not out.exists()


def test_a_sweep_with_its_replays_in_memory_is_refused(tmp_path, capsys):
    """replay.on_disk=false: a stopped sweep's trials could not be resumed (each failed on
    the rerun it told the user to make, and a rerun with the replay on disk was refused as
    other settings): refused before any trial starts."""
    out = tmp_path / "mem"
    rc = main(["sweep", *TINY, "--set", "replay.on_disk=false", "--out", str(out)])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        "reverie: error: replay.on_disk=false: a sweep resumes its stopped and crashed trials, "
        "which needs their replay on disk; drop it (--set, --grid or your preset file)")
    assert not out.exists()
    # a folder of an earlier sweep's in-memory trial is not taken for a trial of this one
    # (its resume would be refused), though on_disk changes no result; log_every is alike
    from reverie.config import build_config
    from reverie.distributed.grid import _settings

    def settings(*sets):
        return _settings(build_config("cartpole", list(sets), {}), set())

    assert settings("replay.on_disk=false") != settings()
    assert settings("run.log_every=7") == settings()


def test_sweep_into_another_sweeps_folder_is_refused(grid_2x2, capsys):
    rc = main(["sweep", *TINY, "--seeds", "2", "--grid", "run.train_ratio=8,16",
               "--set", "run.prefill=5", "--out", str(grid_2x2)])
    err = capsys.readouterr().err
    assert rc == 2 and ("other settings (run.prefill: 0 there, 5 in this sweep), which a resume "
                        "cannot change: give this sweep another --out") in err


def test_rerun_with_another_grid_keeps_the_earlier_trials(tmp_path, capsys):
    """A second --grid into the same folder adds its trials; sweep.json and the report keep
    the first grid's trials (they used to drop out of both)."""
    out = tmp_path / "grow"
    assert main(["sweep", *TINY, "--grid", "run.train_ratio=8", "--out", str(out)]) == 0
    assert main(["sweep", *TINY, "--grid", "run.train_ratio=16", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["trials"], summary["finished"], summary["earlier_trials"]) == (1, 1, 1)
    saved = sweep_json(out)
    assert [r["name"] for r in saved["results"]] == [
        trial_name("CartPole-v1", [("run.train_ratio", r)], 0) for r in ("16", "8")]
    assert saved["grid_keys"] == ["run.train_ratio"]
    text = (out / "report" / "report.md").read_text()
    assert "2 runs, 1 env, 2 groups" in text
    assert "| random/train_ratio=8 | 1 | 1 |" in text
    assert "Also reported: 1 trial(s) that an earlier run" in text
    # a trial folder deleted by hand is no longer carried along
    shutil.rmtree(out / saved["results"][1]["name"])
    assert main(["sweep", *TINY, "--grid", "run.train_ratio=16", "--out", str(out)]) == 0
    assert [r["name"] for r in sweep_json(out)["results"]] == [saved["results"][0]["name"]]
    # a sweep.json written before grid_keys existed: the keys come from the trial names
    older = sweep_json(out)
    del older["grid_keys"]
    (out / "sweep.json").write_text(json.dumps(older))
    assert main(["sweep", *TINY, "--grid", "run.prefill=0", "--out", str(out)]) == 0
    assert sweep_json(out)["grid_keys"] == ["run.train_ratio", "run.prefill"]



def test_a_folder_with_a_logs_folder_is_not_taken_for_a_sweep(tmp_path, capsys):
    """A project folder with logs/ and report/ of its own was taken for an earlier sweep, and
    its report/report.md overwritten. A sweep folder is known by its marker (or sweep.json,
    or a trial's log beside that trial's run folder: a sweep of a version before the marker
    that was stopped before writing sweep.json)."""
    proj = tmp_path / "proj"
    (proj / "logs").mkdir(parents=True)
    (proj / "logs" / "app.log").write_text("mine\n")
    (proj / "report").mkdir()
    (proj / "report" / "report.md").write_text("my paper report\n")
    assert main(["sweep", *TINY, "--out", str(proj)]) == 2
    assert "is not a reverie sweep" in capsys.readouterr().err
    assert (proj / "report" / "report.md").read_text() == "my paper report\n"
    from reverie.distributed.sweep import SWEEP_MARKER, check_sweep_folder
    from reverie.run.folder import MARKER

    (proj / "app").mkdir()
    (proj / "app" / MARKER).write_text("")  # the log's trial: an older sweep's folder
    check_sweep_folder(proj)
    done = tmp_path / "done"
    assert main(["sweep", *TINY, "--out", str(done)]) == 0
    assert (done / SWEEP_MARKER).is_file()


def test_a_second_copy_of_a_running_sweep_is_refused(tmp_path, capsys):
    from reverie.distributed.sweep import SWEEP_MARKER, _lock

    out = tmp_path / "sw"
    out.mkdir()
    (out / SWEEP_MARKER).write_text("")
    held = _lock(out)  # a first copy of the sweep, running
    try:
        assert main(["sweep", *TINY, "--out", str(out)]) == 75
        err = capsys.readouterr().err.strip()
        assert err.startswith("reverie: error: another reverie sweep is running in")
        assert len(err.splitlines()) == 1 and not (out / "sweep.json").exists()
    finally:
        held.close()
    assert main(["sweep", *TINY, "--out", str(out)]) == 0


def test_a_rerun_with_other_resumable_settings_says_what_it_does_with_them(tmp_path, capsys):
    """A re-run with another evaluation protocol (or any setting a resume may change)
    skipped its finished trials in silence, and resumed unfinished ones without it: a
    finished trial keeps what it ran with, and says so; an unfinished one resumes with it."""
    out = tmp_path / "sw"
    assert main(["sweep", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sweep", *TINY, "--set", "run.log_every=50", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("every trial finished before with other settings (run.log_every: 250 there, 50 "
            "in this sweep): kept as they are") in err
    folder = out / trial_name("CartPole-v1", [], 0)
    assert "log_every: 250" in (folder / "config.yaml").read_text()
    args = ["sweep", *TINY[:5], "300", *TINY[6:], "--set", "run.log_every=50", "--out", str(out)]
    assert main(args) == 0
    assert ("every trial will resume with this sweep's settings (run.log_every: 250 there, 50 "
            "in this sweep)") in capsys.readouterr().err
    assert "log_every: 50" in (folder / "config.yaml").read_text()

def test_a_linked_sweep_folder_is_refused_at_once(tmp_path, capsys):
    """Not accepted empty and then refused on the re-run: refused from the start."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main(["sweep", *TINY, "--out", str(tmp_path / "link")]) == 2
    assert "is a link" in capsys.readouterr().err
    assert not any((tmp_path / "real").iterdir())


def test_ray_missing_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    rc = main(["sweep", *TINY, "--backend", "ray", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pip install 'reverie[ray]'" in err and len(err.splitlines()) == 1


def test_unreachable_ray_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    t0 = time.time()
    rc = main(["sweep", *TINY, "--backend", "ray", "--address", "127.0.0.1:1",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot reach a Ray cluster at 127.0.0.1:1" in err
    assert len(err.splitlines()) == 1 and time.time() - t0 < 20
    assert not (tmp_path / "r").exists()
    assert main(["sweep", *TINY, "--address", "auto", "--out", str(tmp_path / "r")]) == 2
    assert "--backend ray" in capsys.readouterr().err


def test_an_address_that_answers_but_is_not_ray_is_one_line(tmp_path, capsys):
    """A port that accepts connections but is no Ray cluster (a web server, the dashboard's
    port) kept Ray retrying for minutes with its C++ warnings: refused at once."""
    pytest.importorskip("ray")
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the server's own lines are not the sweep's
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        t0 = time.time()
        rc = main(["sweep", *TINY, "--backend", "ray", "--address", address,
                   "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip()
    finally:
        server.shutdown()
    assert rc == 2 and len(err.splitlines()) == 1 and time.time() - t0 < 20
    assert f"{address} answers, but not as a Ray cluster" in err
    assert not (tmp_path / "r").exists()
    # an IPv6 literal in brackets is an address, not a host name
    assert main(["sweep", *TINY, "--backend", "ray", "--address", "[::1]:1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "Name or service not known" not in capsys.readouterr().err

def test_ray_local_instance_runs_a_2x2_grid(tmp_path, monkeypatch):
    """The one Ray test: a real local instance (2 CPUs, loopback only) started by the sweep,
    whose workers (and so the trials they start) run at this process's priority, not Ray's
    default niceness 15; shut down and its settings put back at the end. Ray's start-up
    makes it the slowest test here."""
    ray = pytest.importorskip("ray")
    from reverie.distributed import ray_backend

    monkeypatch.delenv(ray_backend.NICENESS_ENV, raising=False)
    niceness = []
    real_init = ray_backend._init

    def init_then_probe(*args, **kwargs):  # right after the sweep starts its instance
        restore = real_init(*args, **kwargs)
        niceness.append(ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()))
        return restore

    monkeypatch.setattr(ray_backend, "_init", init_then_probe)
    notices: list[logging.LogRecord] = []  # Ray's "ray" logger does not propagate to root
    notice_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    handler = logging.Handler()
    handler.emit = notices.append
    notice_logger.addHandler(handler)
    out = tmp_path / "ray"
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    summary = run_sweep(Sweep(preset="random", envs=["CartPole-v1"], seeds=2, steps=200,
                              overrides=["run.eval_episodes=0"], grid=["run.train_ratio=8,16"],
                              out=str(out), workers=2), backend="ray")
    assert niceness == [os.nice(0)]
    assert not ray.is_initialized() and ray_backend.NICENESS_ENV not in os.environ
    # Ray's SIGTERM handler, left by ray.shutdown, is gone: a run trained later in this
    # process stops with a checkpoint at a SIGTERM (it killed this test process's suite)
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    # Ray's token-authentication notice (about clusters others can reach) is not printed
    # for this loopback-only instance
    notice_logger.removeHandler(handler)
    assert not [r for r in notices if "Token authentication" in r.getMessage()]
    assert (summary["backend"], summary["trials"], summary["finished"]) == ("ray", 4, 4)
    assert "4 runs, 1 env, 2 groups" in (out / "report" / "report.md").read_text()


def test_a_ray_sweep_stopped_by_sigterm_stops_its_trial_with_its_checkpoint(tmp_path):
    """SIGTERM to a --backend ray sweep hit ray.init's handler (a crash report, exit 1) and
    Ray killed the trial without a checkpoint; and where the sweep was started with SIGINT
    ignored (`nohup ... &`), Ray's workers ignored it too, so ray.cancel's interrupt never
    reached the trial. Now: exit 143, the trial stopped at the step it reached."""
    import subprocess

    pytest.importorskip("ray")
    out = tmp_path / "sw"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "reverie", "sweep", "--preset", "random", "--env",
         "CartPole-v1", "--steps", "100000000", "--set", "run.eval_episodes=0",
         "--set", "run.checkpoint_every=100000000", "--backend", "ray", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # a background job
    folder = out / trial_name("CartPole-v1", [], 0)
    try:
        deadline = time.time() + 180
        while not (folder / "timing.jsonl").exists() or \
                (folder / "timing.jsonl").read_text().count("\n") < 2:
            assert time.time() < deadline and sweep.poll() is None, sweep.stderr.read()
            time.sleep(0.2)
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=150)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith(
        "reverie: sweep stopped by SIGTERM; its running trials stopped with their checkpoints")
    # the trial's own line, as a local sweep prints it (a Ray sweep printed none), and its
    # record in the stopped sweep's sweep.json
    assert f"reverie: trial {folder.name} stopped with its checkpoint" in err, err
    (record,) = sweep_json(out)["results"]
    assert record["status"] == "stopped" and record["attempts"] == 1
    assert record["returncodes"] == [128 + signal.SIGTERM]
    log = (out / "logs" / f"{folder.name}.log").read_text()
    assert "stopped by SIGTERM at env step" in log and "interrupted" not in log, log
    step = json.loads((folder / "checkpoints" / "manifest.json").read_text())[
        "checkpoints"][-1]["step"]
    assert step > 0


def test_a_ray_sweep_without_address_starts_its_own_instance(tmp_path, monkeypatch):
    """Without --address, ray.init() joined a Ray instance already running on the machine and
    refused the sweep's num_cpus for it ("cannot join None"): the sweep starts its own."""
    ray = pytest.importorskip("ray")
    from reverie.distributed import ray_backend

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(UserError, match=r"cannot start a local Ray instance \(stop here\); "
                                        "join a running cluster with --address auto"):
        ray_backend._init(ray, None, 2)
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2


def test_a_trial_that_keeps_crashing_is_reported_failed(tmp_path, monkeypatch, capsys):
    # fault injection (run/checkpoint.py): every attempt is SIGKILLed writing its first
    # checkpoint, so the resume fails the same way and the retries run out
    monkeypatch.setenv("REVERIE_CRASH_WRITING", "ckpt-0000000000.pt")
    out = tmp_path / "crash"
    rc = main(["sweep", *TINY, "--retries", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    summary = json.loads(captured.out)
    assert (summary["trials"], summary["failed"]) == (1, 1)
    (result,) = sweep_json(out)["results"]
    assert result["status"] == "failed" and result["attempts"] == 2 and result["resumes"] == 1
    assert result["returncodes"] == [-signal.SIGKILL, -signal.SIGKILL]
    assert "failed after 2 attempt(s)" in captured.err
    assert "no usable run" in summary["report_error"]


def test_each_agent_of_a_grid_is_checked_against_the_env(tmp_path):
    """The pre-check caches per env *and agent*: random runs CartPole, mbpo does not."""
    from reverie.distributed.grid import make_trials

    for order in ("random,mbpo", "mbpo,random"):
        with pytest.raises(UserError, match="agent mbpo cannot run env 'CartPole-v1'"):
            make_trials("random", ["CartPole-v1"], 1, 50, [], [f"agent={order}"], tmp_path,
                        None)


def test_a_backbone_option_one_grid_point_refuses_stops_the_sweep_before_training(
        tmp_path, capsys):
    """ffm's memory_size under a grid of ffm and gru: the ffm trial trained first, then the
    gru trial failed ("gru takes no options") and the sweep exited 1."""
    out = tmp_path / "sw"
    rc = main(["sweep", "--preset", "cartpole", "--grid", "imagine.world.backbone=ffm,gru",
               "--set", "imagine.world.backbone_kwargs.memory_size=16", "--seeds", "1",
               "--steps", "300", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "gru takes no options" in err
    assert "(trial imagine.world.backbone=gru)" in err
    assert not out.exists()


def test_a_trial_with_a_bad_setting_is_not_retried(tmp_path):
    """Exit code 2 is a mistake in the command: a second attempt would repeat it."""
    from reverie.distributed.grid import Trial
    from reverie.distributed.trial import run_trial

    trial = Trial(name="bad", folder=str(tmp_path / "bad"), preset="random",
                  env="CartPole-v1", seed=0, steps=50, overrides=("run.stpes=5",))
    result = run_trial(trial, retries=2)
    assert (result["status"], result["attempts"], result["returncodes"]) == ("failed", 1, [2])
    assert "did you mean 'run.steps'" in result["error"]


def test_a_trial_whose_folder_is_busy_is_retried_after_a_wait(tmp_path, monkeypatch):
    """Exit 75: another process holds the run folder (a killed sweep's trial still saving its
    checkpoint): the trial is tried again once the folder is free, not failed."""
    from reverie.distributed import trial as trial_module
    from reverie.distributed.grid import Trial
    from reverie.run.folder import lock

    folder = tmp_path / "busy"
    assert main(["train", "--preset", "random", "--no-progress", "--steps", "50", "--set",
                 "run.eval_episodes=0", "--out", str(folder)]) == 0
    trial = Trial(name="busy", folder=str(folder), preset="random", env="CartPole-v1", seed=0,
                  steps=100, overrides=("run.eval_episodes=0",))
    held = lock(folder)
    waits = []

    def wait(seconds, stop):  # the holder lets go while the sweep waits
        waits.append(seconds)
        held.close()

    monkeypatch.setattr(trial_module, "_wait_busy", wait)
    result = trial_module.run_trial(trial, retries=2)
    assert (result["status"], result["returncodes"]) == ("finished", [75, 0])
    assert waits == [trial_module.BUSY_WAIT_S]


def test_rerun_resumes_unfinished_trials(tmp_path, capsys):
    """A trial whose run stopped short of the sweep's budget is resumed, not restarted."""
    out = tmp_path / "grow"
    args = ["sweep", "--preset", "random", "--env", "CartPole-v1", "--set",
            "run.eval_episodes=0", "--out", str(out)]
    assert main([*args, "--steps", "200"]) == 0
    folder = out / trial_name("CartPole-v1", [], 0)
    first = (folder / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main([*args, "--steps", "300"]) == 0  # the same sweep with a larger budget
    (result,) = sweep_json(out)["results"]
    # an extension of a finished run, not a resume after a crash
    assert result["status"] == "finished" and result["extended"] and result["resumes"] == 0
    assert "finished (extended from its earlier run.steps)" in capsys.readouterr().err
    # history kept (but the short run's tail row, whose updates the extension logs anew)
    kept = "".join(r + "\n" for r in first.splitlines() if '"window": "tail"' not in r)
    assert (folder / "metrics.jsonl").read_text().startswith(kept)
    manifest = json.loads((folder / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["step"] == 300
    assert main([*args, "--steps", "100"]) == 0  # a smaller budget: kept, and said so
    (result,) = sweep_json(out)["results"]
    assert result["status"] == "skipped"
    assert "skipped: trained to 300 env steps by an earlier sweep (this one asks 100)" in \
        capsys.readouterr().err
    assert "steps: 300" in (folder / "config.yaml").read_text()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_parent_then_wait_for(parent, child: int, started, what: str, seconds: float) -> None:
    """Once `started()` (the child trains), SIGKILL `parent` and wait up to `seconds` for
    `child` (`what`) to end by itself; a child still alive is killed after the check."""
    try:
        deadline = time.time() + 120
        while not started():
            assert time.time() < deadline and _alive(child), f"the {what} never trained"
            time.sleep(0.1)
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.time() + seconds
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"the {what} outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_trial_ends_when_whoever_started_it_is_killed(tmp_path):
    """`reverie train` started with `child_env()` (as sweep trials and benchmark runs are)
    gets SIGTERM when its parent dies, even by SIGKILL, instead of training on unseen and
    holding its run folder's lock against a rerun."""
    import subprocess
    import textwrap

    run = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys
        from reverie.distributed.trial import child_env
        child = subprocess.Popen(
            [sys.executable, "-m", "reverie", "train", "--preset", "random", "--env",
             "CartPole-v1", "--steps", "100000000", "--set", "run.eval_episodes=0",
             "--out", {str(run)!r}, "--no-progress"], env=child_env())
        print(child.pid, flush=True)
        child.wait()
    """)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    _kill_parent_then_wait_for(parent, child, (run / "config.yaml").exists, "trial", 30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_trial_whose_sweep_is_killed_stops_once_with_its_checkpoint(tmp_path):
    """A trial started from a pool thread (as a sweep's are) whose sweep is killed with
    SIGKILL is told so once per exiting thread of the sweep: it stopped at the first and
    took the second as "stop at once", losing the steps since its last checkpoint. It stops
    with a checkpoint at the step it reached, as after one SIGTERM."""
    import subprocess
    import textwrap

    run, log = tmp_path / "run", tmp_path / "trial.log"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, threading, time
        from reverie.distributed.trial import child_env
        def start():
            with open({str(log)!r}, "w") as f:
                child = subprocess.Popen(
                    [sys.executable, "-m", "reverie", "train", "--preset", "random", "--env",
                     "CartPole-v1", "--steps", "100000000", "--set", "run.eval_episodes=0",
                     "--set", "run.checkpoint_every=100000000", "--out", {str(run)!r},
                     "--no-progress"], env=child_env(), stderr=f, start_new_session=True)
                print(child.pid, flush=True)
                child.wait()
        workers = [threading.Thread(target=start)] + [
            threading.Thread(target=time.sleep, args=(600,), daemon=True) for _ in range(3)]
        for w in workers:
            w.start()
        workers[0].join()
    """)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())

    def logged() -> bool:  # its first logged steps
        timing = run / "timing.jsonl"
        return timing.exists() and timing.read_text().count("\n") >= 2

    _kill_parent_then_wait_for(parent, child, logged, "trial", 60)
    text = log.read_text()
    assert "stopped by SIGTERM at env step" in text and "interrupted" not in text, text
    step = json.loads((run / "checkpoints" / "manifest.json").read_text())[
        "checkpoints"][-1]["step"]
    assert step > 0  # the step it reached, not its first checkpoint's


def test_notes_reverie_train_would_print_are_said_before_the_trials(tmp_path, capsys):
    """A trial that trains nothing is said on the console, not only in its log file."""
    out = tmp_path / "noted"
    assert main(["sweep", *TINY, "--set", "run.prefill=300", "--grid", "run.num_envs=1,3",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        "reverie: note: every trial: run.steps=200 <= run.prefill=300: this run only collects "
        "random data and does no training; raise --steps or lower run.prefill",
        f"reverie: note: trial {trial_name('CartPole-v1', [('run.num_envs', '3')], 0)}: "
        "run.steps=200 is not a multiple of run.num_envs=3 (all envs step together): the run "
        "ends at 201 env steps"]
    # what to expect before the first trial ends (a sweep printed nothing until then)
    assert err[2].startswith("reverie: note: 2 of 2 trial(s) to run (0 finished before), ")
    assert err[2].endswith(f"on local; each writes {out / 'logs'}/<trial>.log and a line here "
                           "when it ends")
    # run again: its finished trials are skipped, and nothing is said of them
    assert main(["sweep", *TINY, "--set", "run.prefill=300", "--grid", "run.num_envs=1,3",
                 "--out", str(out)]) == 0
    assert "reverie: note:" not in capsys.readouterr().err


def test_a_trial_killed_after_its_last_checkpoint_is_resumed_not_started_again(tmp_path,
                                                                               monkeypatch):
    """Killed (exit 137) after writing its final checkpoint: the next attempt is a resume
    (which finishes the last evaluation), not a new run into its own folder (which exits 2)."""
    from reverie.distributed import trial as trial_module
    from reverie.distributed.grid import Trial

    t = Trial(name="t", folder=str(tmp_path / "t"), preset="random", env=None, seed=0,
              steps=100)
    calls = []

    def fake_call(args, log_file):
        calls.append(args)
        folder = Path(t.folder)
        if len(calls) == 1:  # the run trains to its end, then dies
            (folder / "checkpoints").mkdir(parents=True)
            (folder / "config.yaml").write_text("agent: random\n")
            (folder / "checkpoints" / "manifest.json").write_text(
                json.dumps({"checkpoints": [{"step": 100}]}))
            return 137
        return 0

    monkeypatch.setattr(trial_module, "_run_child", fake_call)
    result = trial_module.run_trial(t, retries=2)
    assert [c[:2] for c in calls] == [["train", "--no-progress"], ["train", "--resume"]]
    assert result["status"] == "finished" and result["returncodes"] == [137, 0]
    assert result["resumes"] == 1


def test_a_trials_error_is_its_last_attempts(tmp_path):
    """The log holds every attempt of every sweep: an old attempt's error line was reported
    for a later attempt that was stopped by a signal (no 'error:' in its line)."""
    from reverie.distributed.trial import ATTEMPT_HEADER, _last_error

    log = tmp_path / "t.log"
    log.write_text(f"\n{ATTEMPT_HEADER}1: reverie train ...\n"
                   "reverie: error: env worker 0 died\n"
                   f"\n{ATTEMPT_HEADER}2: reverie train --resume ...\n"
                   "reverie: stopped by SIGTERM at env step 300 with a checkpoint; ...\n")
    assert _last_error(log).startswith("reverie: stopped by SIGTERM at env step 300")
    log.write_text(log.read_text() + f"\n{ATTEMPT_HEADER}3: reverie train --resume ...\n"
                   "progress\nreverie: error: disk full\nmore output\n")
    assert _last_error(log) == "reverie: error: disk full"


def test_a_trial_that_failed_before_writing_its_folder_is_reported_failed_not_skipped(
        tmp_path, monkeypatch, capsys):
    """Its report listed it twice: failed in the Sweep section, and "skipped ...: no such
    file or folder" at the top."""
    from reverie.distributed import sweep as sweep_module

    real = sweep_module.run_trial

    def fail_seed_1(trial, retries, stop=None):
        if trial.seed == 1:  # as a trial whose process died before it made its folder
            return {"name": trial.name, "folder": trial.folder, "status": "failed",
                    "attempts": 1, "resumes": 0, "returncodes": [1], "error": "boom",
                    "wall_s": 0.0}
        return real(trial, retries, stop)

    monkeypatch.setattr(sweep_module, "run_trial", fail_seed_1)
    out = tmp_path / "sw"
    rc = main(["sweep", *TINY, "--seeds", "2", "--out", str(out)])
    capsys.readouterr()
    assert rc == 1
    report = (out / "report" / "report.md").read_text()
    assert "1 run, 1 env" in report and "| boom |" in report
    assert "Skipped" not in report and "no such file" not in report


def test_a_trial_stopped_before_its_final_evaluation_is_resumed_to_run_it(tmp_path):
    """A trial at its budget without its final evaluation (stopped or killed between the
    final checkpoint and the evaluation) counted as done: every later run of the sweep skipped
    it, and its report scored the evaluation before. It is resumed, and the resume runs just
    the evaluation."""
    from reverie.distributed.grid import Trial
    from reverie.distributed.trial import DONE, UNEVALUATED, run_trial, trial_state

    t = Trial(name="t", folder=str(tmp_path / "t"), preset="random", env="CartPole-v1",
              seed=0, steps=150, overrides=("run.eval_every=100", "run.eval_episodes=1"))
    assert run_trial(t, retries=0)["status"] == "finished"
    assert trial_state(t) == DONE
    metrics = Path(t.folder) / "metrics.jsonl"

    def final(text: str) -> list[str]:
        return [r for r in text.splitlines()
                if json.loads(r)["step"] == 150 and "eval/return" in json.loads(r)]

    rows = metrics.read_text()
    assert len(final(rows)) == 1
    metrics.write_text("".join(r + "\n" for r in rows.splitlines() if r not in final(rows)))
    assert trial_state(t) == UNEVALUATED
    again = run_trial(t, retries=0)
    assert (again["status"], again["resumes"], again["returncodes"]) == ("finished", 1, [0])
    assert trial_state(t) == DONE
    assert len(final(metrics.read_text())) == 1
    # a run that does not evaluate is done at its budget
    t0 = Trial(name="t0", folder=str(tmp_path / "t0"), preset="random", env="CartPole-v1",
               seed=0, steps=150, overrides=("run.eval_episodes=0",))
    assert run_trial(t0, retries=0)["status"] == "finished" and trial_state(t0) == DONE
    # this sweep evaluating nothing (a resume would not evaluate): done as it is, not a
    # resume that can never make it done (it failed after every retry)
    metrics.write_text("".join(r + "\n" for r in rows.splitlines() if r not in final(rows)))
    quiet = replace(t, resume_sets=("run.eval_episodes=0",))
    assert trial_state(quiet) == DONE and run_trial(quiet, retries=0)["status"] == "skipped"
    # 4 envs: 250 steps end at 252, the final checkpoint's step; its evaluation missing is
    # seen there too (it was taken for done), and the resume keeps the budget of 250
    t4 = Trial(name="t4", folder=str(tmp_path / "t4"), preset="random", env="CartPole-v1",
               seed=0, steps=250, overrides=("run.eval_every=100", "run.eval_episodes=1",
                                             "run.num_envs=4"))
    assert run_trial(t4, retries=0)["status"] == "finished"
    m4 = Path(t4.folder) / "metrics.jsonl"
    rows4 = m4.read_text().splitlines()
    m4.write_text("".join(r + "\n" for r in rows4 if not (
        json.loads(r)["step"] == 252 and "eval/return" in json.loads(r))))
    assert trial_state(t4) == UNEVALUATED
    assert run_trial(t4, retries=0)["status"] == "finished" and trial_state(t4) == DONE
    assert "steps: 250" in (Path(t4.folder) / "config.yaml").read_text()


def test_a_grid_key_added_with_the_earlier_trials_value_reuses_their_folders(tmp_path,
                                                                             capsys):
    """A rerun that adds a grid key, one of whose values is what the earlier trials ran with
    (here the preset's own batch size), trained those runs again under new names, and the
    report averaged each twice. The grid point with the earlier settings takes the earlier
    trial's folder (skipped: finished) and only the new value trains."""
    out = tmp_path / "s"
    assert main(["sweep", *TINY, "--seeds", "1", "--grid", "run.train_ratio=8,16",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sweep", *TINY, "--seeds", "1", "--grid", "run.train_ratio=8,16",
                 "--grid", "random.batch_size=16,8", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert (summary["trials"], summary["skipped"], summary["finished"]) == (4, 2, 2)
    assert "have the settings of an earlier run's trials" in cap.err
    folders = sorted(p.name for p in out.iterdir() if (p / "config.yaml").exists())
    assert folders == sorted([trial_name("CartPole-v1", [("run.train_ratio", r)], 0)
                              for r in ("8", "16")]
                             + [trial_name("CartPole-v1", [("run.train_ratio", r),
                                                           ("random.batch_size", "8")], 0)
                                for r in ("8", "16")])
    assert "4 runs, 1 env, 4 groups" in (out / "report" / "report.md").read_text()
    assert "earlier_trials" not in sweep_json(out)  # both earlier trials are this grid's
    # a grid over a setting a resume may change reuses only the folder of its own value (it
    # matched every value, the first took the folder and the matching one trained again)
    out2 = tmp_path / "e"
    assert main(["sweep", *TINY, "--seeds", "1", "--out", str(out2)]) == 0  # eval_episodes=0
    assert main(["sweep", *TINY[:-2], "--seeds", "1", "--grid", "run.eval_episodes=1,0",
                 "--out", str(out2)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["skipped"], summary["finished"]) == (1, 1)
    folders = sorted(p.name for p in out2.iterdir() if (p / "config.yaml").exists())
    assert folders == sorted(["CartPole-v1__s0",
                              trial_name("CartPole-v1", [("run.eval_episodes", "1")], 0)])
    # a setting that changes no result (the checkpoint cadence) does not make another run;
    # gridded, it tells the points apart (one keeps the folder, the other trains)
    out3 = tmp_path / "c"
    assert main(["sweep", *TINY, "--seeds", "1", "--out", str(out3)]) == 0
    capsys.readouterr()
    assert main(["sweep", *TINY, "--seeds", "1", "--set", "run.checkpoint_every=100",
                 "--grid", "random.batch_size=16,8", "--out", str(out3)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["skipped"], summary["finished"]) == (1, 1)
    assert main(["sweep", *TINY, "--seeds", "1", "--grid", "run.checkpoint_every=1000,50",
                 "--out", str(out3)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["skipped"], summary["finished"]) == (1, 1)  # 1000: the default's folder


def test_a_ray_trial_still_running_after_the_stop_wait_gets_a_record():
    """A Ray trial that had not stopped STOP_WAIT_S after a stop (Ray's shutdown then ends
    it) got no line and no record: the sweep said nothing about it."""
    from reverie.distributed import ray_backend
    from reverie.distributed.grid import Trial

    class FakeRay:
        class exceptions:
            RayError = RuntimeError

        cancelled: list = []

        def cancel(self, ref, force):
            self.cancelled.append(ref)

        def wait(self, refs, num_returns, timeout):
            assert timeout == ray_backend.STOP_WAIT_S
            return refs[:1], refs[1:]  # the first ended in time, the second did not

        def get(self, ref):
            return {"name": "a", "status": "stopped", "resumes": 0}

    trials = {f"ref-{n}": Trial(name=n, folder=f"s/{n}", preset="random", env=None, seed=0,
                                steps=100) for n in ("a", "b")}
    fake = FakeRay()
    records = ray_backend._stop(fake, trials)
    assert fake.cancelled == ["ref-a", "ref-b"]
    assert [(r["name"], r["status"]) for r in records] == [("a", "stopped"), ("b", "stopped")]
    assert "ended by Ray" in records[1]["note"] and records[1]["folder"] == "s/b"


def test_train_flags_a_sweep_takes_as_settings_are_said_so(capsys):
    """`reverie sweep --backbone gru` was answered "did you mean '--backend'?"."""
    assert main(["sweep", "--agent", "rppo", "--backbone", "gru"]) == 2
    err = capsys.readouterr().err
    assert "a sweep takes the backbone as a setting" in err and "--backend" not in err
