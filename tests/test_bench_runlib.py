"""bench/runlib.py: benchmark runs outlive the checkout through the committed archive."""

from __future__ import annotations

import json
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
        "config.yaml", "machine.jsonl", "metrics.jsonl", "progress.json", "timing.jsonl"]
    live_evals = runlib.evaluations(run)
    assert [s for s, _ in live_evals] == [100, 200]
    assert runlib.locate(run) == run

    shutil.rmtree(run)  # a new checkout: the live folder is gone, the archive is committed
    assert runlib.locate(run) == kept
    assert runlib.progress(kept) == 200
    assert runlib.evaluations(runlib.locate(run)) == live_evals
    monkeypatch.setattr(runlib, "run_child", no_training)
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
    monkeypatch.setattr(runlib, "run_child", no_training)
    assert runlib.ensure_run(folder("T", "b", 0), ARGS, 500, earlier=earlier["T/b/s0"]) == {
        "status": "done", "from_committed_json": True}
    with pytest.raises(AssertionError, match="trained again"):  # short of the steps: trains
        runlib.ensure_run(folder("T", "b", 1), ARGS, 500, earlier=earlier["T/b/s1"])


def test_campaign_sweeps_archives_and_reports(roots):
    """bench/campaign.py: a tiny campaign's sweep is archived as it trains and its report
    reads the live folders, a peer's result file and, once the live folders are gone, the
    archive, to the same summary."""
    import campaign

    c = campaign.Campaign(
        name="tiny", suite="", title="Tiny", tasks=("CartPole-v1",), preset="random",
        steps=200, eval_every=100, eval_episodes=1,
        overrides=("run.eval_every=100", "run.eval_episodes=1"), peers=("PPO",),
        uniform_tasks=("CartPole-v1",))
    campaign.run_imagine(c, "imagine", ["CartPole-v1"], seeds=2, workers=1)
    peer = c.peer_folder("PPO", "CartPole-v1", 0)
    peer.mkdir(parents=True)
    (peer / "external.json").write_text(json.dumps(
        {"agent": "sb3-ppo", "env": "CartPole-v1", "seed": 0, "steps": 200, "algo": "PPO",
         "env_steps": 200, "evals": [[100, 9.0], [200, 11.0]], "wall_s": 1.0}))
    result = campaign.report(c, [0, 1], results=roots / "results")
    summary = result["summary"]["CartPole-v1"]
    assert summary["imagine"]["seeds"] == 2
    assert summary["sb3-ppo"]["final_per_seed"] == [10.0]  # mean of the last two evaluations
    assert result["missing"] == ["CartPole-v1/imagine-uniform/s0",
                                 "CartPole-v1/imagine-uniform/s1", "CartPole-v1/sb3-ppo/s1"]
    assert [s for s, _ in result["runs"]["CartPole-v1/imagine/s1"]["evals"]] == [100, 200]
    assert (roots / "results" / "campaign_tiny.png").stat().st_size > 5000
    from reverie.eval.runs import load_runs  # `reverie report` reads the peer beside reverie

    runs, _ = load_runs([c.runs])
    assert sorted((r.cfg.agent, r.seed) for r in runs) == [("random", 0), ("random", 1),
                                                          ("sb3-ppo", 0)]
    shutil.rmtree(c.runs / "imagine")  # a new checkout: only the archive is left
    again = campaign.report(c, [0, 1], results=roots / "results")
    assert again["summary"] == result["summary"]
    assert again["runs"] == result["runs"]


def test_alternate_takes_turns_and_times_only_the_timed_rounds():
    calls = []
    times = runlib.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5  # A B A B ..., the warm-up rounds too
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)


def test_alternate_flips_the_order_and_times_per_call():
    calls = []
    times = runlib.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             rounds=2, warmup=1, calls=2, flip=True)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def test_spread_is_median_min_max_and_the_values():
    assert runlib.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0,
                                                    "values": [3.0, 1.0, 2.0, 10.0]}
    assert runlib.spread([1.23456, 2.0, 0.5], 2, keep="runs") == {
        "median": 1.23, "min": 0.5, "max": 2.0, "runs": [1.23, 2.0, 0.5]}
    assert runlib.spread([4.0, 2.0], keep=None) == {"median": 3.0, "min": 2.0, "max": 4.0}


