"""Run folders and CLI values as untrusted input: nothing outside a run is read through a link,
written or deleted; no command that exits 0 loses data; every flag is honoured or refused.

Each case runs the real CLI entry point inside a fresh tmp folder that holds a copy of a
finished run and a "victim" file beside it, and checks every pre-existing file afterwards."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reverie
from reverie.cli import main
from reverie.config import build_config
from reverie.envs import make_env
from reverie.run.checkpoint import CheckpointStore

FAST = ["--preset", "random", "--no-progress", "--set", "run.eval_episodes=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", *FAST, "--set", "run.checkpoint_every=100", "--steps", "300",
                 "--out", str(run)]) == 0
    return run


@pytest.fixture
def world(finished_run, tmp_path, monkeypatch):
    """tmp_path/run (a copy of the finished run) and tmp_path/victim.txt beside it."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(finished_run, tmp_path / "run")
    (tmp_path / "victim.txt").write_text("precious")
    return tmp_path


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def refused(argv: list[str], root: Path, capsys, fragment: str) -> str:
    """Run the CLI; expect exit 2, one line with `fragment`, and no file changed anywhere."""
    before = snapshot(root)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("reverie: error: ") and "\n" not in err, err
    assert fragment in err, err
    assert snapshot(root) == before
    return err


def manifest(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "manifest.json").read_text())


def write_manifest(run: Path, data) -> None:
    (run / "checkpoints" / "manifest.json").write_text(json.dumps(data))


def metrics_lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


# 1. path escape --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["{victim}", "../config.yaml", "../../victim.txt",
                                 "sub/ckpt-0000000001.pt", None])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_manifest_entry_outside_checkpoints_is_refused(world, capsys, bad, command):
    run = world / "run"
    data = manifest(run)
    first = data["checkpoints"][0]
    file = bad.replace("{victim}", str(world / "victim.txt")) if bad else None
    data["checkpoints"].insert(0, {**first, "file": file, "step": 1})
    write_manifest(run, data)
    argv = (["train", "--resume", run, "--steps", "400"] if command == "resume"
            else ["eval", run, "--episodes", "1"])
    refused(argv, world, capsys, "manifest")


def test_linked_checkpoint_is_never_followed(world, capsys):
    run = world / "run"
    last = manifest(run)["checkpoints"][-1]["file"]
    (run / "checkpoints" / last).unlink()
    (run / "checkpoints" / last).symlink_to(world / "victim.txt")
    refused(["train", "--resume", run, "--steps", "400"], world, capsys, "link")
    refused(["eval", run], world, capsys, "link")


def test_bad_step_fields_are_refused(world, capsys):
    run = world / "run"
    for change in ({"step": "abc"}, {"step": -1}, {"size": None}, {"sha256": "x"},
                   {"step": 7}):  # step 7 does not match the file name
        data = manifest(run)
        data["checkpoints"][-1].update(change)
        write_manifest(run, data)
        refused(["train", "--resume", run, "--steps", "400"], world, capsys, "manifest")


# 2. a deleted manifest is rebuilt, never a reason to start over ---------------------------------
def test_missing_manifest_is_rebuilt_from_verified_files(world, capsys):
    run = world / "run"
    (run / "checkpoints" / "manifest.json").unlink()
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert "rebuilt" not in capsys.readouterr().out
    rows_before = metrics_lines(run)
    assert main(["train", "--resume", str(run), "--steps", "400"]) == 0
    err = capsys.readouterr().err
    assert "starting the run over" not in err and "rebuilt it from" in err
    rows = metrics_lines(run)
    # history kept, then extended (the tail row of the finished run's last updates replaced)
    rows_before = [r for r in rows_before if '"window": "tail"' not in r]
    assert rows[: len(rows_before)] == rows_before
    assert json.loads(rows[-1])["step"] > 380  # the run went on to 400 env steps
    assert (run / "replay").is_dir() and (run / "tb").is_dir()


def test_no_loadable_checkpoint_but_history_is_refused(world, capsys):
    run = world / "run"
    (run / "checkpoints" / "manifest.json").unlink()
    for ckpt in (run / "checkpoints").glob("ckpt-*.pt"):
        ckpt.write_bytes(b"garbage")
    refused(["train", "--resume", run, "--steps", "400"], world, capsys, "nothing was changed")


