"""Runs survive SIGKILL (also mid-checkpoint), resume exactly, and reproduce bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reverie.run.checkpoint import CheckpointStore
from tiny import TINY_MODEL

RANDOM = ["--preset", "random", "--no-progress", "--set", "run.checkpoint_every=300",
          "--set", "run.log_every=100", "--set", "run.eval_every=700",
          "--set", "run.eval_episodes=1"]


def _default_signals() -> None:
    """In the child: Ctrl-C as in a terminal (a test run as a background job ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def reverie(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "reverie", *args]
    full_env = {**os.environ, **(env or {})}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, preexec_fn=_default_signals)


def metrics(run: Path) -> str:
    return (run / "metrics.jsonl").read_text()


def last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
    return rows[-1]["step"] if rows else 0


def kill_when(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120,
              sig: int = signal.SIGKILL) -> None:
    t0 = time.time()
    while last_step(run) < step:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    r = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run))
    assert r.returncode == 0, r.stderr
    return run


def test_same_seed_gives_identical_metrics(reference, tmp_path):
    run = tmp_path / "again"
    r = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)
    other = tmp_path / "seed1"
    r = reverie("train", *RANDOM, "--steps", "2000", "--seed", "1", "--out", str(other))
    assert metrics(other) != metrics(reference)


def test_sigkill_then_resume_matches_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "killed"
    proc = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run),
                   "--set", "run.progress=false", wait=False)
    kill_when(proc, run, 900)
    assert CheckpointStore(run / "checkpoints").entries(), "a checkpoint existed before the kill"
    r = reverie("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["env_steps"] == 2000
    # the resumed run keeps the checkpoint cadence: it saves at the same steps
    saved = [e.step for e in CheckpointStore(run / "checkpoints").entries()]
    assert saved == [e.step for e in CheckpointStore(reference / "checkpoints").entries()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_with_a_checkpoint_and_loses_nothing(reference, tmp_path, sig):
    """The first signal ends the run after the current env step with a checkpoint there; the
    resume continues from it and equals the uninterrupted
    run, saving at the cadence's steps again."""
    run = tmp_path / "stopped"
    proc = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run), wait=False)
    kill_when(proc, run, 900, sig=sig)
    err = proc.stderr.read()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err  # the shell's code for the signal, not 2
    assert f"stopped by {name} at env step" in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # asked for, so not said as an error
    assert last.startswith(f"reverie: stopped by {name}") and "error" not in last
    stopped_at = CheckpointStore(run / "checkpoints").entries()[-1].step
    assert f"at env step {stopped_at} with a checkpoint" in err
    assert 900 <= stopped_at < 2000  # where the signal landed: usually between two of the
    # cadence's checkpoints (the log is flushed at those, so the signal may come just after)
    assert (run / "curve.png").is_file()  # plotted as the run went and at the stop
    r = reverie("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)
    saved = {e.step for e in CheckpointStore(run / "checkpoints").entries()}
    assert saved - {stopped_at} == {e.step for e in
                                    CheckpointStore(reference / "checkpoints").entries()}


def test_stop_on_signal_asks_once_then_interrupts_and_restores_handlers():
    from reverie.run.stop import StopOnSignal

    # raise_signal: to this thread, so the handler has run when the call returns (os.kill of
    # the pid may land on another of the process's threads and trip it a little later)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        seen = []
        with StopOnSignal(seen.append) as stop:
            assert stop.requested is None
            signal.raise_signal(signal.SIGINT)
            assert stop.requested == "SIGINT" and seen == ["SIGINT"]
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)  # the second one, of either kind
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored, as in a background job
        with StopOnSignal() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.requested is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 here")
