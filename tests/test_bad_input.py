"""User mistakes: each gives one line naming the fix, exit code 2, no traceback, no lost data."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from gymnasium.spaces import Discrete
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reverie.cli import main
from reverie.config import build_config, save_config
from reverie.errors import UserError
from reverie.run.agent import build_agent

FAST = ["--preset", "random", "--no-progress", "--set", "run.eval_episodes=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", *FAST, "--steps", "300", "--out", str(run)]) == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def corrupt_all(run: Path) -> None:
    for ckpt in (run / "checkpoints").glob("ckpt-*.pt"):
        ckpt.write_bytes(b"not a checkpoint")


def truncate_all(run: Path) -> None:
    for ckpt in (run / "checkpoints").glob("ckpt-*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])


def change_agent(run: Path) -> None:
    save_config(build_config("cartpole"), run / "config.yaml")  # an imagine-agent config


def bad_manifest(run: Path) -> None:
    (run / "checkpoints" / "manifest.json").write_text("{not json")


# (name, argv, expected fragment of the message). "{run}" is a copy of a finished run,
# "{tmp}" a fresh folder; `prepare` damages the copy first.
CASES = [
    ("unknown preset", ["train", "--preset", "cartpoel"], "did you mean 'cartpole'"),
    ("unknown env id", ["train", *FAST, "--env", "CartPole-v9"], "unknown environment"),
    ("env typo", ["train", *FAST, "--env", "CartPol-v1"], "did you mean 'CartPole-v1'"),
    ("unknown backbone", ["train", "--backbone", "mamba3"], "did you mean 'mamba2'"),
    ("unknown config key", ["train", "--set", "run.stpes=10"], "did you mean 'run.steps'"),
    ("unknown section", ["train", "--set", "optim.lr=1"], "unknown config key"),
    ("wrong value type", ["train", "--set", "run.steps=many"], "run.steps"),
    ("float for int", ["train", "--set", "replay.capacity=1.5"], "replay.capacity"),
    ("negative steps", ["train", "--steps", "-5"], "must be positive"),
    ("zero steps", ["train", "--steps", "0"], "must be positive"),
    ("non-integer seed", ["train", "--seed", "abc"], "whole number"),
    ("train ratio 0", ["train", "--set", "run.train_ratio=0"], "train_ratio must be > 0"),
    ("negative prefill", ["train", "--set", "run.prefill=-1"], "prefill"),
    ("keep 0 checkpoints", ["train", "--set", "run.keep_checkpoints=0"], "keep_checkpoints"),
    ("unknown sampler", ["train", "--set", "replay.sampler=dsf"], "did you mean 'dfs'"),
    ("unknown optimizer", ["train", "--set", "imagine.world_optimizer=lapro"],
     "did you mean 'laprop'"),
    ("unknown agent", ["train", "--set", "agent=dreamer"], "unknown agent"),
    ("--agent typo", ["train", "--agent", "mbpoo"], "did you mean 'mbpo'"),
    ("--agent against its preset", ["train", "--agent", "mbpo", "--preset", "cartpole"],
     "--preset one of mbpo's: mbpo-pendulum, "),
    ("agent set over another agent's preset", ["train", "--set", "agent=mbpo"],
     "use --agent mbpo (preset mbpo-pendulum), or --preset one of mbpo's: "),
    ("--agent against --set agent", ["train", "--agent", "random", "--set", "agent=imagine"],
     "--agent random and agent=imagine (--set/--grid) disagree"),
    ("sweep --agent against --grid agent", ["sweep", "--agent", "mbpo", "--grid",
                                            "agent=mbpo,rppo", "--out", "{tmp}/sw"],
     "disagree"),
    ("--agent with a preset file naming no agent",
     ["train", "--agent", "mbpo", "--preset", "{tmp}/no-agent.yaml"],
     "names no agent (so it is imagine's); add `agent: mbpo` to it, or `base: mbpo-pendulum`"),
    ("--out on a resume", ["train", "--resume", "{run}", "--out", "{tmp}/elsewhere"],
     "a run continues in its own folder"),
    ("--agent on a resume", ["train", "--resume", "{run}", "--agent", "rppo"],
     "--agent cannot be used with --resume"),
    ("sweep --agent against its preset", ["sweep", "--agent", "random", "--preset", "cartpole",
                                          "--out", "{tmp}/sw"], "is for agent 'imagine'"),
    ("sweep into a run folder", ["sweep", "--preset", "random", "--steps", "50", "--out",
                                 "{run}"], "is a run folder"),
    ("sweep into someone else's folder", ["sweep", "--preset", "random", "--steps", "50",
                                          "--out", "{tmp}"], "is not a reverie sweep"),
    ("sweep grid a replay agent cannot run", ["sweep", "--preset", "random", "--steps", "50",
                                              "--set", "replay.capacity=40",
                                              "--grid", "run.num_envs=1,4", "--out",
                                              "{tmp}/sw"],
     "set replay.capacity >= 64 (trial run.num_envs=4)"),
    ("negative threads", ["train", "--set", "run.threads=-1"], "run.threads must be >= 0"),
    ("text for a number", ["train", "--set", "run.train_ratio=abc"],
     "bad value for 'run.train_ratio': 'abc' is not a number; write e.g. run.train_ratio="),
    ("a fraction for a count", ["train", "--set", "run.steps=1.5"],
     "'1.5' is not a whole number; write e.g. run.steps=5000"),
    ("a word for a switch", ["train", "--set", "run.keep_best=maybe"],
     "'maybe' is not true or false; write e.g. run.keep_best=true"),
    ("a flag and a --set of its key disagree (the --set won in silence)",
     ["train", "--steps", "500", "--set", "run.steps=700"],
     "--steps 500 and --set run.steps=700 both set run.steps; give one of them"),
    ("a resume's --steps and a --set of run.steps disagree (the flag won in silence)",
     ["train", "--resume", "{run}", "--steps", "500", "--set", "run.steps=700"],
     "--steps 500 and --set run.steps=700 both set run.steps; give one of them"),
    ("a misspelt key on a resume (it was called a key that cannot change)",
     ["train", "--resume", "{run}", "--set", "run.eval_evry=100"],
     "unknown config key 'run.eval_evry' (did you mean 'run.eval_every'?)"),
    ("a setting whose default is null (the message suggested the text None)",
     ["train", "--agent", "mbpo", "--set", "mbpo.sac.target_entropy=abc", "--show-config"],
     "'abc' is not a number; write e.g. mbpo.sac.target_entropy=null"),
    ("a number for a list (omegaconf's node classes in the message)",
     ["train", "--agent", "mbpo", "--set", "mbpo.schedule=5", "--show-config"],
     "bad value for 'mbpo.schedule': it takes a list; write e.g. mbpo.schedule=[20,150,1,1]"),
    ("a word in a list of numbers", ["train", "--agent", "mbpo", "--set",
                                     "mbpo.schedule=[1,2,a,4]", "--show-config"],
     "bad value for 'mbpo.schedule[2]': 'a' is not a whole number"),
    ("a number for a mapping", ["train", "--agent", "rppo", "--set", "rppo.backbone_kwargs=5",
                                "--show-config"],
     "bad value for 'rppo.backbone_kwargs': it takes a mapping; write e.g. "
     "rppo.backbone_kwargs={}"),
    ("a width the backbone's default option does not divide (which key sets it?)",
     ["train", "--agent", "rppo", "--set", "rppo.backbone=mamba2", "--set", "rppo.d_model=30",
      "--show-config"],
     "use one of [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60] (backbone options live in "
     "rppo.backbone_kwargs)"),
    ("a mapping for a list setting (it said: set leaf keys such as run.steps)",
     ["train", "--agent", "mbpo", "--set", "mbpo.schedule={a: 1}", "--show-config"],
     "bad value for 'mbpo.schedule': it takes a list; write e.g. mbpo.schedule=[20,150,1,1]"),
    ("another agent's option on a resume (it said: unknown config key 'rppo')",
     ["train", "--resume", "{run}", "--set", "rppo.d_model=64"],
     "'rppo.d_model' is an option of agent rppo, and this run's agent is random"),
    ("an option gru does not take, from the rppo config",
     ["train", "--agent", "rppo", "--set", "rppo.backbone=gru", "--set",
      "rppo.backbone_kwargs.foo=1", "--show-config"],
     "gru takes no options, got ['foo']; remove them (only d_model and n_layers apply) "
     "(backbone options live in rppo.backbone_kwargs)"),
    ("SAC's log-std bounds crossed (the clamp pinned log sigma in silence)",
     ["train", "--agent", "mbpo", "--set", "mbpo.sac.log_std_min=5", "--show-config"],
     "mbpo.sac.log_std_min (5.0) must be below log_std_max (2.0)"),
    ("env.obs=image for a vector env and an agent whose presets are not sized by it",
     ["train", "--agent", "rppo", "--set", "env.obs=image", "--show-config"],
     "gives vector observations but env.obs=image; set env.obs=vector (or any), or drop"),
    ("--backbone against --set of the backbone",
     ["train", "--backbone", "gru", "--set", "imagine.world.backbone=mamba2"],
     "--backbone gru and --set imagine.world.backbone=mamba2 both set imagine.world.backbone"),
    ("--env against --set env.id", ["sweep", "--env", "Pendulum-v1", "--set",
                                    "env.id=CartPole-v1", "--out", "{tmp}/sw"],
     "--env Pendulum-v1 and --set env.id=CartPole-v1 both set env.id"),
    ("a whole section set to a value, then one of its keys",
     ["train", "--set", "env=Acrobot-v1", "--set", "env.prev_reward=true"],
     "'env' is a section of settings, not one setting; set its keys, e.g. --set env.id="),
    ("a section through --no-progress", ["train", "--set", "run=async", "--no-progress"],
     "'run' is a section of settings"),
    ("sweep --set seed", ["sweep", "--preset", "random", "--seeds", "2", "--set", "seed=5",
                          "--out", "{tmp}/sw"], "drop --set seed and use --seeds N"),
    ("sweep --grid seed", ["sweep", "--preset", "random", "--grid", "seed=1,2", "--out",
                           "{tmp}/sw"], "drop --grid seed and use --seeds N"),
    ("run.vector typo", ["train", "--set", "run.vector=asnyc"], "did you mean 'async'"),
    ("a top-level setting under a section", ["train", "--set", "run.seed=3"],
     "unknown config key 'run.seed' (did you mean 'seed'?)"),
    ("bad device", ["train", "--set", "run.device=tpu"], "run.device"),
    ("run.compile typo", ["train", "--set", "run.compile=onn"], "did you mean 'on'"),
    # YAML reads off/on as booleans: the error quoted them back as 'False' / 'True'
    ("a mode YAML reads as a boolean", ["train", "--agent", "mbpo", "--set", "mbpo.mode=off",
                                        "--show-config"],
     "unknown mbpo.mode 'off'; choose one of: mbpo, conservative, optimistic, coplanner (mbpo: "
     "plain MBPO, no UP-MPC)"),
    ("imagine's mode YAML reads as a boolean", ["train", "--set", "imagine.coplanner.mode=on"],
     "imagine.coplanner.mode must be one of off, conservative, optimistic, coplanner, got 'on'"),
    ("bad image size", ["train", "--set", "env.image_size=50"], "image_size"),
    ("set without =", ["train", "--set", "run.steps"], "key=value"),
    ("empty --resume (an unset shell variable)", ["train", "--resume", ""],
     "argument --resume: is empty"),
    ("empty preset", ["train", "--preset", "", "--show-config"], "argument --preset: is empty"),
    ("empty report folder", ["report", "{run}", "--out", ""], "argument --out: is empty"),
    ("empty run to eval", ["eval", ""], "argument run: is empty"),
    ("empty sweep folder", ["sweep", "--preset", "random", "--out", ""],
     "argument --out: is empty"),
    ("show-config of a backbone option typo", ["train", "--backbone", "mamba2", "--set",
     "imagine.world.backbone_kwargs.head_dimm=32", "--show-config"],
     "backbone 'mamba2' has no option 'head_dimm' (did you mean 'head_dim'?)"),
    ("show-config of an option the backbone does not take", ["train", "--backbone", "gru",
     "--set", "imagine.world.backbone_kwargs.head_dim=32", "--show-config"],
     "gru takes no options"),
    ("set with an empty value", ["train", "--set", "run.vector="],
     "--set run.vector= gives no value; write run.vector=VALUE"),
    ("unknown flag", ["train", "--stpes", "10"],
     "unrecognized arguments: --stpes 10 (did you mean '--steps'?); see `reverie train --help`"),
    ("an option's prefix is not the option", ["sweep", "--seed", "3", "--out", "{tmp}/sw"],
     "did you mean '--seeds'"),
    ("unknown command", ["trian"], "invalid choice"),
    ("show-config of an env typo", ["train", *FAST, "--env", "minatar:pacman",
                                    "--show-config"], "unknown MinAtar"),
    ("show-config of an image env with a vector preset",
     ["train", "--env", "ALE/Pong-v5", "--show-config"], "use --preset atari100k"),
    ("sweep of an image env with a vector preset",
     ["sweep", "--env", "CartPole-v1", "--env", "ALE/Pong-v5", "--out", "{tmp}/sw"],
     "use --preset atari100k"),
    ("sweep of an env the agent cannot act in",
     ["sweep", "--agent", "mbpo", "--env", "CartPole-v1", "--out", "{tmp}/sw"],
     "agent mbpo cannot run env 'CartPole-v1': mbpo needs continuous (1-D Box) actions"),
    ("show-config of an env the agent cannot act in",
     ["train", "--agent", "mbpo", "--env", "CartPole-v1", "--show-config"],
     "for discrete actions use the imagine agent"),
    ("mbpo on images", ["train", "--agent", "mbpo", "--env", "ALE/Pong-v5", "--steps", "10",
                        "--out", "{tmp}/pong"],
     "mbpo takes 1-D vector observations, but the env gives images; use a state-based env"),
    ("a replay key for an agent without the replay",
     ["train", "--agent", "mbpo", "--set", "replay.capacity=1000"],
     "replay.capacity has no effect on agent mbpo"),
    ("train ratio for an agent with its own schedule",
     ["train", "--agent", "rppo", "--set", "run.train_ratio=256"],
     "run.train_ratio has no effect on agent rppo: it keeps its own update schedule"),
    ("another agent's option", ["train", "--agent", "mbpo", "--set",
                                "imagine.coplanner.mode=coplanner"],
     "is an option of agent imagine, and this run's agent is mbpo (did you mean 'mbpo.mode'?)"),
    ("a preset file setting a key the agent never reads",
     ["train", "--preset", "{tmp}/mbpo-ratio.yaml", "--show-config"],
     "run.train_ratio has no effect on agent mbpo"),
    ("show-config of an Atari typo", ["train", "--preset", "atari100k", "--env", "ALE/Pongg-v5",
                                      "--show-config"], "did you mean 'ALE/Pong-v5'"),
    ("image env, vector preset", ["train", "--env", "ALE/Pong-v5", "--steps", "10",
                                  "--out", "{tmp}/pong"], "use --preset atari100k"),
    ("unknown minatar game", ["train", *FAST, "--env", "minatar:pacman"], "unknown MinAtar"),
    ("agent without backbone", ["train", *FAST, "--backbone", "gru"], "takes no backbone"),
    ("run folder exists", ["train", *FAST, "--out", "{run}"], "already holds a run"),
    ("resume missing run", ["train", "--resume", "{tmp}/nope"], "no run there"),
    ("eval missing run", ["eval", "{tmp}/nope"], "no run or checkpoint"),
    ("watch missing run", ["watch", "{tmp}/nope"], "no run or checkpoint"),
    ("eval a folder that is not a run", ["eval", "{tmp}"], "not a reverie run folder"),
    ("corrupt checkpoints", ["eval", "{run}"], "corrupt"),
    ("truncated checkpoints", ["train", "--resume", "{run}"], "corrupt"),
    ("checkpoint of another agent", ["train", "--resume", "{run}"], "from agent 'random'"),
    ("damaged manifest", ["eval", "{run}"], "not a valid manifest"),
    ("checkpoint file is not one", ["eval", "{run}/config.yaml"], "not a reverie checkpoint"),
    ("unwritable run folder", ["train", *FAST, "--out", "/proc/reverie-run"], "not writable"),
    ("bad world-model size", ["train", "--set", "imagine.world.d_model=-4"], "d_model"),
    ("missing extra", ["train", *FAST, "--env", "dmc:walker-walk"], "pip install 'reverie[dmc]'"),
    ("negative seed", ["train", "--seed", "-1"], "non-negative"),
    ("eval with a negative seed", ["eval", "{run}", "--seed", "-5"], "non-negative"),
    ("watch --out not a GIF", ["watch", "{run}", "--out", "{tmp}/w.mp4"], "must be a .gif"),
    ("watch --out a folder", ["watch", "{run}", "--out", "{tmp}"], "must be a .gif"),
    ("watch --out in a missing folder", ["watch", "{run}", "--out", "{tmp}/nope/w.gif"],
     "does not exist"),
    ("unimix out of range", ["train", "--set", "imagine.world.unimix=1"], "unimix"),
    # checked when the config is built (--show-config, a sweep's pre-check), not at build time
    ("unknown actor-critic targets", ["train", "--set", "imagine.behavior.targets=dreamer",
                                      "--show-config"], "did you mean 'dreamerv3'"),
    ("unknown free-bits mode", ["train", "--set", "imagine.world.free_bits_mode=episode",
                                "--show-config"], "imagine.world.free_bits_mode must be one of"),
    ("world-model size shown", ["train", "--set", "imagine.world.mlp_layers=0", "--show-config"],
     "imagine.world.mlp_layers must be >= 1"),
    ("POPGym id typo", ["train", "--agent", "rppo", "--env", "popgym-RepeatPreviousEasyy-v0",
                        "--show-config"], "did you mean 'popgym-RepeatPreviousEasy-v0'"),
    ("rollout not a multiple of the sequence", ["train", "--agent", "rppo", "--set",
                                                "rppo.rollout_length=100", "--show-config"],
     "must be a multiple of rppo.seq_len"),
    ("mbpo mode typo", ["train", "--agent", "mbpo", "--set", "mbpo.mode=coplaner"],
     "did you mean 'coplanner'"),
    ("UP-MPC horizon 0", ["train", "--agent", "mbpo", "--set", "mbpo.upmpc.horizon=0"],
     "mbpo.upmpc.horizon must be >= 1"),
    ("imagined COPlanner horizon 0", ["train", "--set", "imagine.coplanner.horizon=0"],
     "imagine.coplanner.horizon must be >= 1"),
    ("a zero learning rate", ["train", "--set", "imagine.behavior.lr_critic=0", "--show-config"],
     "imagine.behavior.lr_critic must be positive"),
    ("a SAC setting shown", ["train", "--agent", "mbpo", "--set", "mbpo.sac.gamma=2",
                             "--show-config"],
     "reverie: error: mbpo.sac.gamma must be in [0, 1], got 2.0; use 0.99"),
    ("SAC sizes of zero (a message about several keys keeps its section)",
     ["train", "--agent", "mbpo", "--set", "mbpo.sac.hidden=0", "--show-config"],
     "bad mbpo.sac config: SAC hidden, layers and batch_size must be >= 1"),
    ("a negative SAC learning rate", ["train", "--agent", "mbpo", "--set", "mbpo.sac.lr_actor=-1",
                                      "--show-config"], "mbpo.sac.lr_actor must be positive"),
    ("discount out of range", ["train", "--set", "imagine.behavior.gamma=1.5"], "gamma"),
    ("lambda out of range", ["train", "--set", "imagine.behavior.lam=-0.1", "--show-config"],
     "imagine.behavior.lam must be in [0, 1]"),
    ("actor-critic optimizer typo", ["train", "--set", "imagine.behavior.optimizer=lapro",
                                     "--show-config"], "did you mean 'laprop'"),
    ("atari game typo", ["train", "--preset", "atari100k", "--env", "ALE/Pongg-v5"],
     "did you mean 'ALE/Pong-v5'"),
    ("section overridden", ["train", "--set", "run=[]", "--set", "run.steps=3"],
     "'run' is a section of settings"),
    ("missing preset file", ["train", "--preset", "{tmp}/mine.yaml"], "cannot read preset file"),
    ("preset file is a list", ["train", "--preset", "{tmp}/list.yaml"], "must be a mapping"),
    ("preset file bad YAML", ["train", "--preset", "{tmp}/broken.yaml"], "not valid YAML"),
    ("preset file key typo", ["train", "--preset", "{tmp}/typo.yaml"], "did you mean 'run.steps'"),
]
PRESET_FILES = {"list.yaml": "- run\n- steps\n", "broken.yaml": "run: {steps: [\n",
                "typo.yaml": "base: random\nrun:\n  stpes: 10\n",
                "no-agent.yaml": "run: {steps: 100}\n",
                "mbpo-ratio.yaml": "base: mbpo-pendulum\nrun: {train_ratio: 8}\n"}
PREPARE = {
    "corrupt checkpoints": corrupt_all,
    "truncated checkpoints": truncate_all,
    "checkpoint of another agent": change_agent,
    "damaged manifest": bad_manifest,
}


@pytest.mark.parametrize("name,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, fragment, finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run folders land in tmp_path/runs
    run = copy_run(finished_run, tmp_path / "run")
    if name in PREPARE:
        PREPARE[name](run)
    if name == "missing extra":
        monkeypatch.setitem(sys.modules, "dm_control", None)  # import fails as if absent
    for file, text in PRESET_FILES.items():
        (tmp_path / file).write_text(text)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pong").exists()
    assert err.startswith("reverie: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    assert fragment in err, err
    if name not in PREPARE:  # no data lost: the finished run is untouched
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert after == before


def test_at_least_25_distinct_mistakes():
    assert len({c[0] for c in CASES}) >= 25


KEYS = ["run.steps", "run.train_ratio", "run.prefill", "run.device", "seed", "env.id",
        "env.image_size", "replay.sampler", "replay.capacity", "imagine.horizon",
        "imagine.world.backbone", "imagine.world.d_model", "imagine.behavior.gamma",
        "imagine.batch_size", "nonsense.key", "run", "imagine.world"]
VALUES = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                   st.sampled_from(["", "null", "[1,2]", "{a: 1}", "true", "mamba2", "1e-3"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
@example([("imagine.world.backbone", "0\n0")])  # found by the fuzzer: a two-line error
def test_config_fuzzing_never_tracebacks(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = build_config("cartpole", overrides)
        # a config that validates must also build its agent, or fail with a UserError
        # (sizes beyond a few thousand would only measure this machine's memory)
        if all(not isinstance(v, int) or v <= 4096 for _, v in pairs):
            build_agent(cfg, {"vector": ((4,), "float32")}, Discrete(2), torch.device("cpu"))
    except UserError as e:
        assert "\n" not in str(e)


def test_a_closed_pipe_is_no_traceback_and_loses_no_result(finished_run, tmp_path):
    """`reverie eval RUN | head -c 1`, `reverie presets | head -1`: the reader stops reading;
    the command ends quietly (141, the shell's code for SIGPIPE), its eval.json saved."""
    import json
    import os
    import subprocess

    run = copy_run(finished_run, tmp_path / "run")
    (run / "eval.json").write_text("stale")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered output
    for argv in (["eval", str(run), "--episodes", "1"], ["presets"], ["report", str(run),
                 "--out", str(tmp_path / "rep")], ["--help"]):
        read, write = os.pipe()
        os.close(read)  # nobody reads: the first write of the result fails
        try:
            done = subprocess.run([sys.executable, "-m", "reverie", *argv], stdout=write,
                                  stderr=subprocess.PIPE, text=True, timeout=300, env=env)
        finally:
            os.close(write)
        assert done.returncode == 141 and done.stderr == "", (argv, done.stderr)
    assert json.loads((run / "eval.json").read_text())["episodes"] == 1


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    """Only a reader that has gone ends a command quietly: an env worker's or Ray's broken
    pipe is an error as before."""
    import reverie.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_presets", broken)
    with pytest.raises(BrokenPipeError):
        main(["presets"])


@pytest.mark.parametrize("flags,fragment", [
    ({"step": 600}, "unknown flag 'step' (did you mean 'steps'?)"),
    ({"bogus": 1}, "unknown flag 'bogus'"),
    ({"steps": "600"}, "flag 'steps' must be an int, got str '600'"),
    ({"seed": True}, "flag 'seed' must be an int, got bool True"),
    ({"env": 3}, "flag 'env' must be a str"),
])
def test_build_config_says_what_is_wrong_with_its_flags(flags, fragment):
    """The README's Python entry: a misspelt or mistyped flag is not ignored or converted."""
    with pytest.raises(UserError, match=re.escape(fragment)):
        build_config("cartpole", [], flags)
    import numpy as np

    cfg = build_config("cartpole", [], {"steps": np.int64(600), "seed": None})
    assert cfg.run.steps == 600 and type(cfg.run.steps) is int


def test_more_threads_than_cores_is_said_once(tmp_path, monkeypatch, capsys):
    """run.threads=64 on a 2-core machine trained, slower, without a word."""
    from reverie.run import machine

    monkeypatch.setattr(machine, "usable_cores", lambda: 1)
    assert machine.threads_note(1) is None
    threads = torch.get_num_threads()
    try:
        assert main(["train", *FAST, "--steps", "20", "--set", "run.threads=2",
                     "--out", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.count("run.threads=2 is more than the 1 core this process may use") == 1
    assert "set run.threads=1 or 0 (all cores)" in err


@pytest.mark.parametrize("name, count, said", [
    ("cuda:1", 0, "run.device=cuda:1 but no CUDA device is visible"),
    ("cuda:2", 2, "run.device=cuda:2 but this machine has 2 CUDA devices (cuda:0..cuda:1)"),
    ("cuda:x", 1, "run.device=cuda:x is not a device; use cpu, cuda or cuda:N"),
])
def test_a_cuda_device_that_is_not_there_is_named(name, count, said, monkeypatch):
    """The message said run.device=cuda whatever was asked; a GPU index past the last one
    got as far as torch's CUDA error."""
    from reverie.run.agent import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(UserError, match=re.escape(said)):
        select_device(name)
    if count:
        assert select_device("cuda:0") == torch.device("cuda", 0)
    assert select_device("cpu:0") == torch.device("cpu", 0)  # the Python API's; no GPU check


def test_no_progress_is_the_commands_and_a_resume_that_trains_nothing_writes_nothing(
        finished_run, tmp_path, capsys):
    """--no-progress was saved into config.yaml, so every later resume of the run (and the
    config used as a preset) showed no progress, with no flag to undo it; and a resume that
    trains nothing (the run is complete) rewrote config.yaml with its --sets anyway."""
    run = copy_run(finished_run, tmp_path / "run")  # made with --no-progress
    text = (run / "config.yaml").read_text()
    assert "progress: true" in text
    assert main(["train", "--resume", str(run), "--no-progress",
                 "--set", "run.eval_every=100"]) == 0
    assert "already complete" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == text


def test_a_resume_that_only_runs_the_missing_final_evaluation_records_its_settings(tmp_path,
                                                                                  capsys):
    """A complete run without its final evaluation, resumed with run.eval_episodes=2: the
    evaluation it then runs is logged, so config.yaml must say 2 (a report reads it), while
    a lower --steps does not shrink the budget it records. A run that never evaluated gets
    no evaluation from a resume that asks for one (none missed; appended, it would be no
    uninterrupted run's)."""
    run = tmp_path / "run"
    assert main(["train", *FAST, "--steps", "120", "--set", "run.eval_episodes=1",
                 "--set", "run.eval_every=1000", "--out", str(run)]) == 0
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(x + "\n" for x in metrics.read_text().splitlines()
                               if '"eval/return"' not in x))
    assert main(["train", "--resume", str(run), "--steps", "60",
                 "--set", "run.eval_episodes=2"]) == 0
    assert "evaluating its final agent" in capsys.readouterr().err
    text = (run / "config.yaml").read_text()
    assert "eval_episodes: 2" in text and "steps: 120" in text
    assert '"eval/return"' in metrics.read_text()
    never = tmp_path / "never"
    assert main(["train", *FAST, "--steps", "120", "--out", str(never)]) == 0  # no evaluations
    files = {p: p.read_bytes() for p in never.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(never), "--set", "run.eval_episodes=2"]) == 0
    assert "evaluating" not in capsys.readouterr().err
    assert {p: p.read_bytes() for p in never.rglob("*") if p.is_file()} == files


def test_load_takes_a_torch_device_or_none_and_refuses_devices_reverie_does_not_run_on(
        finished_run):
    """reverie.load(run, device=...) from Python: torch.device("cpu") and None raised
    AttributeError; "meta" loaded a policy that could not act."""
    import reverie

    for device in (torch.device("cpu"), None, "cpu"):
        reverie.load(finished_run, device=device)  # raised AttributeError for the first two
    for device in ("meta", "mps"):
        with pytest.raises(UserError, match="^device=.*: reverie runs on cpu or cuda"):
            reverie.load(finished_run, device=device)
    # named as the argument it is (the config's run.device is a training run's), with cpu
    with pytest.raises(UserError, match=re.escape("device=tpu is not a device; use cpu, cuda")):
        reverie.load(finished_run, device="tpu")


def test_a_broadcast_gate_takes_the_composite_norm():
    """The fused gated RMSNorm needs the gate's shape; a smaller gate broadcasts as before."""
    from reverie.sequence.mamba2 import rms_normalize

    y, z = torch.randn(3, 4, 8), torch.randn(1, 4, 8)
    got = rms_normalize(y, z)
    g = torch.nn.functional.silu(z) * y
    assert torch.allclose(got, g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5),
                          atol=1e-6)