def test_resuming_an_archive_is_refused_and_leaves_it_as_it_was(world, capsys):
    """An archived run (logs only, as bench/results/runs/ keeps them): no checkpoints, no lock
    file; the refused resume must not leave the lock file behind either."""
    run = world / "run"
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "replay")
    (run / ".lock").unlink()
    refused(["train", "--resume", run, "--steps", "400"], world, capsys, "nothing was changed")
    assert not (run / ".lock").exists()


# 3. --out into a folder that is not a run -------------------------------------------------------
def test_out_into_foreign_folder_is_refused(world, capsys):
    foreign = world / "mine"
    (foreign / "replay").mkdir(parents=True)
    (foreign / "notes.txt").write_text("notes")
    (foreign / "metrics.jsonl").write_text('{"step": 1}\n')
    (foreign / "replay" / "vector.npy").write_bytes(b"data")
    refused(["train", *FAST, "--steps", "300", "--out", foreign], world, capsys,
            "not a reverie run")


def test_out_into_empty_folder_and_half_made_start_work(world, capsys):
    empty = world / "empty"
    empty.mkdir()
    assert main(["train", *FAST, "--steps", "50", "--out", str(empty)]) == 0
    # a start that died before config.yaml: only the marker, the lock and replay files
    half = world / "half"
    (half / "replay").mkdir(parents=True)
    (half / ".reverie-run").write_text("a reverie run folder\n")
    (half / "replay" / "vector.npy").write_bytes(b"partial")
    assert main(["train", *FAST, "--steps", "50", "--out", str(half)]) == 0
    assert (half / "config.yaml").exists()


def test_out_is_a_file_is_refused(world, capsys):
    refused(["train", *FAST, "--out", world / "victim.txt"], world, capsys, "is a file")


# 4. damaged metrics lines ---------------------------------------------------------------------
@pytest.mark.parametrize("line", ["# a comment", "5", '{"no_step": 1}', "[1, 2]"])
def test_unreadable_metrics_line_is_an_error(world, capsys, line):
    run = world / "run"
    rows = metrics_lines(run)
    (run / "metrics.jsonl").write_text("\n".join([rows[0], line, *rows[1:]]) + "\n")
    refused(["train", "--resume", run, "--steps", "400"], world, capsys, "metrics.jsonl line 2")


def test_resume_keeps_rows_up_to_the_checkpoint(world, capsys):
    run = world / "run"
    rows = metrics_lines(run)
    # a kill mid-write leaves a cut last line: that one (only) is dropped on resume
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 30')
    assert main(["train", "--resume", str(run), "--steps", "400"]) == 0
    rows = [r for r in rows if '"window": "tail"' not in r]  # replaced by the extension
    assert metrics_lines(run)[: len(rows)] == rows


# 5. values that hang or silently do nothing ----------------------------------------------------
@pytest.mark.parametrize("override,fragment", [
    ("run.train_ratio=inf", "train_ratio"), ("run.train_ratio=nan", "train_ratio"),
    ("replay.capacity=1", "replay.capacity"), ("replay.tau=nan", "replay.tau"),
])
def test_values_that_cannot_train_are_refused(world, capsys, override, fragment):
    refused(["train", "--set", override, "--out", world / "new"], world, capsys, fragment)


def test_a_run_that_will_not_train_says_so(world, capsys):
    assert main(["train", *FAST, "--set", "run.prefill=500", "--steps", "300",
                 "--out", str(world / "new")]) == 0
    assert "does no training" in capsys.readouterr().err


# 6. flags with --resume ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", [["--env", "Acrobot-v1"], ["--preset", "cartpole"],
                                  ["--seed", "3"], ["--out", "elsewhere"],
                                  ["--backbone", "gru"]])
def test_resume_refuses_flags_it_cannot_honour(world, capsys, flag):
    refused(["train", "--resume", world / "run", *flag], world, capsys, "--resume")


def test_resume_refuses_sets_that_change_learning(world, capsys):
    refused(["train", "--resume", world / "run", "--set", "random.batch_size=3"], world, capsys,
            "cannot change when resuming")