def test_a_dead_parents_signal_asks_once_however_often_it_comes(monkeypatch):
    """A sweep's trial hears of its sweep's death once per exiting thread of the sweep: the
    first asks for a stop as SIGTERM would, the repeats (during the run and after, while it
    saves) are ignored instead of meaning "stop at once"; a real SIGTERM still does."""
    from reverie.run import stop

    monkeypatch.setattr(stop, "follows_parent", True)
    previous = signal.getsignal(stop.PARENT_GONE)
    try:
        seen = []
        with stop.StopOnSignal(seen.append) as s:
            signal.raise_signal(stop.PARENT_GONE)
            signal.raise_signal(stop.PARENT_GONE)  # no KeyboardInterrupt
            assert s.requested == "SIGTERM" and seen == ["SIGTERM"]
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(stop.PARENT_GONE) is signal.SIG_IGN  # after the run too
        signal.raise_signal(stop.PARENT_GONE)  # ignored: the process lives on
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(stop.PARENT_GONE, previous)


def test_kill_while_writing_a_checkpoint(reference, tmp_path):
    run = tmp_path / "midwrite"
    target = CheckpointStore(reference / "checkpoints").entries()[-2]
    r = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run),
                env={"REVERIE_CRASH_WRITING": target.file})
    assert r.returncode == -signal.SIGKILL
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert f".{target.file}.tmp" in files  # the half-written file never became a checkpoint
    assert CheckpointStore(run / "checkpoints").entries()[-1].step < target.step
    r = reverie("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)


def test_truncated_checkpoint_falls_back_to_previous(reference, tmp_path):
    import shutil

    run = tmp_path / "trunc"
    shutil.copytree(reference, run)
    store = CheckpointStore(run / "checkpoints")
    entries = store.entries()
    newest = run / "checkpoints" / entries[-1].file
    newest.write_bytes(newest.read_bytes()[:1000])
    payload, entry, warnings = store.load_latest()
    assert entry.step == entries[-2].step
    assert any("corrupt or truncated" in w for w in warnings)
    assert payload["counters"]["env_steps"] == entries[-2].step


TINY_IMAGINE = ["--preset", "cartpole", "--backbone", "gru", "--no-progress",
                *(x for o in TINY_MODEL for x in ("--set", o)),
                "--set", "run.train_ratio=16", "--set", "run.prefill=100",
                "--set", "run.checkpoint_every=150", "--set", "run.log_every=50",
                "--set", "run.eval_every=300", "--set", "run.eval_episodes=1",
                "--set", "run.threads=1", "--steps", "500"]


def test_world_model_agent_resumes_bit_for_bit(tmp_path):
    """The learning agent too: model, optimisers, DFS counters and RNGs all round-trip."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = reverie("train", *TINY_IMAGINE, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in metrics(ref).splitlines()]
    assert any("wm/loss" in row for row in rows)  # it trained, so weights matter below
    proc = reverie("train", *TINY_IMAGINE, "--out", str(killed), wait=False)
    kill_when(proc, killed, 320)
    r = reverie("train", "--resume", str(killed), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert metrics(killed) == metrics(ref)
    # stopped with Ctrl-C mid-training: the checkpoint of that step resumes exactly too
    stopped = tmp_path / "stopped"
    proc = reverie("train", *TINY_IMAGINE, "--out", str(stopped), wait=False)
    kill_when(proc, stopped, 320, sig=signal.SIGINT)
    assert proc.returncode == 130 and "with a checkpoint" in proc.stderr.read()
    r = reverie("train", "--resume", str(stopped), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert metrics(stopped) == metrics(ref)


def test_finished_run_can_be_extended(tmp_path):
    run = tmp_path / "ext"
    assert reverie("train", *RANDOM, "--steps", "300", "--out", str(run)).returncode == 0
    r = reverie("train", "--resume", str(run), "--steps", "600", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["env_steps"] == 600
    assert "steps: 600" in (run / "config.yaml").read_text()  # a later resume keeps it
    r = reverie("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0 and "already complete at 600" in r.stderr
    config = (run / "config.yaml").read_text()
    r = reverie("train", "--resume", str(run), "--steps", "100", "--no-progress")
    # said as what it is (it was "already complete ...; raise --steps", not naming the 100)
    assert r.returncode == 0 and ("--steps 100 is below the 600 env steps of this complete "
                                  "run: nothing to train") in r.stderr
    assert (run / "config.yaml").read_text() == config  # the budget stays 600, not 100


def test_kill_before_the_first_checkpoint_starts_over(reference, tmp_path):
    run = tmp_path / "early"
    r = reverie("train", *RANDOM, "--steps", "2000", "--out", str(run),
                env={"REVERIE_CRASH_WRITING": "ckpt-0000000000.pt"})
    assert r.returncode == -signal.SIGKILL
    assert not CheckpointStore(run / "checkpoints").entries()
    r = reverie("train", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "starting the run over" in r.stderr
    assert metrics(run) == metrics(reference)


def test_a_run_in_use_cannot_be_resumed_twice(reference, tmp_path):
    import shutil

    from reverie.run.folder import lock as lock_run

    run = tmp_path / "busy"
    shutil.copytree(reference, run)
    held = lock_run(run)  # as a still-running training process would hold it
    try:
        r = reverie("train", "--resume", str(run), "--no-progress")
    finally:
        held.close()
    assert r.returncode == 75 and "in use by another reverie process" in r.stderr
    assert metrics(run) == metrics(reference)  # nothing was touched


def test_a_stop_in_the_budgets_last_env_step_is_a_stop_before_the_final_evaluation(
        tmp_path, monkeypatch, capsys):
    """A stop that landed in the budget's last env step skipped the final evaluation (off the
    evaluation cadence, after the final checkpoint) with a note and exit code 0: a sweep then
    recorded the trial finished and skipped it ever after, its report scoring the evaluation
    before. It is a stop (the signal's exit code, one line naming the resume), and the resume
    runs the evaluation, whose row equals an uninterrupted run's."""
    from reverie.cli import main
    from reverie.run.collector import Collector

    args = ["train", *RANDOM, "--steps", "250", "--set", "run.eval_every=200"]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    step = Collector.step
    calls = [0]

    def step_then_stop(self, action):
        out = step(self, action)
        calls[0] += 1
        if calls[0] == 250:  # the budget's last env step (one env)
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Collector, "step", step_then_stop)
    run = tmp_path / "stopped"
    capsys.readouterr()
    assert main([*args, "--out", str(run)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"reverie: stopped by SIGTERM at env step 250 before its final "
                       f"evaluation; run it with `reverie train --resume {run}`")
    assert CheckpointStore(run / "checkpoints").entries()[-1].step == 250
    assert not any(r["step"] == 250 and "eval/return" in r
                   for r in map(json.loads, metrics(run).splitlines()))
    monkeypatch.setattr(Collector, "step", step)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metrics(run) == metrics(ref)  # the evaluation, then the tail row, as uninterrupted
    final = [json.loads(x) for x in metrics(ref).splitlines() if '"eval/return"' in x]
    assert [(r["step"], r.get("eval")) for r in final] == [(200, None), (250, "end")]
    # a resume to a lower --steps of a run stopped midway evaluates nothing (its agent there
    # is not its final one): the run then ends as the uninterrupted one
    run = tmp_path / "midway"
    calls[0] = 0
    monkeypatch.setattr(Collector, "step", step_then_stop)
    assert main([*args, "--steps", "400", "--out", str(run)]) == 128 + signal.SIGTERM
    monkeypatch.setattr(Collector, "step", step)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "240", "--no-progress"]) == 0
    assert "evaluating" not in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    ref400 = tmp_path / "ref400"
    assert main([*args, "--steps", "400", "--out", str(ref400)]) == 0
    assert metrics(run) == metrics(ref400)


