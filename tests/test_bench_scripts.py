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