def test_every_benchmark_script_imports():
    """The scripts share helpers (runlib, compile, backbones, ...): removing or moving one
    must not leave another script failing at its first line. One process imports them all."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    names = sorted(p.stem for p in bench.glob("*.py"))
    code = ("import importlib, sys\nsys.path.insert(0, sys.argv[1])\nbad = []\n"
            "for n in sys.argv[2:]:\n"
            "    try:\n        importlib.import_module(n)\n"
            "    except Exception as e:\n        bad.append(f'{n}: {e!r}')\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(bench), *names], capture_output=True,
                       text=True, timeout=300, cwd=bench)
    assert len(names) > 20
    assert r.returncode == 0, r.stdout + r.stderr


def test_ctrl_c_stops_a_benchmark_run_with_a_checkpoint(tmp_path):
    """A SIGINT to a benchmark script stops its `reverie train` child cleanly: a checkpoint
    at the step where it stopped (not only the cadence's last one), and one line."""
    import os
    import signal
    import time

    from reverie.run.checkpoint import CheckpointStore

    run = tmp_path / "runs" / "suite" / "CartPole-s0"
    script = tmp_path / "bench_script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(runlib.__file__).parent)!r})\n"
        "import runlib\n"
        f"runlib.ARCHIVE = runlib.Path({str(tmp_path / 'archive')!r})\n"
        f"runlib.RUNS_ROOT = runlib.Path({str(tmp_path / 'runs')!r})\n"
        f"runlib.ensure_run(runlib.Path({str(run)!r}), {ARGS!r}, 200000,\n"
        "                  checkpoint_every=300)\n")
    # its own session: no terminal, so the Ctrl-C comes to the script alone, as `kill -INT`
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        while not any(e.step >= 900 for e in CheckpointStore(run / "checkpoints").entries()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 120
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("bench: stopped (reverie: stopped by SIGINT at env step")
    stopped_at = CheckpointStore(run / "checkpoints").entries()[-1].step
    assert f"at env step {stopped_at} with a checkpoint" in line
    kept = tmp_path / "archive" / "suite" / "CartPole-s0" / "progress.json"  # archived too
    assert json.loads(kept.read_text()) == {"env_steps": stopped_at}


def test_revision_is_the_commit_marked_where_src_has_changes(tmp_path):
    """The one revision helper of bench/ (atari_smoke.py and mbpo_cost.py record it): a
    change outside `src` (a results file) does not mark it, one inside does."""
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "a.py").write_text("x = 1\n")
    (tree / "notes.md").write_text("n\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c",
                               "user.email=t@t", *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    assert runlib.revision(tree / "src") == "?"  # not a git checkout
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    (tree / "notes.md").write_text("changed\n")
    assert runlib.revision(tree / "src") == head
    (tree / "src" / "a.py").write_text("x = 2\n")
    assert runlib.revision(tree / "src") == f"{head}+changes"


def test_a_result_that_only_changes_the_load_average_is_not_rewritten(tmp_path):
    """A report-only call rewrote a committed JSON with nothing new but the load of the moment:
    the tree turned dirty for noise."""
    path = tmp_path / "r" / "x.json"
    result = {"a": (1, 2), "loadavg_1min": 1.5}
    assert runlib.write_result(path, result)  # a new file (and folder)
    before = path.read_text()
    assert not runlib.write_result(path, {**result, "loadavg_1min": 2.5})
    assert path.read_text() == before
    assert runlib.write_result(path, {**result, "a": [1, 3]})  # a real change is written
    assert json.loads(path.read_text())["a"] == [1, 3]


def test_dense_latent_layers_switch_the_one_hot_layers_off_and_back():
    """bench/onehot.py's dense arm and the compute bound's dense count: inside, a layer given
    the one-hot's columns takes the dense product (bit for bit); after, the column sums."""
    import torch
    import torch.nn.functional as F

    from reverie.nets import mlp, onehot
    from reverie.nets.mlp import MLP
    from reverie.world import latent

    torch.manual_seed(0)
    net = MLP(4 * 8 + 3, 5, 16, 1, onehot_width=4 * 8)
    idx = torch.randint(8, (6, 4))
    x = torch.cat([F.one_hot(idx, 8).flatten(-2).float(), torch.randn(6, 3)], -1)
    index = onehot.onehot_rows(idx, 8)
    calls = []
    real = onehot.onehot_linear
    mlp.onehot_linear = lambda *a: calls.append(1) or real(*a)
    try:
        with runlib.dense_latent_layers():
            assert torch.equal(net(x, index), net(x)) and not calls
        net(x, index)
        assert calls
    finally:
        mlp.onehot_linear = real
    assert mlp.use_onehot is onehot.use_onehot and latent.use_onehot is onehot.use_onehot