def test_a_backbone_set_twice_takes_the_last_as_any_key_does():
    """The first `imagine.world.backbone=` became the --backbone flag, so a second one was
    refused as "--backbone gru and --set ... both set" though no flag was given."""
    cfg = build_config("cartpole", ["imagine.world.backbone=gru", "imagine.world.backbone=ffm"])
    assert cfg.imagine.world.backbone == "ffm"
    with pytest.raises(UserError, match="--backbone ffm and --set imagine.world.backbone=gru"):
        build_config("cartpole", ["imagine.world.backbone=gru"], {"backbone": "ffm"})


def test_a_flag_and_a_set_that_agree_are_accepted():
    """A sweep's trial gets --steps and its grid's --set run.steps=... with one value."""
    cfg = build_config("cartpole", ["run.steps=500", "seed=3", "env.id=Acrobot-v1"],
                       {"steps": 500, "seed": 3, "env": "Acrobot-v1"})
    assert (cfg.run.steps, cfg.seed, cfg.env.id) == (500, 3, "Acrobot-v1")


def test_a_refused_env_id_is_one_line_without_gymnasiums_warning():
    """ALE/Breakout-v4: Gymnasium warned "out of date" before refusing it, so the refusal
    came after two lines of its coloured warning; an env it does make keeps its warning."""
    import warnings

    from reverie.envs import make_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="did you mean 'ALE/Breakout-v5'"):
            make_env("ALE/Breakout-v4")
    assert caught == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_env("CartPole-v0").close()
    assert any("out of date" in str(w.message) for w in caught)


@pytest.mark.parametrize("args, fix", [
    (["--preset", "atari100k", "--env", "minatar:breakout"], "--preset minatar"),
    (["--preset", "cartpole", "--set", "env.obs=image"], "--preset cartpole"),
])
def test_an_observation_kind_the_env_does_not_give_names_the_preset_for_the_env(args, fix,
                                                                                capsys):
    """The world-model agent's message blamed "this preset" (also for the user's own --set
    env.obs=image) and offered cartpole or dmc-proprio for any vector env (a MinAtar one too)."""
    assert main(["train", *args, "--show-config"]) == 2
    err = capsys.readouterr().err
    assert "(from the preset or --set)" in err and f"use {fix} (or set env.obs=any)" in err
