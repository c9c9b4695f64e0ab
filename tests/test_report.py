"""`reverie report`: the statistics on hand-computed values, and reports over run folders."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from reverie.cli import main
from reverie.config import build_config, save_config
from reverie.errors import UserError
from reverie.eval import stats
from reverie.eval.report import write_report
from reverie.eval.runs import load_runs
from reverie.eval.scores import (
    atari_game,
    atari_reference,
    human_normalized,
    published_hns,
    published_rows,
)

# -- statistics -------------------------------------------------------------------------------


def test_iqm_drops_a_quarter_at_each_end():
    assert stats.interquartile_mean([np.arange(1.0, 9.0)]) == pytest.approx(4.5)  # 3,4,5,6
    # pooled over tasks; n=5 drops floor(5/4)=1 at each end, so the outlier has no weight
    assert stats.interquartile_mean([np.array([1.0, 100.0]), np.array([2.0, 3.0, 4.0])]) == \
        pytest.approx(3.0)


def test_mean_and_median_are_over_task_means():
    scores = [np.array([0.0, 2.0]), np.array([4.0]), np.array([10.0, 20.0])]  # means 1, 4, 15
    assert stats.mean_score(scores) == pytest.approx(20 / 3)
    assert stats.median_score(scores) == pytest.approx(4.0)


def test_optimality_gap_clips_at_gamma():
    scores = [np.array([0.5, 1.5]), np.array([2.0])]  # clipped: 0.5, 1 | 1 -> means .75, 1
    assert stats.optimality_gap(scores) == pytest.approx(1 - 0.875)
    assert stats.optimality_gap(scores, gamma=2.0) == pytest.approx(2 - (1.0 + 2.0) / 2)
    control = [np.array([5.0])]  # above the target: no gap, however far above
    assert stats.optimality_gap(control) == 0.0


def test_performance_profile_by_hand():
    scores = [np.array([0.0, 1.0]), np.array([2.0])]
    fn = stats.performance_profile(scores, np.array([0.5, 1.5, 3.0]))
    np.testing.assert_allclose(fn(scores), [(0.5 + 1) / 2, (0 + 1) / 2, 0.0])


@pytest.mark.parametrize("name", list(stats.ESTIMATORS))
def test_batched_estimators_equal_one_replicate_at_a_time(name):
    """The bootstrap evaluates all replicates at once; a plain loop over them must agree."""
    rng = np.random.default_rng(3)
    scores = [rng.normal(size=n) for n in (3, 5, 4)]
    fn = stats.ESTIMATORS[name]
    reps = stats._resample(scores, 50, np.random.default_rng(0))
    batched = fn(reps)
    looped = [float(fn([task[r] for task in reps])) for r in range(50)]
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    # stratified: a resample of a task only ever holds that task's own scores
    for task, drawn in zip(scores, reps):
        assert np.isin(drawn, task).all()


def test_bootstrap_ci_refuses_a_flat_list_of_numbers():
    """[1, 2, 3] read as three tasks of one seed gave an interval of zero width in silence."""
    for flat in ([1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0]), [np.float64(1.0), 2.0]):
        with pytest.raises(ValueError, match=r"one array of seed scores per task, e\.g\."):
            stats.bootstrap_ci(flat, stats.mean_score, reps=10)
        with pytest.raises(ValueError, match="per task"):
            stats.aggregate(flat, reps=10)
    one_task = stats.bootstrap_ci([[1.0, 2.0, 3.0]], stats.mean_score, reps=200)
    assert one_task.low < 2.0 < one_task.high
    two_d = stats.bootstrap_ci(np.array([[1.0, 2.0], [3.0, 5.0]]), stats.mean_score, reps=200)
    assert two_d.value == pytest.approx(2.75) and two_d.low < two_d.high
    ragged = np.empty(2, dtype=object)  # tasks with different numbers of seeds
    ragged[0], ragged[1] = np.array([1.0, 2.0]), np.array([3.0, 5.0, 4.0])
    assert stats.bootstrap_ci(ragged, stats.mean_score, reps=50).value == pytest.approx(2.75)
    gen = (np.array(t) for t in ([1.0, 2.0], [3.0, 5.0]))
    assert stats.bootstrap_ci(gen, stats.mean_score, reps=50).value == pytest.approx(2.75)


def test_bootstrap_ci_contains_the_true_mean_and_covers_about_95_percent():
    rng = np.random.default_rng(0)
    scores = [rng.normal(3.0, 1.0, size=10) for _ in range(5)]
    est = stats.bootstrap_ci(scores, stats.mean_score, reps=2000, seed=0)
    assert est.low < 3.0 < est.high
    assert est.low < est.value < est.high
    assert est.high - est.low == pytest.approx(2 * 1.96 / np.sqrt(50), rel=0.25)
    covered = 0
    for i in range(200):
        data = [rng.normal(3.0, 1.0, size=10) for _ in range(5)]
        e = stats.bootstrap_ci(data, stats.mean_score, reps=400, seed=i)
        covered += e.low < 3.0 < e.high
    assert 0.88 <= covered / 200 <= 0.99


# -- scores -----------------------------------------------------------------------------------


def test_human_normalised_score_by_hand():
    assert human_normalized(16.1, "Breakout") == pytest.approx((16.1 - 1.7) / (30.5 - 1.7))
    assert human_normalized(-20.7, "Pong") == pytest.approx(0.0)
    assert human_normalized(14.6, "Pong") == pytest.approx(1.0)


def test_atari_ids_map_to_games():
    assert atari_game("ALE/MsPacman-v5") == "MsPacman"
    assert atari_game("PongNoFrameskip-v4") == "Pong"
    assert atari_game("ALE/Tetris-v5") is None  # not an Atari100k game
    assert atari_game("CartPole-v1") is None


def test_published_aggregates_match_the_papers():
    for agent, mean, median in (("iris", 1.046, 0.289), ("diamond", 1.459, None)):
        hns = np.array(list(published_hns(agent).values()))
        assert len(hns) == 26
        assert hns.mean() == pytest.approx(mean, abs=1e-3)
        if median is not None:
            assert np.median(hns) == pytest.approx(median, abs=1e-3)


# -- run folders ------------------------------------------------------------------------------


@functools.cache
def _config(preset: str, sets: tuple[str, ...], env: str, steps: int):
    return build_config(preset, list(sets), {"env": env, "steps": steps})


def fake_run(folder: Path, env: str, seed: int, evals: list[float], preset: str = "random",
             sets: tuple[str, ...] = (), every: int = 100) -> Path:
    """A finished run folder as `reverie train` leaves it, without training (fast). Its rows
    log no updates: run.prefill is 0 unless `sets` says otherwise, so that it is not taken
    for a run that ended inside its prefill."""
    folder.mkdir(parents=True)
    if not any(item.startswith("run.prefill=") for item in sets):
        sets = (*sets, "run.prefill=0")
    cfg = _config(preset, sets, env, every * len(evals)).copy()
    cfg.seed = seed
    save_config(cfg, folder / "config.yaml")
    (folder / ".reverie-run").write_text("a reverie run folder\n")
    rows = [{"step": every * (i + 1), "eval/return": v} for i, v in enumerate(evals)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = [{"step": every * (i + 1), "time/env_steps_per_s": 50.0,
               "time/wall": 2.0 * (i + 1)} for i in range(len(evals))]
    (folder / "timing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in timing))
    return folder


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("real") / "run"
    assert main(["train", "--preset", "random", "--no-progress", "--steps", "300",
                 "--set", "run.eval_every=150", "--set", "run.eval_episodes=1",
                 "--out", str(run)]) == 0
    return run


@pytest.mark.filterwarnings("error:constrained_layout not applied")
def test_report_on_one_real_run(real_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(real_run), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "1 run, 1 env, 1 group" in text
    assert "CartPole-v1" in text and "| random |" in text
    for name in ("aggregates", "curves", "sample_efficiency", "profile"):
        assert (out / f"{name}.png").stat().st_size > 5000
        assert f"]({name}.png)" in text
    assert json.loads(capsys.readouterr().out)["skipped"] == 0


def test_a_run_stopped_before_its_final_evaluation_is_said_to_be_scored_early(tmp_path,
                                                                               capsys):
    """A run at its budget without its final evaluation (stopped between the final checkpoint
    and the evaluation) was scored from the evaluation before as if that were its end, in
    silence: the report and the command say so and name the resume that runs it."""
    run = fake_run(tmp_path / "a", "CartPole-v1", 0, [10.0, 20.0], every=100)  # budget 200
    whole = fake_run(tmp_path / "b", "CartPole-v1", 1, [10.0, 30.0], every=100)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n"
                       + json.dumps({"step": 200, "episode/return": 12.0}) + "\n")
    out = tmp_path / "rep"
    # an archive of its logs (no checkpoint: bench/results/runs/) cannot be run
    assert main(["report", str(run), str(whole), "--out", str(out)]) == 0
    line = (f"{run}: ended at 200 env steps without its final evaluation, scored from the one "
            f"at 100; no checkpoint of it is kept to run it")
    text = (out / "report.md").read_text()
    assert f"- {line}" in text and str(whole) + ":" not in text
    assert f"reverie: warning: {line}" in capsys.readouterr().err
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt-0000000200.pt").write_bytes(b"")
    assert main(["report", str(run), str(whole), "--out", str(tmp_path / "rep2")]) == 0
    resumable = line.replace("no checkpoint of it is kept to run it",
                             f"`reverie train --resume {run}` runs it")
    assert f"- {resumable}" in (tmp_path / "rep2" / "report.md").read_text()
    # a replay kept in memory: the resume runs the final evaluation too (it needs no replay
    # data; the report said it could not be resumed)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("on_disk: true", "on_disk: false"))
    assert "on_disk: false" in config.read_text()
    assert main(["report", str(run), str(whole), "--out", str(tmp_path / "rep3")]) == 0
    assert f"- {resumable}" in (tmp_path / "rep3" / "report.md").read_text()
    # ... unless its newest checkpoint is before the end (killed during the final
    # evaluation, which comes before the checkpoint of its step): that resume is refused
    (run / "progress.json").write_text('{"env_steps": 100}\n')
    assert main(["report", str(run), str(whole), "--out", str(tmp_path / "rep4")]) == 0
    assert "- " + line.replace("no checkpoint of it is kept to run it", "its replay was kept "
                               "in memory (replay.on_disk=false) and its newest checkpoint is "
                               "before its end: it cannot be resumed") in \
        (tmp_path / "rep4" / "report.md").read_text()


def test_an_extended_run_scores_as_a_run_trained_to_its_budget_at_once(tmp_path):
    """A run of 250 steps extended to 400 kept its first part's end evaluation (at 250, off the
    eval_every=200 cadence) in metrics.jsonl, and the report counted it: an extra curve point,
    and a higher score where the score is a running maximum (POPGym's MMER). The report leaves
    an end evaluation out once the run has trained past it."""
    from reverie.eval.runs import read_run

    common = ["--preset", "random", "--no-progress", "--set", "run.eval_every=200",
              "--set", "run.eval_episodes=2"]
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    assert main(["train", *common, "--steps", "400", "--out", str(straight)]) == 0
    assert main(["train", *common, "--steps", "250", "--out", str(extended)]) == 0
    assert [p[0] for p in read_run(extended).curve] == [200, 250]  # its own end: scored
    assert main(["train", "--resume", str(extended), "--steps", "400", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (extended / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("eval")) for r in rows if "eval/return" in r] == [
        (200, None), (250, "end"), (400, None)]  # kept in the run's own log
    a, b = read_run(straight), read_run(extended)
    assert b.curve == a.curve and [p[0] for p in b.curve] == [200, 400]
    assert (b.score, b.final_raw) == (a.score, a.final_raw)


def test_a_run_shorter_than_its_log_cadence_that_never_updated_is_flagged(tmp_path, capsys):
    """rppo with a budget below one rollout (no prefill: the prefill rule does not apply) and
    below run.log_every logged no counters row, so the report could not tell that it never
    updated and scored its untrained agent in silence. Such a run writes its tail row."""
    run = tmp_path / "run"
    assert main(["train", "--agent", "rppo", "--env", "CartPole-v1", "--steps", "32",
                 "--no-progress", "--set", "run.num_envs=2", "--set", "run.eval_episodes=1",
                 "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["grad_steps"], r["window"]) for r in rows if "grad_steps" in r] == [
        (32, 0, "tail")]
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "never updated (0 gradient steps" in capsys.readouterr().err


def test_atari_grid_report_scores_hns_beside_published_agents(tmp_path):
    ref = atari_reference()["games"]
    root = tmp_path / "grid"
    for game in ("Pong", "Breakout"):
        for backbone in ("gru", "ffm"):
            for seed in range(3):
                human = ref[game]["human"] if backbone == "ffm" else ref[game]["random"]
                fake_run(root / f"{game}-{backbone}-{seed}", f"ALE/{game}-v5", seed,
                         [ref[game]["random"], human], preset="cartpole",
                         sets=(f"imagine.world.backbone={backbone}",))
    report, warnings = write_report([root], tmp_path / "rep")
    text = report.read_text()
    assert warnings == []
    # human-level runs score 100% HNS with a zero-width interval, random-level 0%
    assert "| imagine/ffm | 2 | 6 | 100.0% [100.0, 100.0] | 100.0% [100.0, 100.0] |" in text
    assert "| imagine/gru | 2 | 6 | 0.0% [0.0, 0.0] |" in text
    storm = published_hns("storm", ["Breakout", "Pong"])
    assert "| STORM (published, 100k steps; 2 games" in text
    assert f"{100 * np.mean(list(storm.values())):.1f}%" in text
    assert "Drama" not in text.split("## Per-task")[0]  # its aggregate is over all 26 games
    assert "| Pong | -20.7 | 14.6 |" in text


def test_drama_aggregate_only_on_all_26_games(tmp_path):
    names = [p.name for p in published_rows(sorted(atari_reference()["games"]))]
    assert names == ["DreamerV3", "STORM", "IRIS", "DIAMOND", "Drama"]
    drama = published_rows(sorted(atari_reference()["games"]))[-1]
    assert drama.values == {"mean": 1.05, "median": 0.27}


def test_hundred_runs_and_group_by(tmp_path):
    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    for i in range(100):
        env = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1"][i % 4]
        ratio = [8, 16][(i // 4) % 2]
        fake_run(root / f"r{i:03d}", env, i // 8, list(rng.normal(size=5)),
                 sets=(f"run.train_ratio={ratio}",))
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--group-by", "run.train_ratio"]) == 0
    text = (out / "report.md").read_text()
    assert "100 runs, 4 envs, 2 groups" in text
    # raw returns are aggregated per env family: here each env is its own
    assert "### return (raw, CartPole-v1)\n" in text
    assert text.count("| train_ratio=8 | 1 | 13 |") == 4  # r000, r008, ... of each env


def test_raw_returns_aggregate_within_a_suite_only(tmp_path):
    for seed in range(2):
        fake_run(tmp_path / f"b{seed}", "minatar:breakout", seed, [1.0, 2.0])
        fake_run(tmp_path / f"a{seed}", "minatar:asterix", seed, [3.0, 4.0])
        fake_run(tmp_path / f"c{seed}", "CartPole-v1", seed, [100.0, 500.0])
    report, _ = write_report([tmp_path], tmp_path / "rep")
    text = report.read_text()
    # stratified over tasks: each task's seeds agree, so the mean of 2 and 4 has no spread
    assert "| random | 2 | 4 | 3 [3, 3] |" in text.split("### return (raw, minatar)")[1]
    assert "| random | 1 | 2 | 500 [500, 500] |" in text.split("### return (raw, CartPole-v1)")[1]


def test_bad_group_key_suggests(tmp_path, real_run, capsys):
    rc = main(["report", str(real_run), "--out", str(tmp_path / "r"), "--group-by",
               "run.trainratio"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "did you mean 'run.train_ratio'" in err and len(err.splitlines()) == 1
    # another agent's setting got the nearest key of these runs ("did you mean
    # 'rppo.d_model'?" for mbpo.mode on rppo runs)
    rc = main(["report", str(real_run), "--out", str(tmp_path / "r"), "--group-by",
               "mbpo.mode"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "'mbpo.mode' is a setting of agent mbpo, and no run here is one " \
        "(random)" in err and "did you mean" not in err


@pytest.mark.parametrize("key", ["run", "random"])
def test_a_section_is_not_a_group_key(tmp_path, real_run, capsys, key):
    """`--group-by run` labelled groups with the section dumped as a dict (and squashed the
    plots): a section is refused, with keys inside it named."""
    rc = main(["report", str(real_run), "--out", str(tmp_path / "r"), "--group-by", key])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"--group-by '{key}' is a section of settings, not one setting; name one of its " \
        f"keys, e.g. {key}." in err
    assert not (tmp_path / "r").exists()


def test_group_by_an_option_inside_a_kwargs_setting(tmp_path, capsys):
    """rppo.backbone_kwargs.init-style keys: an option only some runs set groups those runs;
    a misspelt key above the free-form part is still refused."""
    root = tmp_path / "kw"
    for i, head in enumerate((None, 8, 16)):  # gru takes no head_dim
        sets = (("imagine.world.backbone=gru",) if head is None else
                ("imagine.world.backbone=mamba2", f"imagine.world.backbone_kwargs.head_dim={head}"))
        fake_run(root / f"r{i}", "CartPole-v1", i, [1.0, 2.0 + i], preset="cartpole", sets=sets)
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--group-by", "backbone",
                 "--group-by", "imagine.world.backbone_kwargs.head_dim"]) == 0
    text = (out / "report.md").read_text()
    assert "3 groups" in text
    assert "| mamba2/head_dim=8 |" in text and "| mamba2/head_dim=16 |" in text
    assert "| gru |" in text  # the run without a head_dim
    assert "groups nothing" not in capsys.readouterr().err  # some runs set head_dim
    assert main(["report", str(root), "--out", str(out), "--group-by",
                 "imagine.wrld.backbone_kwargs.head_dim"]) == 2
    assert "did you mean" in capsys.readouterr().err
    # an option no run sets (here a typo) groups nothing, and says so with the close match
    assert main(["report", str(root), "--out", str(out), "--group-by", "backbone",
                 "--group-by", "imagine.world.backbone_kwargs.headdim"]) == 0
    line = ("--group-by 'imagine.world.backbone_kwargs.headdim' is an option no run sets, so "
            "it groups nothing (did you mean 'head_dim'?)")
    assert f"reverie: warning: {line}" in capsys.readouterr().err
    assert f"- {line}" in (out / "report.md").read_text()


def test_bad_folders_are_skipped_with_a_warning(tmp_path, real_run, capsys):
    import shutil

    root = tmp_path / "mixed"
    shutil.copytree(real_run, root / "good")
    (root / "empty").mkdir()
    (root / "half").mkdir()
    (root / "half" / ".reverie-run").write_text("x")  # died before config.yaml
    shutil.copytree(real_run, root / "alien")
    cfg = (root / "alien" / "config.yaml").read_text().replace("agent: random", "agent: dreamer")
    (root / "alien" / "config.yaml").write_text(cfg)
    shutil.copytree(real_run, root / "old")
    manifest = root / "old" / "checkpoints" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format": 2', '"format": 1'))
    shutil.copytree(real_run, root / "damaged")
    with open(root / "damaged" / "metrics.jsonl", "a") as f:
        f.write("garbage\n{\"step\": 1}\n")
    shutil.copytree(real_run, root / "unlogged")
    (root / "unlogged" / "metrics.jsonl").write_text("")
    runs, warnings = load_runs([root])
    assert [r.path.name for r in runs] == ["good"]
    reasons = {Path(w.split(":")[0].split()[-1]).name: w for w in warnings}
    assert set(reasons) == {"empty", "half", "alien", "old", "damaged", "unlogged"}
    assert "unknown agent 'dreamer'" in reasons["alien"]
    assert "another reverie version" in reasons["old"]
    assert "empty folder" in reasons["empty"]
    assert all("\n" not in w for w in warnings)
    (tmp_path / "notes.txt").write_text("x")
    assert load_runs([root / "good", tmp_path / "notes.txt"])[1] == [
        f"skipped {tmp_path / 'notes.txt'}: a file, not a run folder"]
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert err.count("reverie: warning: skipped") == 6


def test_a_report_is_not_written_into_a_run_folder(tmp_path, real_run, capsys):
    """Its report.md and PNGs would be mixed into the run's own files."""
    before = sorted(p.name for p in real_run.iterdir())
    assert main(["report", str(real_run), "--out", str(real_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"reverie: error: --out '{real_run}' is a run folder; write the report "
                   f"beside it, e.g. --out {real_run.parent / (real_run.name + '-report')}")
    assert sorted(p.name for p in real_run.iterdir()) == before


def test_nothing_usable_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["report", str(tmp_path / "empty"), str(tmp_path / "missing"), "--out",
               str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("reverie: error: no usable run") and len(err.splitlines()) == 1
    with pytest.raises(UserError, match="no usable run"):
        load_runs([tmp_path / "empty"])


def test_final_return_without_evaluations_uses_the_last_tenth():
    from reverie.eval.runs import final_return

    episodes = [(10, 1.0), (50, 2.0), (95, 4.0), (100, 6.0)]
    assert final_return([], episodes, 100) == pytest.approx(5.0)  # episodes at steps >= 90
    assert final_return([], [(10, 3.0)], 100) == 3.0  # none that late: the last episode
    assert final_return([(50, 7.0), (100, 8.0)], episodes, 100) == 8.0  # the last evaluation

def test_aggregate_panels_show_values_at_the_data_extremes(tmp_path):
    """Every seed alike gives a zero-width interval; at the data's extreme (100% or 0% HNS,
    CartPole's 500) it must be drawn inside the axes, not on the spine (a bar's sticky
    left edge used to stop the margin there), and in the group's colour."""
    from reverie.eval import plots
    from reverie.eval.report import DEFAULT_GROUP_BY, make_groups

    ref = atari_reference()["games"]
    for backbone in ("gru", "ffm"):
        for seed in range(2):
            fake_run(tmp_path / f"pong-{backbone}-{seed}", "ALE/Pong-v5", seed,
                     [ref["Pong"]["random"], ref["Pong"]["human" if backbone == "ffm"
                                                     else "random"]],
                     preset="cartpole", sets=(f"imagine.world.backbone={backbone}",))
    for seed, last in enumerate([300.0, 500.0, 500.0]):  # CI [300, 500]: a real bar at 500
        fake_run(tmp_path / f"cp-{seed}", "CartPole-v1", seed, [10.0, last])
    groups = make_groups(load_runs([tmp_path])[0], list(DEFAULT_GROUP_BY))
    fig = plots.aggregates_figure(groups, plots._colors([g.label for g in groups]))
    fig.canvas.draw()
    seen = 0
    for ax in fig.axes:
        for line in ax.lines:
            lo, hi = ax.get_xlim()
            for x in np.atleast_1d(line.get_xdata()):
                assert lo < x < hi and min(x - lo, hi - x) > 0.02 * (hi - lo), ax.get_title()
                seen += 1
        dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
        if ax.get_xlabel() == "HNS (%)" and ax.get_title() == "mean":
            assert sorted(d.get_xdata()[0] for d in dots) == pytest.approx([0.0, 100.0])
    plots._plt().close(fig)
    assert seen > 20



def test_profile_thresholds_around_one_value_and_up_to_the_target():
    from reverie.eval.plots import profile_thresholds

    taus = profile_thresholds([-500.0, -500.0], None)  # Acrobot: every run at the floor
    assert taus[0] == pytest.approx(-525.0) and taus[-1] == pytest.approx(-425.0)
    taus = profile_thresholds([0.0], None)
    assert taus[0] == pytest.approx(-0.05) and taus[-1] == pytest.approx(0.15)
    taus = profile_thresholds([100.0, 300.0], None)  # 5% of the range before, 15% after
    assert taus[0] == pytest.approx(90.0) and taus[-1] == pytest.approx(330.0)
    taus = profile_thresholds([0.2, 0.4], 1.0)  # HNS: from 0 up to human level
    assert taus[0] == pytest.approx(-0.05) and taus[-1] == pytest.approx(1.15)
    assert len(taus) == 201


def test_aggregate_labels_say_when_a_group_covers_fewer_tasks(tmp_path):
    """A group run on fewer of a row's tasks averages other tasks than its neighbours:
    its tick label says how many (the report's table has a `tasks` column; the plot too)."""
    from reverie.eval import plots
    from reverie.eval.report import DEFAULT_GROUP_BY, make_groups

    for backbone, games in (("gru", ("Pong", "Breakout")), ("ffm", ("Pong",))):
        for game in games:
            for seed in range(2):
                fake_run(tmp_path / f"{game}-{backbone}-{seed}", f"ALE/{game}-v5", seed,
                         [0.0, 1.0 + seed], preset="cartpole",
                         sets=(f"imagine.world.backbone={backbone}",))
    groups = make_groups(load_runs([tmp_path])[0], list(DEFAULT_GROUP_BY))
    fig = plots.aggregates_figure(groups, plots._colors([g.label for g in groups]))
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    plots._plt().close(fig)
    assert "imagine/ffm (1 of 2 tasks)" in ticks
    assert "imagine/gru" in ticks and not any("gru (" in t for t in ticks)
    assert any(t.endswith("(published)") for t in ticks)  # published rows keep their names


def test_aggregate_x_labels_fit_their_panel(tmp_path):
    """A long env id in a raw-return row's unit ("return (raw, InvertedPendulum-v5)") ran
    into the next panel's label: it breaks after the comma; short ones stay on one line."""
    from reverie.eval import plots
    from reverie.eval.report import DEFAULT_GROUP_BY, make_groups

    for env, name in (("InvertedPendulum-v5", "ip"), ("CartPole-v1", "cp")):
        for seed in range(2):
            fake_run(tmp_path / f"{name}-{seed}", env, seed, [1.0, 2.0 + seed])
    groups = make_groups(load_runs([tmp_path])[0], list(DEFAULT_GROUP_BY))
    fig = plots.aggregates_figure(groups, plots._colors([g.label for g in groups]))
    fig.canvas.draw()
    labels = {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()}
    plots._plt().close(fig)
    assert "return (raw,\nInvertedPendulum-v5)" in labels
    assert "return (raw, CartPole-v1)" in labels


def test_a_run_named_twice_is_counted_once(tmp_path, monkeypatch):
    """`report s1 ./s1` or a folder and its parent: each run once (a copy of a seed would
    narrow the intervals)."""
    for seed in range(2):
        fake_run(tmp_path / "s1" / f"cp-{seed}", "CartPole-v1", seed, [10.0, 20.0 + seed])
    monkeypatch.chdir(tmp_path)
    runs, _ = load_runs([tmp_path / "s1", Path("s1"), Path("s1") / "cp-0", tmp_path])
    assert sorted(r.seed for r in runs) == [0, 1]


@pytest.mark.parametrize("text", ["", "agent: random\nseed: 0\nenv:\n  id: CartPole-v1\n"])
def test_a_cut_config_is_skipped_not_filled_with_defaults(tmp_path, text):
    """An empty config.yaml was reported as an imagine/mamba2 run; one cut short got the
    schema's defaults for what it lost (a false mixed-settings warning, a finished run called
    unfinished). Skipped, with the fix named."""
    fake_run(tmp_path / "good", "CartPole-v1", 0, [10.0, 20.0])
    bad = fake_run(tmp_path / "bad", "CartPole-v1", 1, [10.0, 20.0])
    (bad / "config.yaml").write_text(text)
    runs, warnings = load_runs([tmp_path])
    assert [r.seed for r in runs] == [0]
    assert len(warnings) == 1 and "is incomplete" in warnings[0] and "restore it" in warnings[0]


def test_tables_order_numbers_as_numbers(tmp_path):
    """The per-task and Runs tables sorted labels and paths as text (train_ratio=16 before
    =8), where the aggregate table read numbers as numbers."""
    for ratio in (16, 8):
        fake_run(tmp_path / f"r{ratio}", "CartPole-v1", 0, [10.0, 20.0],
                 sets=(f"run.train_ratio={ratio}",))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--group-by",
                 "agent", "--group-by", "run.train_ratio"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    for name in ("Aggregate scores", "Per-task scores", "Runs"):
        part = sections[name]
        assert part.index("train_ratio=8 ") < part.index("train_ratio=16 "), part
    assert sections["Runs"].index("| r8 |") < sections["Runs"].index("| r16 |")


def test_wall_time_adds_up_resumed_processes():
    from reverie.run.logger import training_wall as _wall_time

    timing = [{"step": s, "time/wall": w, "time/env_steps_per_s": r}
              for s, w, r in [(1, 1.0, 10), (2, 2.0, 20), (3, 3.0, 30), (4, 0.5, 40),
                              (5, 1.5, 50)]]
    # two processes: 3 s at 30 steps/s, then 1.5 s at 50 steps/s
    assert _wall_time(timing) == (pytest.approx(4.5), pytest.approx((90 + 75) / 4.5))


@pytest.mark.filterwarnings("error:constrained_layout not applied")
def test_the_compute_table_names_each_rows_machines(real_run, tmp_path):
    """A real run records its machine; a resume on another machine adds a row; runs from
    before machines were recorded show '-'; fields from elsewhere cannot break the table."""
    from reverie.run.machine import cpu_model, label

    rows = [json.loads(x) for x in (real_run / "machine.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 0 and rows[0]["device"] == "cpu"
    assert rows[0]["cpu"] == cpu_model() and rows[0]["threads"] >= 1
    here = label(rows[0])
    a, b = fake_run(tmp_path / "a", "CartPole-v1", 0, [1.0]), fake_run(
        tmp_path / "b", "CartPole-v1", 1, [2.0])
    fake_run(tmp_path / "old" / "c", "Acrobot-v1", 0, [-100.0])
    fake_run(tmp_path / "old" / "d", "Pendulum-v1", 0, [-900.0])
    fake_run(tmp_path / "old" / "e", "Pendulum-v1", 1, [-800.0])
    (tmp_path / "old" / "e" / "machine.jsonl").write_text(json.dumps({"step": 0, **rows[0]})
                                                          + "\n")
    (a / "machine.jsonl").write_text(json.dumps({"step": 0, **rows[0]}) + "\n")
    other = {"step": 50, "cpu": "Big|Iron <b>x</b>\n", "cores": 64, "threads": 8,
             "device": "NVIDIA H200", "torch": "2.13.0"}
    (b / "machine.jsonl").write_text(json.dumps({"step": 0, **rows[0]}) + "\n"
                                     + json.dumps(other) + "\n")
    assert label(other) == "BigIron bx/b · 64 cores · 8 threads · NVIDIA H200"
    assert main(["report", str(a), str(b), str(tmp_path / "old"), "--out",
                 str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    cartpole = next(ln for ln in text.splitlines() if ln.startswith("| random | CartPole-v1 | 2"))
    assert cartpole.endswith(f"| {here} (2 runs); {label(other)} (1 run) |")
    acrobot = next(ln for ln in text.splitlines() if ln.startswith("| random | Acrobot-v1 | 1"))
    assert acrobot.endswith("| - |")
    pendulum = next(ln for ln in text.splitlines() if ln.startswith("| random | Pendulum-v1 | 2"))
    assert pendulum.endswith(f"| {here} (1 run); not recorded (1 run) |")


def test_a_resume_records_its_machine_and_drops_rows_past_the_checkpoint(real_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    with open(run / "machine.jsonl", "a") as f:  # processes that died before a checkpoint
        f.write(json.dumps({"step": 300, "cpu": "lost"}) + "\n")  # (it started at 300)
        f.write("{damaged\n" + json.dumps({"step": 999, "cpu": "lost"}) + "\n")
    with open(run / "machine.jsonl", "ab") as f:
        f.write(b"\xff\xfe not UTF-8\n")
    assert main(["train", "--resume", str(run), "--steps", "450", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "machine.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 300] and "lost" not in str(rows)


def test_popgym_runs_score_their_mmer(tmp_path):
    fake_run(tmp_path / "pg", "popgym-RepeatPreviousEasy-v0", 0, [-0.5, 0.2, 0.1])
    (run,), _ = load_runs([tmp_path / "pg"])
    assert run.kind.name == "MMER" and run.score == pytest.approx(0.2)
    assert [v for _, v in run.curve] == [-0.5, 0.2, 0.2]  # the running max
    report, _ = write_report([tmp_path / "pg"], tmp_path / "rep")
    assert "### MMER" in report.read_text()


def test_returns_chooses_evaluations_or_training_episodes(tmp_path, capsys):
    """--returns train scores POPGym's way (training episodes, windows of run.steps/20 env
    steps) even where evaluations exist; --returns eval skips a run without evaluations
    with a reason that names the other choice."""
    run = fake_run(tmp_path / "pg", "popgym-RepeatPreviousEasy-v0", 0, [-0.5, 0.9],
                   sets=("run.eval_every=10",))  # 200 steps; windows of run.eval_every
    episodes = [(5, -1.0), (10, 0.0), (15, 0.4), (100, 0.6), (200, -0.2)]
    with (run / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps({"step": s, "episode/return": v}) + "\n" for s, v in episodes)
    (auto,), _ = load_runs([run])
    assert auto.source == "eval" and auto.score == pytest.approx(0.9)
    (train,), _ = load_runs([run], returns="train")
    assert train.source == "train"
    assert train.curve == [(10, -0.5), (20, 0.4), (100, 0.6), (200, 0.6)]  # running max
    assert train.score == pytest.approx(0.6)
    report, _ = write_report([run], tmp_path / "rep", returns="train")
    assert "training episodes |" in report.read_text() and "(--returns train)" in \
        report.read_text()

    bare = fake_run(tmp_path / "bare", "CartPole-v1", 0, [0.0])
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 9, "episode/return": 9.0}) + "\n")
    (ok,), _ = load_runs([bare])  # auto: training episodes where there is no evaluation
    assert ok.source == "train"
    with pytest.raises(UserError, match="no evaluation logged .*--returns train"):
        load_runs([bare], returns="eval")
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 9, "eval/return": 9.0}) + "\n")
    with pytest.raises(UserError, match="no training episode logged .*--returns eval"):
        load_runs([bare], returns="train")
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 9, "episode/return": 9.0}) + "\n")
    with pytest.raises(UserError, match="returns must be one of auto, eval, train"):
        load_runs([bare], returns="greedy")
    assert main(["report", str(bare), "--out", str(tmp_path / "r2"), "--returns", "eval"]) == 2
    err = capsys.readouterr().err
    assert "--returns train" in err and "choose another --returns than eval" in err


def test_training_curves_have_the_evaluation_interval_or_a_twentieth_of_the_run():
    from reverie.eval.runs import train_window

    assert train_window(_config("popgym-ppo", (), "popgym-RepeatPreviousEasy-v0", 500_000)) \
        == 16_384
    assert train_window(_config("random", ("run.eval_episodes=0",), "CartPole-v1", 5000)) == 250


def test_group_label_leaves_out_keys_a_run_does_not_have():
    from types import SimpleNamespace

    from reverie.eval.report import group_label

    def run(**settings):
        return SimpleNamespace(setting=lambda key: settings.get(key, "?"))

    keys = ["agent", "backbone", "rppo.backbone_kwargs.init", "mbpo.mode"]
    assert group_label(run(agent="rppo", backbone="ffm"), keys) == "rppo/ffm"
    assert group_label(run(agent="rppo", backbone="ffm", **{"rppo.backbone_kwargs.init":
                                                           "reference"}), keys) == \
        "rppo/ffm/init=reference"
    assert group_label(run(agent="mbpo", backbone="-", **{"mbpo.mode": "coplanner"}), keys) == \
        "mbpo/mode=coplanner"
    # a run without the only key (an imagine run grouped by mbpo.mode) is labelled by its
    # agent, not 'all', which reads as the aggregate of every run
    assert group_label(run(agent="imagine"), ["mbpo.mode"]) == "imagine"
    assert group_label(run(agent="mbpo", **{"mbpo.mode": "mbpo"}), ["mbpo.mode"]) == \
        "mode=mbpo"


def test_mbpo_and_coplanner_runs_are_apart_by_default(tmp_path):
    """mbpo.mode makes another algorithm (plain MBPO vs COPlanner): the default grouping
    keeps them apart instead of averaging them as if they were seeds; a report of one mode
    names no mode."""
    from reverie.eval.report import default_group_by, make_groups

    for mode in ("mbpo", "coplanner"):
        for seed in range(2):
            fake_run(tmp_path / f"{mode}-{seed}", "Pendulum-v1", seed, [-1200.0, -300.0],
                     preset="mbpo-pendulum", sets=(f"mbpo.mode={mode}",))
    runs = load_runs([tmp_path])[0]
    assert default_group_by(runs) == ["agent", "backbone", "mbpo.mode"]
    groups = make_groups(runs, default_group_by(runs))
    assert sorted(g.label for g in groups) == ["mbpo/mode=coplanner", "mbpo/mode=mbpo"]
    one = load_runs([tmp_path / "coplanner-0", tmp_path / "coplanner-1"])[0]
    assert [g.label for g in make_groups(one, default_group_by(one))] == ["mbpo"]


def test_group_labels_name_a_setting_only_where_groups_differ_in_it():
    from types import SimpleNamespace

    from reverie.eval.report import group_labels

    def run(kind="return (CartPole-v1)", **settings):
        return SimpleNamespace(setting=lambda key: settings.get(key, "?"),
                               kind=SimpleNamespace(name=kind))

    keys = ["agent", "backbone", "replay.sampler", "rppo.d_model", "mbpo.mode",
            "run.precision"]
    imagine = {"replay.sampler": "dfs", "run.precision": "fp32"}
    runs = [
        run(agent="imagine", backbone="mamba2", **imagine),
        run(agent="imagine", backbone="mamba2", **{**imagine, "run.precision": "bf16"}),
        run(agent="imagine", backbone="mamba2", **{**imagine, "replay.sampler": "uniform"}),
        run(agent="imagine", backbone="gru", **imagine),
        run(agent="rppo", backbone="ffm", **{"rppo.d_model": "64", "run.precision": "fp32"}),
        run(agent="rppo", backbone="ffm", **{"rppo.d_model": "256", "run.precision": "fp32"}),
        run(agent="rppo", backbone="gru", **{"rppo.d_model": "256", "run.precision": "fp32"}),
        run(agent="mbpo", backbone="-", **{"mbpo.mode": "coplanner", "run.precision": "fp32"}),
        run(agent="mbpo", backbone="-", **{"mbpo.mode": "mbpo", "run.precision": "fp32"}),
    ]
    assert group_labels(runs, keys) == [
        "imagine/mamba2/sampler=dfs/precision=fp32", "imagine/mamba2/sampler=dfs/precision=bf16",
        "imagine/mamba2/sampler=uniform/precision=fp32",
        "imagine/gru",  # every gru run: dfs, fp32
        "rppo/ffm/d_model=64", "rppo/ffm/d_model=256", "rppo/gru",
        "mbpo/mode=coplanner", "mbpo/mode=mbpo"]
    assert group_labels(runs[::-1], keys) == group_labels(runs, keys)[::-1]
    # without agent and backbone among the keys, a key is named wherever it varies (per kind)
    assert group_labels(runs[:4], ["run.precision"]) == [
        "precision=fp32", "precision=bf16", "precision=fp32", "precision=fp32"]
    assert group_labels(runs[3:4] * 2, ["agent", "run.precision"]) == ["imagine", "imagine"]
    assert group_labels(runs[3:4], ["run.precision"]) == ["all"]
    # a setting that differs between score kinds only (a 5k CartPole and a 20k MinAtar run)
    # is not named: no aggregate spans both
    minatar = run(kind="return (minatar)", agent="imagine", backbone="gru",
                  **{**imagine, "run.steps": "20000"})
    cartpole = run(agent="imagine", backbone="gru", **{**imagine, "run.steps": "5000"})
    assert group_labels([cartpole, minatar], ["agent", "backbone", "run.steps"]) == [
        "imagine/gru", "imagine/gru"]


def test_replay_settings_label_only_agents_that_keep_a_replay(tmp_path):
    from reverie.eval.report import group_label

    fake_run(tmp_path / "random", "CartPole-v1", 0, [1.0], sets=("replay.sampler=uniform",))
    fake_run(tmp_path / "rppo", "popgym-RepeatPreviousEasy-v0", 0, [0.5], preset="popgym-ppo")
    runs = {r.path.name: r for r in load_runs([tmp_path])[0]}
    keys = ["agent", "replay.sampler"]
    assert group_label(runs["random"], keys) == "random/sampler=uniform"
    assert group_label(runs["rppo"], keys) == "rppo"  # PPO keeps its own rollouts


def test_finished_only_leaves_out_runs_still_training(tmp_path, capsys):
    root = tmp_path / "runs"
    fake_run(root / "done", "CartPole-v1", 0, [10.0, 20.0])
    unfinished = fake_run(root / "going", "CartPole-v1", 1, [30.0, 40.0])
    cfg = (unfinished / "config.yaml").read_text()
    (unfinished / "config.yaml").write_text(cfg.replace("steps: 200", "steps: 1000"))
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert "2 runs" in (out / "report.md").read_text()
    assert main(["report", str(root), "--out", str(out), "--finished-only"]) == 0
    text = (out / "report.md").read_text()
    assert "1 run, 1 env" in text and "unfinished (200 of 1,000 env steps)" in text


def test_a_copy_of_a_runs_logs_is_finished_by_its_progress_file(tmp_path, capsys):
    """The last log row can come before the last step (in runs made before the final
    timing row: timing rows at 100 and 200, an episode's end somewhere after; the run ends
    at 250); the checkpoint manifest knows better, and so does progress.json, which a copy
    of the logs keeps."""
    run = tmp_path / "run"
    assert main(["train", "--preset", "random", "--no-progress", "--steps", "250",
                 "--set", "run.log_every=100", "--set", "run.eval_every=100",
                 "--set", "run.eval_episodes=1", "--out", str(run)]) == 0
    assert json.loads((run / "progress.json").read_text()) == {"env_steps": 250}
    steps = [json.loads(x)["step"] for x in (run / "timing.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 250]  # the final row: the time after the last log row counts
    copy = tmp_path / "archive" / "run"
    copy.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "timing.jsonl", "progress.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    rows = (copy / "timing.jsonl").read_text().splitlines()
    (copy / "timing.jsonl").write_text("".join(r + "\n" for r in rows[:2]))  # as runs before
    rows = (copy / "metrics.jsonl").read_text().splitlines()  # ... and before a final eval
    (copy / "metrics.jsonl").write_text("".join(  # and the tail row of the last updates
        r + "\n" for r in rows if not ('"step": 250' in r and ("eval/return" in r
                                                               or '"window": "tail"' in r))))
    out = tmp_path / "rep"
    assert main(["report", str(copy), "--out", str(out), "--finished-only"]) == 0
    assert "1 run, 1 env" in (out / "report.md").read_text()
    (copy / "progress.json").unlink()  # without it, the copy looks unfinished
    assert main(["report", str(copy), "--out", str(out), "--finished-only"]) == 2
    err = capsys.readouterr().err
    assert "unfinished (" in err and " of 250 env steps)" in err


def test_interval_cells_print_large_scores_without_exponents():
    from reverie.eval.report import _ci
    from reverie.eval.stats import Estimate

    assert _ci(Estimate(1000.0, 998.4, 1000.0), pct=False) == "1,000 [998, 1,000]"
    assert _ci(Estimate(-160.2, -260.0, -96.48), pct=False) == "-160 [-260, -96.5]"
    assert _ci(Estimate(0.4541, 0.434, 0.4712), pct=False) == "0.454 [0.434, 0.471]"


def test_a_group_that_averages_variants_as_seeds_is_named(tmp_path, capsys):
    """Two ablation variants with the same seed in one group: the report says which settings
    tell them apart instead of averaging them as seeds silently."""
    root = tmp_path / "abl"
    fake_run(root / "a", "CartPole-v1", 0, [1.0, 2.0], preset="cartpole")
    fake_run(root / "b", "CartPole-v1", 0, [1.0, 3.0], preset="cartpole",
             sets=("imagine.world.free_bits_mode=batch",))
    fake_run(root / "c", "CartPole-v1", 1, [1.0, 4.0], preset="cartpole")
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    line = ("group 'imagine/mamba2' has 2 runs of CartPole-v1 with seed 0, averaged as if they "
            "were seeds; they differ in imagine.world.free_bits_mode: add --group-by for what "
            "tells them apart")
    assert f"reverie: warning: {line}" in captured.err
    assert f"- {line}" in (out / "report.md").read_text()
    assert json.loads(captured.out)["skipped"] == 0
    assert main(["report", str(root), "--out", str(out), "--group-by", "backbone",
                 "--group-by", "imagine.world.free_bits_mode"]) == 0
    assert "averaged as if" not in capsys.readouterr().err
    # bf16 vs fp32 (a setting a resume may change, but a different run): named, not called
    # "identical", after what changes learning
    fake_run(root / "d", "CartPole-v1", 1, [1.0, 4.0], preset="cartpole",
             sets=("run.precision=bf16", "run.compile=on"))
    assert main(["report", str(root / "c"), str(root / "d"), "--out", str(out)]) == 0
    assert ("with seed 1, averaged as if they were seeds; they differ in run.compile, "
            "run.precision: add --group-by") in capsys.readouterr().err
    fake_run(root / "e", "CartPole-v1", 1, [1.0, 4.0], preset="cartpole",
             sets=("run.precision=bf16", "imagine.horizon=8"))
    assert main(["report", str(root / "c"), str(root / "e"), "--out", str(out)]) == 0
    assert "they differ in imagine.horizon, run.precision: add" in capsys.readouterr().err
    # of different seeds, but also of different settings: a backbone comparison grouped by
    # agent alone averaged mamba2 and gru without a word; threads and precision (settings a
    # resume may change) are not counted here, nor is the seed
    fake_run(root / "f", "CartPole-v1", 2, [1.0, 4.0], preset="cartpole",
             sets=("imagine.world.backbone=gru", "run.threads=1"))
    fake_run(root / "g", "CartPole-v1", 3, [1.0, 4.0], preset="cartpole",
             sets=("run.threads=2",))
    assert main(["report", str(root / "f"), str(root / "g"), "--out", str(out),
                 "--group-by", "agent"]) == 0
    err = capsys.readouterr().err
    assert ("group 'imagine' averages runs of CartPole-v1 that differ in "
            "imagine.world.backbone, imagine.world.backbone_kwargs.head_dim: add --group-by"
            ) in err
    assert "| CartPole-v1 | imagine | 2 |" in (out / "report.md").read_text()
    # the replay in memory or on disk: the same results, no line (it said they differ)
    fake_run(root / "h", "CartPole-v1", 4, [1.0, 4.0], preset="cartpole",
             sets=("replay.on_disk=false",))
    assert main(["report", str(root / "g"), str(root / "h"), "--out", str(out)]) == 0
    assert "differ in" not in capsys.readouterr().err
    # a key given twice groups once (its label read imagine/imagine)
    assert main(["report", str(root / "f"), str(root / "g"), "--out", str(out),
                 "--group-by", "agent", "--group-by", "agent"]) == 0
    capsys.readouterr()
    text = (out / "report.md").read_text()
    assert "| CartPole-v1 | imagine | 2 |" in text and "grouped by agent;" in text
    assert main(["report", str(root / "f"), str(root / "g"), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err  # by backbone too (the default)
    assert main(["report", str(root / "a"), str(root / "b"), "--out", str(out)]) == 0
    assert "| CartPole-v1 | imagine/mamba2 | 2 (1 seed) |" in (out / "report.md").read_text()


def test_a_group_that_averages_different_budgets_is_named(tmp_path, capsys):
    """A 10k and a 20k run of one agent: their final scores are not comparable, so the report
    says so (also when the two share a seed and nothing else tells them apart)."""
    root = tmp_path / "budgets"
    external_run(root / "long0", "CartPole-v1", 0, [1.0, 2.0, 3.0, 4.0], agent="sb3-sac")
    external_run(root / "short1", "CartPole-v1", 1, [1.0, 2.0], agent="sb3-sac")
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out)]) == 0
    line = ("group 'sb3-sac' averages final scores taken at different env steps: CartPole-v1 (200 "
            "and 400 env steps; add --group-by run.steps to set them apart)")
    assert f"reverie: warning: {line}" in capsys.readouterr().err
    assert f"- {line}" in (out / "report.md").read_text()
    external_run(root / "short0", "CartPole-v1", 0, [1.0, 2.0], agent="sb3-sac")
    assert main(["report", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("with seed 0, averaged as if they were seeds; they differ in their budgets (200 and "
            "400 env steps; add --group-by run.steps to set them apart)") in err
    assert "averages final scores" not in err  # one line says it
    assert main(["report", str(root), "--out", str(out), "--group-by", "agent",
                 "--group-by", "run.steps"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "sb3-sac/steps=200" in (out / "report.md").read_text()
    # the same budget, one run still short of it: --finished-only is the fix
    external_run(tmp_path / "unfinished" / "a", "CartPole-v1", 0, [1.0, 2.0, 3.0], steps=300)
    external_run(tmp_path / "unfinished" / "b", "CartPole-v1", 1, [1.0], steps=300)
    assert main(["report", str(tmp_path / "unfinished"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("taken at different env steps: CartPole-v1 (100 and 300 env steps; some are "
            "unfinished: "
            "--finished-only leaves them out)") in err
    assert "unfinished run" not in err  # one line says it
    # every run equally short (a stopped sweep): scored in silence before
    external_run(tmp_path / "stopped" / "a", "CartPole-v1", 0, [1.0], steps=300)
    external_run(tmp_path / "stopped" / "b", "CartPole-v1", 1, [2.0], steps=300)
    assert main(["report", str(tmp_path / "stopped"), "--out", str(out)]) == 0
    assert ("group 'sb3-ppo' scores 2 unfinished runs (CartPole-v1 seed 0 at 100 of 300, "
            "CartPole-v1 seed 1 at 100 of 300 env steps): --finished-only leaves them "
            "out") in capsys.readouterr().err


def test_every_env_a_group_mixes_is_named_not_only_the_first(tmp_path, capsys):
    """A budget-only clash in one env hid another env's runs of a different setting averaged
    as seeds (one line per group), and silenced the other env's budget line."""
    root = tmp_path / "mixed"
    fake_run(root / "a0", "CartPole-v1", 0, [1.0, 2.0], preset="cartpole")
    fake_run(root / "a0-long", "CartPole-v1", 0, [1.0, 2.0, 3.0], preset="cartpole")
    fake_run(root / "b0", "Acrobot-v1", 0, [1.0, 2.0], preset="cartpole")
    fake_run(root / "b1", "Acrobot-v1", 1, [1.0, 2.0, 3.0, 4.0], preset="cartpole",
             sets=("env.prev_reward=true",))
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "2 runs of CartPole-v1 with seed 0, averaged as if they were seeds; they differ " \
           "in their budgets (" in err
    assert "averages runs of Acrobot-v1 that differ in env.prev_reward" in err
    assert "averages final scores taken at different env steps: Acrobot-v1 (" in err
    assert "budgets: CartPole-v1" not in err  # its clash line said it
    # the compute table gives the range, not a mean that no run has
    assert "| CartPole-v1 | 2 | 200–300 / 200–300 |" in (tmp_path / "rep" / "report.md").read_text()

    # past SHOWN_ENVS envs, a count; a label with braces (a dict-valued --group-by) is text
    many = tmp_path / "many"  # one suite (minatar): one group over its 4 games
    for game in ("breakout", "asterix", "freeway", "seaquest"):
        fake_run(many / game / "a", f"minatar:{game}", 0, [1.0, 2.0], preset="minatar")
        fake_run(many / game / "b", f"minatar:{game}", 0, [1.0, 2.0], preset="minatar",
                 sets=("imagine.horizon=8",))
    fake_run(many / "c", "minatar:breakout", 1, [1.0, 2.0], preset="minatar",
             sets=("imagine.world.backbone_kwargs.head_dim=16",))  # the label names it
    assert main(["report", str(many), "--out", str(tmp_path / "rep2"), "--group-by",
                 "imagine.world.backbone_kwargs"]) == 0
    err = capsys.readouterr().err
    assert err.count("averaged as if they were seeds; they differ in imagine.horizon") == 3
    assert "group 'backbone_kwargs={'head_dim': 32}' mixes runs in 1 more env(s) too" in err


def external_run(folder: Path, env: str, seed: int, evals: list[float], agent: str = "sb3-ppo",
                 every: int = 100, **extra) -> Path:
    """A run of another library, as bench/runlib.run_sb3 writes it."""
    folder.mkdir(parents=True)
    record = {"agent": agent, "env": env, "seed": seed, "steps": every * len(evals),
              "evals": [[every * (i + 1), v] for i, v in enumerate(evals)], **extra}
    (folder / "external.json").write_text(json.dumps(record))
    return folder


def test_external_runs_are_scored_and_grouped_beside_reverie_runs(tmp_path):
    root = tmp_path / "mixed"
    for seed in range(2):
        fake_run(root / f"reverie-{seed}", "CartPole-v1", seed, [100.0, 400.0 + seed])
        external_run(root / f"ppo-{seed}", "CartPole-v1", seed, [50.0, 200.0 + 10 * seed],
                     wall_s=20.0)
    external_run(root / "hns", "ALE/Pong-v5", 0, [0.0, 14.6])  # Pong's human score
    pong_json = json.loads((root / "hns" / "external.json").read_text())
    pong_json["evals"] = [[float(s), v] for s, v in pong_json["evals"]]  # 100.0: a step too
    (root / "hns" / "external.json").write_text(json.dumps(pong_json))
    runs, warnings = load_runs([root])
    assert warnings == []
    ppo = sorted((r for r in runs if r.cfg.agent == "sb3-ppo" and r.env == "CartPole-v1"),
                 key=lambda r: r.seed)
    assert [r.score for r in ppo] == [200.0, 210.0]  # the last evaluation
    assert ppo[0].curve == [(100, 50.0), (200, 200.0)] and ppo[0].target_steps == 200
    assert ppo[0].wall_s == 20.0 and ppo[0].steps_per_s == pytest.approx(10.0)
    assert ppo[0].setting("backbone") == "-" and ppo[0].setting("run.train_ratio") == "?"
    pong = next(r for r in runs if r.env == "ALE/Pong-v5")
    assert pong.kind.name == "HNS" and pong.score == pytest.approx(1.0)
    report, warnings = write_report([root], tmp_path / "rep", ["agent", "backbone"],
                                    finished_only=True)
    text = report.read_text()
    assert "| CartPole-v1 | sb3-ppo | 2 | 205 ± 5 |" in text
    assert "| CartPole-v1 | random | 2 |" in text


def test_an_external_run_whose_budget_ends_between_evaluations_is_finished(tmp_path, capsys):
    """10,000 steps evaluated every 3,000: the last evaluation is at 9,000 and the next would
    have come after the budget, so the run trained to it; one that stopped at 6,000 (an
    evaluation was due at 9,000) is unfinished."""
    root = tmp_path / "runs"
    external_run(root / "done", "CartPole-v1", 0, [1.0, 2.0, 3.0], every=3000, steps=10_000,
                 wall_s=100.0)
    runs, warnings = load_runs([root], finished_only=True)
    assert warnings == [] and runs[0].env_steps == 10_000
    assert runs[0].steps_per_s == pytest.approx(100.0)
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert "unfinished" not in capsys.readouterr().err
    assert "| 1 | 10,000 / 10,000 |" in (out / "report.md").read_text()
    # the control: stopped one evaluation short
    external_run(root / "stopped", "CartPole-v1", 1, [1.0, 2.0], every=3000, steps=10_000)
    runs, warnings = load_runs([root], finished_only=True)
    assert [r.path.name for r in runs] == ["done"]
    assert warnings == [f"skipped {root / 'stopped'}: unfinished (6,000 of 10,000 env steps)"]
    # one evaluation tells no interval: a crash after it (at 6,000) is not a finished run
    (root / "stopped").rename(tmp_path / "aside")
    external_run(root / "one", "CartPole-v1", 2, [1.0], every=6000, steps=10_000)
    runs, warnings = load_runs([root], finished_only=True)
    assert warnings == [f"skipped {root / 'one'}: unfinished (6,000 of 10,000 env steps)"]


@pytest.mark.parametrize("record, reason", [
    ({"agent": "sb3-ppo", "env": "CartPole-v1", "seed": 0, "steps": 100}, "lacks evals"),
    ({"agent": "imagine", "env": "CartPole-v1", "seed": 0, "steps": 100, "evals": [[100, 1.0]]},
     "reverie's own agent 'imagine'"),
    ({"agent": "ppo", "env": "CartPole-v1", "seed": "0", "steps": 100, "evals": [[100, 1.0]]},
     "seed must be an integer"),
    ({"agent": "ppo", "env": "CartPole-v1", "seed": 0, "steps": 100, "evals": []},
     "non-empty list"),
    ({"agent": "ppo", "env": "CartPole-v1", "seed": 0, "steps": 100,
      "evals": [[100, float("nan")]]}, "finite"),
    ({"agent": "ppo", "env": "CartPole-v1", "seed": 0, "steps": 100,
      "evals": [[100.5, 1.0]]}, "[env step, finite mean return]"),
    ([1, 2], "one JSON object"),
])
def test_a_malformed_external_run_is_skipped_with_its_reason(tmp_path, record, reason):
    fake_run(tmp_path / "good", "CartPole-v1", 0, [1.0])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "external.json").write_text(json.dumps(record))
    runs, warnings = load_runs([tmp_path])
    assert [r.path.name for r in runs] == ["good"]
    assert len(warnings) == 1 and warnings[0].startswith(f"skipped {tmp_path / 'bad'}: ")
    assert reason in warnings[0], warnings[0]


def test_the_sample_efficiency_curve_ends_with_the_shortest_task():
    """Tasks trained to different budgets: the aggregate over tasks stops where one of them
    has no run left, instead of jumping when that task drops out."""
    from reverie.eval.curves import iqm_band

    long_task = np.array([[0.0, 0.1, 0.2, 0.3], [0.0, 0.1, 0.2, 0.3]])
    short_task = np.array([[1.0, 1.0, np.nan, np.nan], [0.8, np.nan, np.nan, np.nan]])
    mid, low, high = iqm_band([long_task, short_task], reps=50)
    assert np.isfinite(mid[:2]).all() and np.isnan(mid[2:]).all()
    assert mid[1] == pytest.approx(np.mean([0.1, 0.1, 1.0]))  # seed 1 of the short task ended
    assert (low[:2] <= mid[:2]).all() and (mid[:2] <= high[:2]).all()
    # a task whose runs have no evaluation yet (still training) is left out, not a blank
    not_yet = np.full((1, 4), np.nan)
    np.testing.assert_array_equal(iqm_band([long_task, not_yet], reps=50)[0], long_task[0])


def test_long_group_labels_keep_the_legend_inside_the_figure():
    """Six ~35-character labels under two panels were laid out 4 to a row and cut off at
    both edges of curves.png."""
    from reverie.eval import plots

    plt = plots._plt()
    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(8.5, 3.6))
    labels = [f"imagine/mamba2/mode=coplanner-{i}-variant" for i in range(6)]
    handles = [axes[0].plot([0, 1], [i, i])[0] for i in range(6)]
    plots._legend_below(fig, handles, labels)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width
    assert 1 < plots.legend_columns(labels, fig.get_figwidth()) < 4
    assert plots.legend_columns(["a", "b"], 8.5) == 2
    plt.close(fig)


def test_hns_curves_are_in_percent_and_a_flat_curve_is_not_magnified(tmp_path, monkeypatch):
    """Pong at -21 throughout: HNS -0.85%, in the same unit as the tables, on an axis of a
    readable range (matplotlib's own limits for a constant were +-0.0004)."""
    from reverie.eval import plots
    from reverie.eval.report import DEFAULT_GROUP_BY, make_groups

    for seed in range(2):
        fake_run(tmp_path / f"pong-{seed}", "ALE/Pong-v5", seed, [-21.0, -21.0])
    groups = make_groups(load_runs([tmp_path])[0], list(DEFAULT_GROUP_BY))
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    plots.curves_png(groups, tmp_path, plots._colors([g.label for g in groups]))
    ax = saved[0].axes[0]
    ref = atari_reference()["games"]["Pong"]
    hns = 100 * (-21.0 - ref["random"]) / (ref["human"] - ref["random"])
    assert ax.lines[0].get_ydata() == pytest.approx([hns] * len(ax.lines[0].get_ydata()))
    low, high = ax.get_ylim()
    assert low < hns < high and high - low >= 2.0
    assert "%" in ax.get_ylabel()
    plots._plt().close(saved[0])
    # flat means whose seeds differ keep their band in view
    for seed, value in enumerate([100.0, 300.0]):
        fake_run(tmp_path / f"cp-{seed}", "CartPole-v1", seed, [value, value])
    groups = make_groups(load_runs([tmp_path / "cp-0", tmp_path / "cp-1"])[0],
                         list(DEFAULT_GROUP_BY))
    plots.curves_png(groups, tmp_path, plots._colors([g.label for g in groups]))
    low, high = saved[1].axes[0].get_ylim()
    assert low <= 100.0 and high >= 300.0
    plots._plt().close(saved[1])


def test_runs_that_never_updated_are_named(tmp_path, capsys):
    """A sweep at --steps below the prefill trains nothing: its report ranked the backbones'
    initial weights without a word."""
    root = tmp_path / "runs"
    for seed, updates in enumerate([0, 0, 12]):
        run = fake_run(root / f"r{seed}", "CartPole-v1", seed, [20.0, 30.0])
        with (run / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 200, "grad_steps": updates}) + "\n")
    out = tmp_path / "rep"
    assert main(["report", str(root / "r0"), str(root / "r1"), "--out", str(out)]) == 0
    line = ("group 'random' has runs of CartPole-v1 that never updated (0 gradient steps; "
            "run.steps within the prefill, warm-up or first rollout): their scores are the "
            "untrained agent's")
    assert f"reverie: warning: {line}" in capsys.readouterr().err
    assert main(["report", str(root / "r2"), "--out", str(out)]) == 0
    assert "never updated" not in capsys.readouterr().err
    # a run that ended inside its prefill logs no update row at all: named too, in report.md
    fake_run(root / "r3", "CartPole-v1", 3, [20.0, 30.0], sets=("run.prefill=500",))
    assert main(["report", str(root / "r3"), "--out", str(out)]) == 0
    assert f"reverie: warning: {line}" in capsys.readouterr().err
    assert line in (out / "report.md").read_text()


def test_a_task_of_one_run_shows_no_spread(tmp_path):
    """It read "418.6 ± 0 | 419 [419, 419]", as if a spread had been measured."""
    fake_run(tmp_path / "one", "CartPole-v1", 0, [100.0, 418.6])
    for seed in range(2):
        fake_run(tmp_path / f"two{seed}", "Acrobot-v1", seed, [-300.0, -100.0 - seed])
    report, _ = write_report([tmp_path], tmp_path / "rep")
    rows = {line.split(" | ")[0]: line for line in report.read_text().splitlines()
            if line.startswith(("| CartPole-v1 |", "| Acrobot-v1 |"))}
    assert "| 1 | 418.6 | 419 (one run) |" in rows["| CartPole-v1"]
    assert "| 2 | -100.5 ± 0.5 | -100 [-101, -100] |" in rows["| Acrobot-v1"]


def test_a_folder_of_links_to_runs_says_links_are_not_followed(tmp_path, capsys):
    run = fake_run(tmp_path / "runs" / "a", "CartPole-v1", 0, [1.0, 2.0])
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "a").symlink_to(run)
    assert main(["report", str(tmp_path / "links"), "--out", str(tmp_path / "rep")]) == 2
    assert "no run folders inside (links are not followed: name a linked run folder " \
           "itself)" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "links" / "a"), "--out", str(tmp_path / "rep")]) == 0
