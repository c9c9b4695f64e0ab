"""bench/runlib.py: benchmark runs outlive the checkout through the committed archive."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reverie.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import runlib  # noqa: E402

ARGS = ["--preset", "random", "--env", "CartPole-v1", "--seed", "0",
        "--set", "run.eval_every=100", "--set", "run.eval_episodes=1"]


@pytest.fixture()
def roots(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(runlib, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(runlib, "ARCHIVE", tmp_path / "results" / "runs")
    return tmp_path


def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")


def test_finished_run_is_archived_read_back_and_not_retrained(roots, monkeypatch, capsys):
    run = roots / "runs" / "suite" / "CartPole-s0"
    assert runlib.ensure_run(run, ARGS, 200)["status"] == "trained"
    kept = roots / "results" / "runs" / "suite" / "CartPole-s0"
    assert sorted(p.name for p in kept.iterdir()) == [
        "config.yaml", "metrics.jsonl", "progress.json", "timing.jsonl"]
    live_evals = runlib.evaluations(run)
    assert [s for s, _ in live_evals] == [100, 200]
    assert runlib.locate(run) == run

    shutil.rmtree(run)  # a new checkout: the live folder is gone, the archive is committed
    assert runlib.locate(run) == kept
    assert runlib.progress(kept) == 200
    assert runlib.evaluations(runlib.locate(run)) == live_evals
    monkeypatch.setattr(subprocess, "run", no_training)
    assert runlib.ensure_run(run, ARGS, 200) == {"status": "done", "archived": True}
    # an archived run is a run folder that `reverie report` reads as it is
    assert main(["report", str(kept), "--out", str(roots / "report")]) == 0
    assert "CartPole-v1" in (roots / "report" / "report.md").read_text()


def test_unfinished_archive_starts_a_new_run(roots):
    run = roots / "runs" / "suite" / "CartPole-s0"
    assert runlib.ensure_run(run, ARGS, 100)["status"] == "trained"
    shutil.rmtree(run)
    assert runlib.ensure_run(run, ARGS, 200)["status"] == "trained"
    assert runlib.progress(runlib.archived(run)) == 200
    assert [s for s, _ in runlib.evaluations(runlib.archived(run))] == [100, 200]


def test_runs_known_only_from_the_committed_json(roots, monkeypatch):
    earlier = {"T/b/s0": {"env_steps": 500, "eval_return": [0.5]},
               "T/b/s1": {"env_steps": 200, "eval_return": [0.1]}}

    def folder(task, backbone, seed):
        return roots / "runs" / f"{task}-{backbone}-s{seed}"

    runs, missing = runlib.collect_runs([("T", "b", 0), ("T", "b", 1), ("T", "b", 2)], folder,
                                        lambda path: None, 500, earlier)
    assert runs == {"T/b/s0": {**earlier["T/b/s0"], "from_committed_json": True},
                    "T/b/s1": {**earlier["T/b/s1"], "from_committed_json": True}}
    assert missing == ["T/b/s1 (200 of 500 steps)", "T/b/s2"]
    monkeypatch.setattr(subprocess, "run", no_training)
    assert runlib.ensure_run(folder("T", "b", 0), ARGS, 500, earlier=earlier["T/b/s0"]) == {
        "status": "done", "from_committed_json": True}
    with pytest.raises(AssertionError, match="trained again"):  # short of the steps: trains
        runlib.ensure_run(folder("T", "b", 1), ARGS, 500, earlier=earlier["T/b/s1"])
