"""The benchmark scripts' own bookkeeping (bench/*.py), where a mistake would mislabel runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_coplanner_bench_trusts_a_committed_summary_only_for_todays_flags(tmp_path,
                                                                          monkeypatch):
    path = Path(__file__).parents[1] / "bench" / "coplanner.py"
    spec = importlib.util.spec_from_file_location("bench_coplanner", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "locate", lambda run: tmp_path / "none")  # no run folder here
    summary = {"pendulum": {"mbpo": {"seeds": 3}, "imagine": {"seeds": 3}}}
    methods = {**bench.METHODS, "imagine": ["--preset", "dmc-proprio"]}  # an older setting
    (tmp_path / "coplanner.json").write_text(json.dumps({"summary": summary,
                                                         "methods": methods}))
    assert bench.earlier_summary("pendulum", "mbpo", [0, 1, 2]) == {"seeds": 3}
    assert bench.earlier_summary("pendulum", "imagine", [0, 1, 2]) is None
    assert bench.earlier_summary("pendulum", "mbpo", [0, 1, 2, 3]) is None  # too few seeds


def _bench_module(name: str):
    path = Path(__file__).parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_atari_alternation_labels_each_side_by_its_code_and_sets(tmp_path, monkeypatch):
    """An alternation of two settings of one tree says which --set each row ran with; one of
    an older tree says its commit; the compute bound is read against this tree's median."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    smoke, tables = _bench_module("atari_smoke"), _bench_module("tables")
    cmd = smoke.command(Path("/tmp/x"), 12, 2, ["run.compile=on"])
    assert cmd[cmd.index("run.compile=on") - 1] == "--set" and cmd[-3:] == ["--out", "/tmp/x",
                                                                          "--no-progress"]
    assert "run.compile=on" not in smoke.command(Path("/tmp/x"), 12, 2)
    spread = {"median": 2.0, "min": 1.9, "max": 2.1, "rounds": [2.0]}
    report = {"command": ["reverie", "train"], "rounds": 1, "timed": "updates 6-13",
              "torch_threads": 2, "loadavg_1min": [1.0], "current_commit": "abc1234",
              "seconds_per_update": {"baseline": {**spread, "median": 3.0}, "current": spread},
              "speedup_baseline_over_current": {**spread, "median": 1.5},
              "compute_bound": {"flops_per_update": 10**12, "matmul_peak_flops": 5e11,
                                "peak_source": "test", "min_seconds_per_update": 1.0}}
    two_sets = {**report, "baseline_commit": "abc1234", "baseline_sets": ["run.compile=auto"],
                "current_sets": ["run.compile=on"]}
    (tmp_path / "atari_compile_ab.json").write_text(json.dumps(two_sets))
    table = tables.atari_ab_table(tmp_path, "atari_compile_ab")
    assert "| this tree (commit abc1234), `--set run.compile=auto` | 3.00" in table
    assert "| this tree (commit abc1234), `--set run.compile=on` | 2.00" in table
    assert "median 1.50x" in table and "2.00 s per update is 0.50 of peak" in table
    (tmp_path / "atari_ab.json").write_text(json.dumps({**report, "baseline_commit": "7fb615e"}))
    table = tables.atari_ab_table(tmp_path)
    assert "| commit 7fb615e | 3.00" in table and "| this tree (commit abc1234) | 2.00" in table
    assert "each side adds its own" not in table  # no --sets on either side
    # a worktree of this very commit (or no git at all) is still the other tree
    (tmp_path / "atari_ab.json").write_text(json.dumps(
        {**report, "baseline_commit": "abc1234", "baseline_is_this_tree": False}))
    assert "| commit abc1234 | 3.00" in tables.atari_ab_table(tmp_path)
    # the environment: the baseline side's own variables label its row; the variables the
    # script was started with are said once, for both sides
    spin = {**report, "baseline_commit": "abc1234", "baseline_env": {"GOMP_SPINCOUNT": "300000"},
            "openmp_env": {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "PASSIVE"}}
    (tmp_path / "atari_spin_ab.json").write_text(json.dumps(spin))
    table = tables.atari_ab_table(tmp_path, "atari_spin_ab")
    assert ("| this tree (commit abc1234), environment `GOMP_SPINCOUNT=300000` | 3.00"
            in table)
    assert "| this tree (commit abc1234) | 2.00" in table
    assert "started with `OMP_WAIT_POLICY=PASSIVE` in the environment" in table
    assert "GOMP_SPINCOUNT=None" not in table
    smoke = {"command": ["reverie", "train"], "env_steps": 1012, "grad_steps": 13,
             "seconds_per_update": 2.0, "full_protocol_hours_extrapolated": 55.6,
             "full_protocol_days_extrapolated": 2.3, "torch_threads": 2, "timed": "updates 6 on",
             "loadavg_1min": [1.0, 1.2], "compute_bound": report["compute_bound"],
             "breakdown": {"updates": 8, "skipped_updates": 5, "seconds_per_update": 2.1,
                           "loadavg_1min": 1.1,
                           "ms_per_update": {"imagination": 1050.0, "world-model step": 1000.0,
                                             "logging": 0.5},
                           "share": {"imagination": 0.5, "world-model step": 0.476,
                                     "logging": 0.0002}}}
    (tmp_path / "atari_smoke.json").write_text(json.dumps(smoke))
    table = tables.atari_table(tmp_path)
    assert "8 updates from update 6 on, 2.10 s each" in table
    assert "imagination 1.05 s (50%), world-model step 1.00 s (48%)" in table
    assert "logging" not in table  # parts under 1% are left out