def test_resume_accepts_a_fixed_key_said_again_with_its_own_value(world, capsys):
    before = snapshot(world)
    assert main(["train", "--resume", str(world / "run"), "--set", "seed=0", "--set",
                 "run.num_envs=1", "--show-config"]) == 0
    assert "agent: random" in capsys.readouterr().out and snapshot(world) == before
    refused(["train", "--resume", world / "run", "--set", "run.num_envs=2"], world, capsys,
            "cannot change when resuming")


@pytest.mark.parametrize("item, same", [
    ("seed=0", True), ("seed=0.0", True), ("seed=false", False), ("seed=1", False),
    ("run.bogus=null", False), ("run.num_envs=1", True), ("replay.sampler=dfs", True),
    ("replay.sampler=uniform", False), ("random.batch_size=null", False)])
def test_a_resume_value_counts_as_the_same_only_when_it_is(item, same):
    from reverie.config import _same_value, build_config

    cfg = build_config("random", ["replay.sampler=dfs"], {"seed": 0})
    assert _same_value(cfg, item.split("=")[0], item) is same


def test_mbpo_schedule_said_again_on_resume_is_the_same():
    from reverie.config import _same_value, build_config

    cfg = build_config("mbpo-pendulum", [])
    schedule = list(cfg.mbpo.schedule)
    item = f"mbpo.schedule=[{','.join(str(v) for v in schedule)}]"
    assert _same_value(cfg, "mbpo.schedule", item)


def test_resume_show_config_prints_and_changes_nothing(world, capsys):
    before = snapshot(world)
    assert main(["train", "--resume", str(world / "run"), "--steps", "900",
                 "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "steps: 900" in out and "agent: random" in out
    assert snapshot(world) == before


def test_resume_honours_safe_sets(world, capsys):
    run = world / "run"
    assert main(["train", "--resume", str(run), "--steps", "400",
                 "--set", "run.log_every=20"]) == 0
    steps = [json.loads(r)["step"] for r in metrics_lines(run) if "grad_steps" in r]
    assert 320 in steps and 380 in steps  # logged every 20 steps after the resume
    assert "log_every: 20" in (run / "config.yaml").read_text()


# 7. values that crashed ----------------------------------------------------------------------
@pytest.mark.parametrize("argv,fragment", [
    (["--set", "run.threads=100000"], "run.threads"),
    (["--seed", str(2**64)], "seed"),
    (["--set", "env.id=${nope}"], "env.id"),
    (["--set", "agent.nonsense=1"], "imagine."),
    (["--set", "run.steps.x=1"], "not a section"),
])
def test_values_that_crashed_are_refused(world, capsys, argv, fragment):
    refused(["train", *argv, "--out", world / "new"], world, capsys, fragment)


@pytest.mark.parametrize("edit,fragment", [
    (lambda t: t.replace("log_every: 250", "log_every: 0"), "log_every"),
    (lambda t: t.replace("seed: 0", "seed: -4"), "seed"),
    (lambda t: t.replace("id: CartPole-v1", "id: ${nope}"), "env.id"),
    (lambda t: t + "\n  bad: [unclosed\n", "fix that line"),
    (lambda t: t.replace("sampler: dfs", "sampler: dsf"), "did you mean 'dfs'"),
])
def test_edited_config_yaml_is_validated_on_resume(world, capsys, edit, fragment):
    path = world / "run" / "config.yaml"
    path.write_text(edit(path.read_text()))
    err = refused(["train", "--resume", world / "run"], world, capsys, fragment)
    assert "config.yaml" in err and "metrics" not in err


# 8. messages that point at real fixes --------------------------------------------------------
def test_missing_env_package_is_named(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "Box2D", None)  # as if box2d were not installed
    err = refused(["train", *FAST, "--env", "LunarLander-v3", "--out", world / "new"], world,
                  capsys, "needs a package that is not installed")
    assert "did you mean" not in err and "box2d" in err.lower()


def test_missing_mujoco_names_reverie_extra(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # as if mujoco were not installed
    for name in [m for m in sys.modules if m.startswith("gymnasium.envs.mujoco")]:
        # an earlier test in this process may have built a MuJoCo env: import them afresh
        monkeypatch.delitem(sys.modules, name)
    err = refused(["train", *FAST, "--env", "InvertedPendulum-v5", "--out", world / "new"],
                  world, capsys, "pip install 'reverie[mujoco]'")
    assert "needs a package that is not installed" in err


def test_eval_prints_its_result_when_it_cannot_save_it(world, capsys):
    run = world / "run"
    (run / "eval.json").mkdir()  # as if the run folder could not take the file
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["episodes"] == 1
    assert "could not save" in captured.err and "--out" in captured.err
    assert main(["eval", str(run), "--episodes", "1", "--out", str(world / "e.json")]) == 0
    assert json.loads((world / "e.json").read_text())["episodes"] == 1


def test_set_backbone_drops_the_presets_backbone_options():
    cfg = build_config("cartpole", ["imagine.world.backbone=gru"])
    assert cfg.imagine.world.backbone == "gru" and dict(cfg.imagine.world.backbone_kwargs) == {}
    cfg = build_config("cartpole", ["imagine.world.backbone=mamba2"])
    assert dict(cfg.imagine.world.backbone_kwargs) == {"head_dim": 32}  # unchanged backbone


def test_checkpoint_copied_out_of_its_run_loads(world):
    run = world / "run"
    last = manifest(run)["checkpoints"][-1]["file"]
    copy = world / "elsewhere.pt"
    shutil.copy(run / "checkpoints" / last, copy)
    policy = reverie.load(copy)
    obs, _ = make_env("CartPole-v1").reset(seed=0)
    action, _ = policy.act(obs)
    assert action in (0, 1)


def test_run_folder_with_a_link_is_refused(world, capsys):
    (world / "run" / "timing.jsonl").unlink()
    (world / "run" / "timing.jsonl").symlink_to(world / "victim.txt")
    refused(["train", "--resume", world / "run", "--steps", "400"], world, capsys, "link")


# fuzzing: any manifest or config.yaml content gives exit 0 or one line + exit 2, never touches
# a file outside the run, and on exit 2 changes nothing -----------------------------------------
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
              st.sampled_from(["", "..", "../config.yaml", "/tmp", "ckpt-0000000000.pt",
                               "ckpt-0000000300.pt", "ckpt-1.pt", "manifest.json", "../../x"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["file", "step", "sha256", "size",
                                                             "checkpoints", "x"]), inner,
                                            max_size=4)),
    max_leaves=8)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=JSONISH, keep_real=st.booleans())
