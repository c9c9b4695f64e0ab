"""The bundled published POPGym scores (eval/data/popgym_published.json) and their table."""

import copy
import importlib.util
from pathlib import Path

import pytest

from reverie.eval import scores
from reverie.eval.mmer import mmer_from_normalized, normalized_mmer
from reverie.eval.scores import POPGYM_SCALES, popgym_reference, published_popgym

RANGE = {"mmer": (-1.0, 1.0), "normalized": (0.0, 1.0)}


def _values(per_task):
    for task, v in per_task.items():
        yield task, (v["mean"], v.get("std")) if isinstance(v, dict) else (v, None)


def test_json_loads_and_every_source_is_cited_with_its_budget():
    ref = popgym_reference()
    assert ref["sources"], "no source"
    for key, src in ref["sources"].items():
        assert src["url"].startswith("https://"), key
        assert src["paper"] and src["name"], key
        assert isinstance(src["budget_env_steps"], int) and src["budget_env_steps"] > 0, key
        assert src["budget_source"], key
    assert set(ref["scores"]) <= set(ref["sources"])


def test_published_values_are_in_range_and_say_where_they_were_read():
    ref = popgym_reference()
    for key, memories in ref["scores"].items():
        src = ref["sources"][key]
        if any(memories.values()):
            assert src["scale"] in POPGYM_SCALES, key
            assert src["table"], f"{key}: scores without the table they were read in"
        for memory, per_task in memories.items():
            for task, (mean, std) in _values(per_task):
                lo, hi = RANGE[src["scale"]]
                assert lo <= mean <= hi, (key, memory, task, mean)
                assert std is None or std >= 0, (key, memory, task, std)
    for e in published_popgym():
        assert -1.0 <= e.mean <= 1.0


def test_mmer_from_normalized_inverts_normalized_mmer():
    for v in (-1.0, -0.3, 0.0, 0.8, 1.0):
        assert mmer_from_normalized(normalized_mmer(v)) == pytest.approx(v)


def _fake(monkeypatch, scale, values, table="Table 9"):
    ref = copy.deepcopy(popgym_reference())
    ref["sources"]["ffm"].update(scale=scale, table=table)
    ref["scores"]["ffm"] = values
    monkeypatch.setattr(scores, "popgym_reference", lambda: ref)


def test_published_popgym_converts_normalized_scores_to_mmer(monkeypatch):
    _fake(monkeypatch, "normalized", {"gru": {"RepeatFirstEasy": {"mean": 0.75, "std": 0.05},
                                              "CountRecallEasy": 0.25}})
    got = {e.task: e for e in published_popgym()}
    assert got["RepeatFirstEasy"].mean == pytest.approx(0.5)
    assert got["RepeatFirstEasy"].std == pytest.approx(0.1)
    assert got["CountRecallEasy"].mean == pytest.approx(-0.5) and got["CountRecallEasy"].std is None
    assert got["RepeatFirstEasy"].budget_env_steps == popgym_reference()["sources"]["ffm"][
        "budget_env_steps"]
    assert [e.task for e in published_popgym(["CountRecallEasy"])] == ["CountRecallEasy"]


def test_published_popgym_refuses_scores_without_a_scale(monkeypatch):
    _fake(monkeypatch, None, {"gru": {"RepeatFirstEasy": 0.9}})
    with pytest.raises(ValueError, match="scale"):
        published_popgym()


def _tables():
    path = Path(__file__).parents[1] / "bench" / "tables.py"
    spec = importlib.util.spec_from_file_location("bench_tables", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_popgym_published_section(monkeypatch):
    tables = _tables()
    tasks = ["RepeatFirstEasy", "PositionOnlyCartPoleEasy"]
    md = tables.popgym_published_table(tasks, 500_000)
    for src in popgym_reference()["sources"].values():
        assert src["url"] in md
    assert "30x ours" in md
    _fake(monkeypatch, "mmer", {"gru": {"RepeatFirstEasy": {"mean": 0.9, "std": 0.1}}})
    md = tables.popgym_published_table(tasks, 500_000)
    assert "| RepeatFirstEasy | 0.90 ± 0.10 |" in md
    assert "| PositionOnlyCartPoleEasy | – |" in md
    assert "Table 9" in md


def test_tables_popgym_scoring_section_shows_both_scores_of_the_same_runs():
    tables = _tables()
    report = {"tasks": ["RepeatFirstEasy", "CountRecallEasy"], "train_window_steps": [16_384],
              "summary": {
                  "RepeatFirstEasy": {
                      "ffm": {"both": {"seeds": 3, "mmer_mean": 0.9333,
                                       "mmer_train_mean": 0.8582}},
                      "gru": {"mmer_mean": 1.0}},  # no training episodes logged: no row
                  "CountRecallEasy": {
                      "ffm": {"both": {"seeds": 1, "mmer_mean": -0.5, "mmer_train_mean": -0.5}}}}}
    md = tables.popgym_scoring_table(report)
    assert "| RepeatFirstEasy | `ffm` | 3 | 0.93 | 0.86 | -0.07 |" in md  # shown values
    assert "| CountRecallEasy | `ffm` | 1 | -0.50 | -0.50 | +0.00 |" in md
    assert "`gru`" not in md and "16,384 env steps" in md
    report["summary"]["RepeatFirstEasy"].pop("ffm")
    report["summary"].pop("CountRecallEasy")
    assert tables.popgym_scoring_table(report) == ""