def test_a_run_with_its_replay_in_memory_resumes_only_for_its_final_evaluation(
        tmp_path, monkeypatch, capsys):
    """replay.on_disk=false: a resume that would train on is refused (the replay died with
    the process), in one line with exit code 2 and nothing changed; one at the budget, whose
    final evaluation alone is due (stopped between the final checkpoint and the evaluation),
    was refused too though it needs no replay data: it runs the evaluation, as uninterrupted."""
    from reverie.cli import main
    from reverie.run.collector import Collector

    args = ["train", *RANDOM, "--steps", "250", "--set", "run.eval_every=200",
            "--set", "replay.on_disk=false"]
    ref = tmp_path / "ref"
    capsys.readouterr()
    assert main([*args, "--out", str(ref)]) == 0
    assert ("note: replay.on_disk=false keeps the replay in memory: if this run is stopped or "
            "crashes, it cannot be resumed to train on") in capsys.readouterr().err
    step = Collector.step

    def stop_at(n):
        calls = [0]

        def step_then_stop(self, action):
            out = step(self, action)
            calls[0] += 1
            if calls[0] == n:
                signal.raise_signal(signal.SIGTERM)
            return out
        return step_then_stop

    midway = tmp_path / "midway"
    monkeypatch.setattr(Collector, "step", stop_at(150))
    capsys.readouterr()
    assert main([*args, "--out", str(midway)]) == 128 + signal.SIGTERM
    monkeypatch.setattr(Collector, "step", step)
    # the stop's line named the resume that is refused; it says why there is none
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "reverie: stopped by SIGTERM at env step 150 with a checkpoint; the run cannot be "
        "continued: its replay was kept in memory (replay.on_disk=false); its checkpoint is "
        "for `reverie eval` and `watch`")
    before = metrics(midway)
    for steps in ([], ["--steps", "100"]):  # a lowered budget would not train, but then...
        assert main(["train", "--resume", str(midway), "--no-progress", *steps]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "replay in memory (replay.on_disk=false)" in err[0]
        assert err[0].endswith("start a new run in another folder (--out), with its replay "
                               "on disk (the default)")
        assert metrics(midway) == before
    run = tmp_path / "stopped"
    monkeypatch.setattr(Collector, "step", stop_at(250))  # the budget's last env step
    assert main([*args, "--out", str(run)]) == 128 + signal.SIGTERM
    monkeypatch.setattr(Collector, "step", step)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metrics(run) == metrics(ref)
    # what it does, not "run already complete ...; raise --steps" before evaluating
    assert capsys.readouterr().err.strip().splitlines()[0] == (
        "reverie: the run trained to its end (250 env steps); evaluating its final agent, "
        "which the run did not evaluate")
    # complete: it says so without naming an extension, which would be refused
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "reverie: run already complete at 250 env steps; its replay was kept in memory "
        "(replay.on_disk=false): it cannot be extended")
    assert main(["train", "--resume", str(run), "--no-progress", "--steps", "300"]) == 2