def test_fuzzed_manifest(finished_run, tmp_path_factory, data, keep_real):
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    shutil.copytree(finished_run, run)
    (root / "victim.txt").write_text("precious")
    if keep_real and isinstance(data, dict):
        data = {"checkpoints": manifest(run)["checkpoints"] + [data]}
    write_manifest(run, data)
    outside = (root / "victim.txt").read_bytes()
    before = snapshot(run)
    code = main(["train", "--resume", str(run), "--steps", "320", "--no-progress"])
    assert code in (0, 2)
    assert (root / "victim.txt").read_bytes() == outside
    if code == 2:
        assert snapshot(run) == before
    assert CheckpointStore(run / "checkpoints").checkpoint_files()  # never all deleted


YAMLISH = st.one_of(
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(["agent", "seed", "env", "run", "replay", "random"]),
                    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=6),
                              st.dictionaries(st.sampled_from(["id", "steps", "log_every",
                                                               "capacity", "batch_size"]),
                                              st.one_of(st.integers(-3, 400), st.text(max_size=5),
                                                        st.none()), max_size=3)),
                    max_size=4))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(content=YAMLISH)
def test_fuzzed_config_yaml(finished_run, tmp_path_factory, content):
    import yaml

    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    shutil.copytree(finished_run, run)
    text = content if isinstance(content, str) else yaml.safe_dump(content)
    (run / "config.yaml").write_text(text)
    before = snapshot(run)
    code = main(["train", "--resume", str(run), "--steps", "320", "--no-progress"])
    assert code in (0, 2)
    if code == 2:
        assert snapshot(run) == before
