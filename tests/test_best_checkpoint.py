"""checkpoints/best.pt: the agent of a run's best evaluation so far (run.keep_best), kept
across resumes, loaded by `reverie.load(run, best=True)` and `reverie eval/watch --best`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import reverie
from reverie.cli import main
from reverie.config import build_config
from reverie.errors import UserError
from reverie.run.checkpoint import BEST, CheckpointStore, load_file
from reverie.run.driver import Trainer
from tiny import TINY_MODEL

TINY = [*TINY_MODEL, "imagine.world.backbone_kwargs={}", "run.train_ratio=16",
        "run.prefill=100", "run.checkpoint_every=100", "run.eval_every=100",
        "run.eval_episodes=2", "run.keep_checkpoints=10", "run.progress=false",
        "run.threads=1"]


def config(steps: int, extra: list[str] | None = None):
    return build_config("cartpole", TINY + (extra or []), {"backbone": "gru", "steps": steps})


def evaluations(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval/return"]) for r in rows if "eval/return" in r]


def first_best(evals: list[tuple[int, float]]) -> tuple[int, float]:
    best = max(v for _, v in evals)
    return next((s, v) for s, v in evals if v == best)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """Trained to 200 env steps, then resumed to 400: evaluations at 100, 200, 300, 400."""
    out = tmp_path_factory.mktemp("best") / "run"
    Trainer(config(200), out).train()
    summary = Trainer(config(400), out, resume=True).train()
    return out, summary


def test_best_is_the_first_of_the_highest_evaluations_across_a_resume(run):
    out, summary = run
    evals = evaluations(out)
    assert [s for s, _ in evals] == [100, 200, 300, 400]
    step, value = first_best(evals)
    policy = reverie.load(out, best=True)
    assert (policy.step, policy.eval_return) == (step, value)
    assert (summary["best_eval_step"], summary["best_eval_return"]) == (step, round(value, 2))
    # the same agent as the regular checkpoint of that step (evaluated, then checkpointed)
    entry = next(e for e in CheckpointStore(out / "checkpoints").entries() if e.step == step)
    regular = load_file(out / "checkpoints" / entry.file)["agent"]
    best = load_file(out / "checkpoints" / BEST)["agent"]
    for key in ("world", "behavior"):
        for name, tensor in regular[key].items():
            torch.testing.assert_close(best[key][name], tensor, rtol=0, atol=0)
    latest = reverie.load(out)
    assert latest.step == 400 and latest.eval_return is None


def test_loading_past_a_truncated_newest_checkpoint_says_so(run, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    newest = max(CheckpointStore(out / "checkpoints").entries(), key=lambda e: e.step)
    path = out / "checkpoints" / newest.file
    path.write_bytes(path.read_bytes()[:100])
    policy = reverie.load(out)
    assert policy.step < newest.step
    assert f"checkpoint {newest.file} is corrupt or truncated" in capsys.readouterr().err


def test_only_a_higher_evaluation_replaces_the_best(run):
    out, _ = run
    trainer = Trainer(config(400), out, resume=True)
    trainer.run = type("Run", (), {"keep_best": True})()
    before = (out / "checkpoints" / BEST).read_bytes()
    best = trainer.count.best_return
    trainer._keep_if_best(best)  # a tie keeps the earlier agent
    assert (out / "checkpoints" / BEST).read_bytes() == before
    trainer.count.env_steps = 401
    trainer._keep_if_best(best + 1.0)
    replaced = reverie.load(out, best=True)
    assert (replaced.step, replaced.eval_return) == (401, best + 1.0)
    trainer.release()


def test_eval_and_watch_take_best(run, capsys):
    out, _ = run
    best = reverie.load(out, best=True)
    assert main(["eval", str(out), "--best", "--episodes", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best"] is True and result["checkpoint_step"] == best.step
    assert result["training_eval_return"] == best.eval_return
    assert json.loads((out / "eval-best.json").read_text()) == result
    assert not (out / "eval.json").exists()  # the latest's result is a separate file
    assert main(["watch", str(out), "--best", "--steps", "5"]) == 0
    assert (out / "watch-best.gif").read_bytes()[:3] == b"GIF"


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_final_agent_is_evaluated_off_the_cadence_and_an_extension_trains_on_alike(
        tmp_path):
    """A run that ends between evaluations evaluates its final agent (a run shorter than
    run.eval_every used to have none); that evaluation comes after the final checkpoint, so
    extending the run trains exactly as a run to the longer budget from the start."""
    short, straight = tmp_path / "short", tmp_path / "straight"
    Trainer(config(150), short).train()
    assert [s for s, _ in evaluations(short)] == [100, 150]
    assert reverie.load(short, best=True).step in (100, 150)
    summary = Trainer.resume(short, steps=300).train()  # as `reverie train --resume`
    Trainer(config(300), straight).train()
    extra = [r for r in metric_rows(short) if r["step"] == 150 and "eval/return" in r]
    assert len(extra) == 1
    assert [r for r in metric_rows(short) if r not in extra] == metric_rows(straight)
    step, value = first_best(evaluations(short))
    assert (summary["best_eval_step"], summary["best_eval_return"]) == (step, round(value, 2))
    assert reverie.load(short, best=True).step == step
    # a best agent found by that final evaluation is in best.pt only (after the checkpoint):
    # a resume takes a higher return there as the best so far, and keeps its own otherwise
    store = CheckpointStore(short / "checkpoints")
    payload = store.load_best()
    for best_return, adopted in ((1e9, True), (-1e9, False)):
        store.save_best({**payload, "best": {"step": 300, "eval_return": best_return}})
        trainer = Trainer.resume(short)
        assert (trainer.count.best_return == best_return) is adopted
        trainer.release()
    # the final evaluation is still due when the run was stopped or killed before it: a
    # resume of the complete run runs it (and only then)
    rows = (short / "metrics.jsonl").read_text().splitlines()
    (short / "metrics.jsonl").write_text("".join(r + "\n" for r in rows
                                                 if '"step": 300, "eval/return"' not in r))
    Trainer.resume(short).train()
    assert [s for s, _ in evaluations(short)][-1] == 300
    Trainer.resume(short).train()
    assert [s for s, _ in evaluations(short)].count(300) == 1
    # a run shorter than run.eval_every is evaluated once, at its end
    tiny = tmp_path / "tiny"
    Trainer(config(60, ["run.prefill=50"]), tiny).train()
    assert [s for s, _ in evaluations(tiny)] == [60]


def test_no_best_corrupt_best_and_files_get_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    summary = Trainer(config(100, ["run.keep_best=false"]), out).train()
    assert not (out / "checkpoints" / BEST).exists()
    assert (summary["best_eval_step"], summary["best_eval_return"]) == (100, evaluations(out)[0][1])
    capsys.readouterr()  # the training's own notes
    assert main(["eval", str(out), "--best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no best checkpoint" in err and "drop --best" in err and len(err.splitlines()) == 1
    (out / "checkpoints" / BEST).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a reverie checkpoint"):
        reverie.load(out, best=True)
    latest = out / "checkpoints" / CheckpointStore(out / "checkpoints").entries()[-1].file
    with pytest.raises(UserError, match="--best takes a run folder"):
        reverie.load(latest, best=True)
    (out / "checkpoints" / BEST).unlink()
    (out / "checkpoints" / BEST).symlink_to(latest)  # never followed: the run is refused
    with pytest.raises(UserError, match=r"holds a link \(checkpoints/best.pt\)"):
        reverie.load(out, best=True)


def test_a_full_disk_keeps_the_previous_best(tmp_path, monkeypatch):
    import errno

    from reverie.run import checkpoint as ckpt_module

    store = CheckpointStore(tmp_path / "checkpoints")
    first = {"format": ckpt_module.FORMAT, "agent_name": "x", "agent": {},
             "best": {"step": 10, "eval_return": 1.0}}
    store.save_best(first)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        store.save_best({**first, "best": {"step": 20, "eval_return": 2.0}})
    monkeypatch.undo()
    assert store.load_best()["best"] == {"step": 10, "eval_return": 1.0}
    assert sorted(p.name for p in store.folder.iterdir()) == [BEST]  # no temp file left


def test_without_keep_best_the_summary_names_the_best_logged_evaluation(tmp_path):
    """run.keep_best=false keeps no best.pt, but the summary still names the run's best
    evaluation, read from metrics.jsonl: the earliest of equal returns, as best.pt would."""
    out = tmp_path / "run"
    summary = Trainer(config(300, ["run.keep_best=false"]), out).train()
    evals = evaluations(out)
    assert len(evals) == 3 and not (out / "checkpoints" / BEST).exists()  # 100, 200, 300
    step, top = first_best(evals)
    assert step < 300  # here an earlier evaluation than the final one
    assert (summary["best_eval_step"], summary["best_eval_return"]) == (step, round(top, 2))