def test_atari_compute_bound_uses_a_peak_of_the_runs_own_thread_count(tmp_path, monkeypatch):
    """backbones.json's peak was measured on 2 threads: it bounds a run on 2 threads, and a
    run on 1 thread gets a peak measured on 1 thread, each named in `peak_source`."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    import torch

    import backbones
    import runlib
    import throughput

    smoke = _bench_module("atari_smoke")
    (tmp_path / "backbones.json").write_text(json.dumps(
        {"matmul_peak_flops": 4e11, "machine": {"torch_threads": 2}}))
    monkeypatch.setattr(throughput, "RESULTS", tmp_path)
    monkeypatch.setattr(runlib, "update_flops", lambda preset, overrides: 10**12)
    measured_on = []

    def best_matmul_peak() -> float:  # the measurement, without its seconds of GEMMs
        measured_on.append(torch.get_num_threads())
        return 1e11

    monkeypatch.setattr(backbones, "best_matmul_peak", best_matmul_peak)
    before = torch.get_num_threads()
    bound = smoke.compute_bound(2)
    assert bound["peak_source"] == "bench/results/backbones.json, 2 threads"
    assert bound["min_seconds_per_update"] == 2.5 and measured_on == []
    bound = smoke.compute_bound(1)
    assert bound["peak_source"] == "measured now, 1 thread" and measured_on == [1]
    assert bound["min_seconds_per_update"] == 10.0 and torch.get_num_threads() == before
    # --bound-only: each JSON at the thread count its runs recorded, not --threads'
    report = tmp_path / "atari_x.json"
    report.write_text(json.dumps({"torch_threads": 1, "seconds_per_update": 20.0}))
    bound = smoke.with_bound(report, 2)["compute_bound"]
    assert bound["peak_source"] == "measured now, 1 thread" and bound["fraction_of_peak"] == 0.5


def test_the_breakdown_times_the_replay_made_when_training_starts(monkeypatch):
    """reverie_breakdown wrapped trainer.replay.sample right after building the Trainer; the
    replay is made when train() starts now, so it failed on None: it wraps it then."""
    from reverie.run import driver
    from tiny import TINY_MODEL

    # the breakdown turns off the driver's curve.png for good (a bench process): put it back
    monkeypatch.setattr(driver, "plot_curve", driver.plot_curve)

    throughput = _bench_module("throughput")
    out = throughput.reverie_breakdown(
        {}, 1, "gru", matched=False, steps=160,
        overrides=(*TINY_MODEL, "run.prefill=100", "run.train_ratio=16", "replay.on_disk=false"))
    assert out["updates"] > 0 and out["ms_per_update"]["replay sample"] > 0


def test_atari_alternation_gives_the_baseline_side_its_environment(tmp_path, monkeypatch):
    """--baseline-env: the baseline side's runs get the variables, the current side's do
    not; the JSON records them and the variables the script was started with."""
    import argparse

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    smoke = _bench_module("atari_smoke")
    import runlib  # bench/runlib.py, as the script imports it

    monkeypatch.setattr(runlib, "revision", lambda src: "abc1234")
    envs = []
    monkeypatch.setattr(smoke.subprocess, "run",
                        lambda cmd, check, env: envs.append((cmd[cmd.index("--out") + 1], env)))
    monkeypatch.setattr(smoke, "summarise", lambda *a: {"seconds_per_update": 2.0})
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    args = argparse.Namespace(baseline_src=None, baseline_set=None, current_set=None,
                              baseline_env=["GOMP_SPINCOUNT=300000", "X=a=b"], rounds=2,
                              out=str(tmp_path / "run"), updates=2, threads=2)
    result = smoke.alternate(args)
    sides = [Path(out).name for out, _ in envs]
    assert sides == ["atari-ab-current", "atari-ab-baseline", "atari-ab-baseline",
                     "atari-ab-current"]
    for out, env in envs:
        baseline = out.endswith("baseline")
        assert env["GOMP_SPINCOUNT"] == ("300000" if baseline else "1000")
        assert env.get("X") == ("a=b" if baseline else None)
    assert result["baseline_env"] == {"GOMP_SPINCOUNT": "300000", "X": "a=b"}
    assert result["openmp_env"]["GOMP_SPINCOUNT"] == "1000"


def test_atari_smoke_refuses_a_baseline_env_without_a_name(tmp_path, monkeypatch, capsys):
    """--baseline-env takes NAME=VALUE: anything else is a one-line usage error (exit 2)
    before any run starts; NAME=VALUE alone is an alternation (--name is allowed)."""
    import pytest

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    smoke = _bench_module("atari_smoke")
    monkeypatch.setattr(smoke, "alternate", lambda args: pytest.fail("must not run"))
    for bad in ("GOMP_SPINCOUNT", "=300000"):
        monkeypatch.setattr("sys.argv", ["atari_smoke.py", "--baseline-env", bad])
        with pytest.raises(SystemExit) as exit_:
            smoke.main()
        assert exit_.value.code == 2
        assert "give NAME=VALUE" in capsys.readouterr().err
    ran = []
    monkeypatch.setattr(smoke, "alternate",
                        lambda args: ran.append(args.baseline_env) or {"rounds": 1})
    monkeypatch.setattr(smoke, "with_bound", lambda path, threads: json.loads(path.read_text()))
    monkeypatch.setattr(smoke, "RESULTS", tmp_path)
    monkeypatch.setattr("sys.argv", ["atari_smoke.py", "--baseline-env", "X=1", "--name", "t"])
    smoke.main()
    assert ran == [["X=1"]]
    assert json.loads((tmp_path / "t.json").read_text()) == {"rounds": 1}
