"""Progress without a terminal: plain lines, throttled, with steps, rate and ETA."""

from __future__ import annotations

import pytest

from reverie.run.progress import Progress


def test_plain_progress_lines_when_not_a_terminal(capsys):
    with Progress(1000, enabled=True, every_s=0.0) as p:
        p.episode(12.5)
        p.update(250, 50.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reverie: step 250/1000  50.0 steps/s  ETA 0.2 min  return 12.50"]


def test_plain_progress_is_throttled_but_always_prints_the_end(capsys):
    with Progress(100, enabled=True, every_s=3600.0) as p:
        for step in range(1, 101):
            p.update(step, 10.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reverie: step 100/100  10.0 steps/s  ETA 0.0 min"]


def test_the_final_evaluation_is_shown_after_the_last_step(capsys):
    """The run's final evaluation comes after its last step's line: the last line showed the
    evaluation before it (eval -0.36 where the summary said 0.46)."""
    with Progress(100, enabled=True, every_s=3600.0) as p:
        p.evaluation(-0.36)
        for step in range(1, 101):
            p.update(step, 10.0)
        p.evaluation(0.46)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "reverie: step 100/100  10.0 steps/s  ETA 0.0 min  eval 0.46"
    assert len(err) == 2  # mid-run evaluations wait for the next throttled line


def test_the_terminal_bar_keeps_its_numbers_on_80_columns(monkeypatch):
    """On an 80-column terminal rich shrank the step counter to '12345/1…': the bar gives
    way to the numbers."""
    import io

    from rich.console import Console

    monkeypatch.setenv("COLUMNS", "80")
    p = Progress(100000, enabled=True)
    p.episode(-20.0)
    p.evaluation(-21.0)
    p._bar.update(p._task, completed=12345,
                  info="  ".join(p._info(16.5)))
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(p._bar.make_tasks_table(p._bar.tasks))
    line = out.getvalue().rstrip("\n")
    assert "12345/100000" in line and "return -20.00" in line and "eval -21.00" in line
    assert "…" not in line and len(line) <= 80


def test_the_rate_and_eta_follow_the_last_minute_not_the_prefill(capsys, monkeypatch):
    """A fast random prefill (800 steps/s) then training at 2 steps/s: the rate since the
    start said minutes were left where hours were."""
    import reverie.run.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    with Progress(20000, enabled=True, every_s=3600.0) as p:
        step = 0
        for _ in range(10):  # 1,000 prefill steps in 1.25 s
            now[0] += 0.125
            step += 100
            p.update(step, step / now[0])
        for _ in range(200):  # then 2 steps/s for 200 s
            now[0] += 1.0
            step += 2
            p.update(step, step / now[0])
        p._line(step, p._shown[1], force=True)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "2.0 steps/s" in last  # since the start it would be 6.9
    eta_min = float(last.split("ETA ")[1].split(" min")[0])
    assert eta_min == pytest.approx((20000 - step) / 2 / 60, rel=0.02)


def test_the_end_is_one_line_with_the_final_evaluation(capsys):
    """The last step printed twice: first with the evaluation before, then with the final
    one."""
    with Progress(100, enabled=True, every_s=3600.0, final_eval=True) as p:
        p.evaluation(-0.36)
        for step in range(1, 101):
            p.update(step, 10.0)
        p.evaluation(0.46)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reverie: step 100/100  10.0 steps/s  ETA 0.0 min  eval 0.46"]


def test_the_end_line_comes_when_the_last_evaluation_was_the_cadences(capsys):
    """An evaluation of the cadence on the last step comes before that step's update, and
    then no final one follows: the end line waited for one and never came."""
    with Progress(100, enabled=True, every_s=3600.0, final_eval=True) as p:
        for step in range(1, 100):
            p.update(step, 10.0)
        p.evaluation(0.46)  # the cadence's, at step 100, before its update
        p.update(100, 10.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reverie: step 100/100  10.0 steps/s  ETA 0.0 min  eval 0.46"]