def test_every_counters_row_counts_the_episodes_that_ended_by_its_step(tmp_path):
    """The log row of a step where an episode ended said one episode fewer than the episode
    rows up to that step (the episodes were counted after the row was written)."""
    from reverie.cli import main

    run = tmp_path / "run"
    assert main(["train", *RANDOM, "--steps", "300", "--set", "run.log_every=1",
                 "--out", str(run)]) == 0
    rows = [json.loads(x) for x in metrics(run).splitlines()]
    ends = [r["step"] for r in rows if "episode/return" in r]
    counted = [r for r in rows if "episodes" in r]
    assert len(counted) == 300 and len(ends) >= 5
    assert all(r["episodes"] == sum(s <= r["step"] for s in ends) for r in counted)


def test_a_run_killed_before_its_tail_row_gets_it_from_the_resume(tmp_path):
    """Killed after its final checkpoint and before the row of its last updates (no final
    evaluation to run): the resume wrote nothing (and once it wrote the row, it crashed on a
    setting it had not read yet). It writes the row, as the uninterrupted run did."""
    from reverie.cli import main

    ref = tmp_path / "ref"
    args = ["train", "--preset", "random", "--no-progress", "--steps", "250",
            "--set", "run.log_every=100", "--set", "run.eval_episodes=0"]
    assert main([*args, "--out", str(ref)]) == 0
    rows = metrics(ref).splitlines()
    assert '"window": "tail"' in rows[-1]
    run = tmp_path / "killed"
    shutil.copytree(ref, run)
    (run / "metrics.jsonl").write_text("".join(x + "\n" for x in rows[:-1]))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert metrics(run) == metrics(ref)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # written once
    assert metrics(run) == metrics(ref)
