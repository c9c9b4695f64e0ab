"""Training throughput side by side: reverie vs sheeprl's DreamerV3 (XS), CartPole-v1, CPU.

    python bench/throughput.py            # full: 32 timed updates per system
    python bench/throughput.py --quick    # smoke test: 2 timed updates per system

Both systems train from scratch in one process each, one after the other, on one
CartPole-v1 env with the same torch thread count, and the number reported is **env steps per
second while training**: acting, stepping the env, storing and the gradient updates, over a
window of env steps after learning starts.

Matched settings
* world-model batch 16 sequences x 64 steps, imagination horizon 15 from 1024 start states
  (sheeprl imagines from every state of the 16x64 batch; reverie samples 1024 contexts of 8
  replayed steps, warms its backbone on the first 7 and imagines from the last);
* one update (world-model step + actor-critic step) every `update_every` env steps:
  reverie `run.train_ratio` = 16*64 / update_every replayed steps per env step, sheeprl
  `algo.replay_ratio` = 1 / update_every gradient steps per policy step;
* `learning_starts` random-action steps before the first update for both;
* model size: sheeprl XS (dense 256, 1 MLP layer, GRU state 256, 32x32 latents); reverie
  backbone width 256 (1 layer), 32x32 latents, 1-layer heads, actor and critic 1x256 (their
  parameter counts equal sheeprl's exactly), and head width `REVERIE_HIDDEN`, chosen so
  the world model's parameter count matches sheeprl's (sheeprl's heads read [h, z], reverie's
  Drama-style heads read h, so at equal width reverie's world model would be ~30% smaller);
* no evaluation / test episodes, no videos, no model checkpoints inside the window;
* reverie runs once per backbone and `run.compile` setting (`--compile`, default `auto` and
  `on`: `auto` is reverie's default, which compiles the imagined step; `on` compiles its
  losses and the context warm-up too and builds its own kernels (the one-hot weight
  gradient, imagination's latent sample and, with mamba2, its Mamba-2 step), all in the
  first update or before it, outside the window); sheeprl runs eager, as it ships.

Timing. Each system's wall clock at given env steps comes from inside its own process:
reverie's `timing.jsonl` (`time/wall` every `update_every` env steps, taken after that step's
update); for sheeprl, a gymnasium wrapper (`sheeprl_timed_env`, put in place with
`env.wrapper._target_`) prints a timestamp at every env step. Throughput is
(b - a) / (t_b - t_a) over a window of `measure_updates * update_every` env steps that starts
`warmup_updates` updates after learning starts, aligned so that it holds exactly
`measure_updates` gradient updates of each system. Start-up, prefill and teardown are out.

Run it on an idle machine. With 2 torch threads on 2 cores, any other busy process makes
the threads wait on each other at every parallel region: on a shared 2-core machine both
systems slowed down 5-10x at 2 threads (sheeprl 31 s per update vs 3.7 s at 1 thread),
so the script warns when the load average is above `BUSY_LOAD` and records it per run;
`--threads 1` is the fallback when the machine cannot be emptied.

Compute bound. `compute_bound` counts the matmul/conv/attention FLOPs of one real reverie
update (torch's FlopCounterMode, forward + backward) and divides by the machine's fp32 matmul
peak: the fastest any implementation doing the same update could go, with zero time for the
env, Python, memory traffic and the non-matmul ops. `--bound-only` adds it to an existing
throughput.json without re-running the timed runs.

This script runs in reverie's venv; sheeprl runs from its own venv (see bench/peers/README.md;
`make bench` creates it). Only stdlib, numpy and gymnasium are imported at module level,
because sheeprl's process imports this module for the timed env wrapper.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHEEPRL_VENV = ROOT / ".venv-sheeprl"
STEP_TAG = "reverie-bench-step"
THREADS_TAG = "reverie-bench-threads"

ENV_ID = "CartPole-v1"
BATCH, SEQ_LEN, HORIZON = 16, 64, 15
IMAG_STARTS, CONTEXT = BATCH * SEQ_LEN, 8
SEED = 0
TARGET = 5.0  # reverie >= 5x sheeprl's env steps/s
# Head width that makes reverie's world model as large as sheeprl XS's (2.44M parameters on
# CartPole): reverie's heads read h (256-d), sheeprl's read [h, z] (1280-d).
REVERIE_HIDDEN = 432

FULL = {"update_every": 16, "learning_starts": 512, "warmup_updates": 2, "measure_updates": 32}
QUICK = {"update_every": 16, "learning_starts": 128, "warmup_updates": 1, "measure_updates": 2}
BUSY_LOAD = 0.5  # 1-min load average above which a 2-thread measurement is not trustworthy

REVERIE_MODEL = [
    "imagine.world.d_model=256", "imagine.world.n_layers=1",
    "imagine.world.stoch=32", "imagine.world.classes=32",
    f"imagine.world.hidden={REVERIE_HIDDEN}", "imagine.world.mlp_layers=1",
    "imagine.behavior.actor_hidden=256", "imagine.behavior.actor_layers=1",
    "imagine.behavior.critic_hidden=256", "imagine.behavior.critic_layers=1",
]

DIFFERENCES = [
    "heads: sheeprl's reward/continue/decoder heads read [h, z] (DreamerV3), reverie's read h "
    "(reward, continue, prior) or z (decoder) as in Drama/STORM; world-model parameter counts are "
    f"matched by widening reverie's heads to {REVERIE_HIDDEN} instead of 256",
    "posterior: sheeprl's reads [h, embed], reverie's reads the embedding alone",
    "imagination starts: sheeprl uses the 16x64 posterior states of the world-model batch; "
    f"reverie samples {IMAG_STARTS} separate {CONTEXT}-step contexts and warms its backbone on "
    f"{CONTEXT - 1} of them (extra no-grad work for reverie)",
    "sequence model: sheeprl's LayerNorm GRU cell stepped 64 times in Python; reverie's backbone "
    "(nn.GRU or Mamba-2) over the whole sequence at once",
    "logging: sheeprl runs with metric.log_level=0 (no metrics, no TensorBoard); reverie writes "
    "its normal JSONL + TensorBoard rows every update_every env steps",
    "env: sheeprl steps a 1-env SyncVectorEnv (in-process, same-step autoreset), reverie a plain "
    "gymnasium env",
]


# -- the timed env sheeprl builds (runs inside sheeprl's process) ------------------------
class _TimedEnv(gym.Wrapper):
    """Prints `STEP_TAG <n> <perf_counter>` before the n-th env step."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        print(f"{STEP_TAG} {self.steps} {time.perf_counter():.6f}", flush=True)
        return self.env.step(action)


def sheeprl_timed_env(id: str, **kwargs) -> gym.Env:  # hydra passes `id=`
    """`gymnasium.make(id, **kwargs)` wrapped in `_TimedEnv`; sheeprl's `env.wrapper._target_`."""
    import torch

    print(f"{THREADS_TAG} {torch.get_num_threads()}", flush=True)
    return _TimedEnv(gym.make(id, **kwargs))


def sheeprl_param_counts(overrides: list[str]) -> None:
    """Print sheeprl's parameter counts as JSON; runs in sheeprl's venv (see `_sheeprl_params`)."""
    from importlib.metadata import version

    import numpy as np
    from hydra import compose, initialize_config_module
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf
    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.utils.utils import dotdict

    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    env = gym.make(cfg.env.id)
    obs_space = gym.spaces.Dict({cfg.algo.mlp_keys.encoder[0]: gym.spaces.Box(
        -np.inf, np.inf, env.observation_space.shape, np.float32)})
    fabric = Fabric(accelerator="cpu", devices=1)
    world, actor, critic, _, _ = build_agent(fabric, [int(env.action_space.n)], False, cfg,
                                             obs_space)

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    parts = {k: count(getattr(world, k)) for k in
             ("encoder", "rssm", "observation_model", "reward_model", "continue_model")
             if getattr(world, k, None) is not None}
    print(json.dumps({"world_model": count(world), "actor": count(actor),
                      "critic": count(critic), "world_model_parts": parts,
                      "versions": {p: version(p) for p in ("sheeprl", "torch", "lightning")}}))


# -- commands ------------------------------------------------------------------------------
def window(s: dict) -> tuple[int, int]:
    """(a, b): env steps bounding the timed window in reverie's counting."""
    a = s["learning_starts"] + s["warmup_updates"] * s["update_every"]
    return a, a + s["measure_updates"] * s["update_every"]


def sheeprl_overrides(s: dict, threads: int, total: int, tmp: Path | None) -> list[str]:
    o = [
        "exp=dreamer_v3", "env=gym", f"env.id={ENV_ID}", "algo=dreamer_v3_XS",
        "fabric.accelerator=cpu", "fabric.devices=1", f"num_threads={threads}", f"seed={SEED}",
        "env.num_envs=1", "env.sync_env=True", "env.capture_video=False",
        "algo.cnn_keys.encoder=[]", "algo.cnn_keys.decoder=[]",
        "algo.mlp_keys.encoder=[state]", "algo.mlp_keys.decoder=[state]",
        f"algo.per_rank_batch_size={BATCH}", f"algo.per_rank_sequence_length={SEQ_LEN}",
        f"algo.horizon={HORIZON}", f"algo.replay_ratio={1 / s['update_every']}",
        f"algo.learning_starts={s['learning_starts']}", f"algo.total_steps={total}",
        "algo.run_test=False", f"buffer.size={total}", "buffer.memmap=False",
        "buffer.checkpoint=False", "checkpoint.every=0", "checkpoint.save_last=False",
        "metric.log_level=0",
    ]
    if tmp is not None:
        o += ["env.wrapper._target_=throughput.sheeprl_timed_env",
              f"log_root={tmp / 'logs'}", f"hydra.run.dir={tmp / 'hydra'}"]
    return o


def reverie_overrides(s: dict, threads: int) -> list[str]:
    return [
        f"imagine.batch_size={BATCH}", f"imagine.seq_len={SEQ_LEN}",
        f"imagine.horizon={HORIZON}", f"imagine.imag_batch={IMAG_STARTS}",
        f"imagine.context={CONTEXT}", f"run.train_ratio={BATCH * SEQ_LEN / s['update_every']}",
        f"run.prefill={s['learning_starts']}", "run.eval_episodes=0",
        f"run.threads={threads}", f"run.log_every={s['update_every']}",
        "run.checkpoint_every=1000000000", "replay.on_disk=false", *REVERIE_MODEL,
    ]


def _env(threads: int, extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path),
                                                          env.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], env: dict, cwd: Path, timeout: float) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                           timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = f"timeout after {timeout:.0f} s"
    return {"output": out, "rc": rc, "process_wall_s": round(time.perf_counter() - t0, 2),
            "loadavg_1min_before": round(load0, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def _rate(times: dict[int, float], a: int, b: int) -> float | None:
    if a not in times or b not in times or times[b] <= times[a]:
        return None
    return (b - a) / (times[b] - times[a])


def _periods(times: dict[int, float], a: int, b: int, period: int) -> list[float] | None:
    """Seconds of each `period` env steps (one update each) in the window: the spread shows
    how steady the machine was."""
    marks = list(range(a, b + 1, period))
    if any(m not in times for m in marks):
        return None
    return [round(times[m1] - times[m0], 3) for m0, m1 in zip(marks, marks[1:])]


def run_sheeprl(s: dict, threads: int, venv: Path, timeout: float) -> dict:
    a, b = window(s)
    # sheeprl stamps step n before it acts and trains on it, reverie after: shifting sheeprl's
    # window by one step puts the same updates (the same k-th ones) inside both windows.
    a, b = a + 1, b + 1
    with tempfile.TemporaryDirectory(prefix="bench-sheeprl-") as tmp:
        overrides = sheeprl_overrides(s, threads, b, Path(tmp))
        cmd = [str(venv / "bin" / "sheeprl"), *overrides]
        r = _run(cmd, _env(threads, ROOT / "bench"), Path(tmp), timeout)
    times, torch_threads = {}, None
    for line in r["output"].splitlines():
        if line.startswith(STEP_TAG):
            _, n, t = line.split()
            times[int(n)] = float(t)
        elif line.startswith(THREADS_TAG):
            torch_threads = int(line.split()[1])
    result = {
        "command": shlex.join(["sheeprl", *sheeprl_overrides(s, threads, b, Path("$TMP"))]),
        "total_env_steps": b, "window_env_steps": [a, b], "torch_threads": torch_threads,
        "env_steps_per_s": _rate(times, a, b),
        "seconds_per_update_period": _periods(times, a, b, s["update_every"]),
        **{k: v for k, v in r.items() if k != "output"},
    }
    if result["env_steps_per_s"] is None:
        result["error"] = r["output"][-3000:]
    return result


def run_reverie(s: dict, threads: int, backbone: str, timeout: float,
                compile_mode: str = "auto") -> dict:
    a, b = window(s)
    exe = Path(sys.executable).parent / "reverie"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "reverie"]
    with tempfile.TemporaryDirectory(prefix="bench-reverie-") as tmp:
        out = Path(tmp) / "run"
        args = ["train", "--backbone", backbone, "--steps", str(b), "--seed", str(SEED),
                "--no-progress", "--out", str(out)]
        for o in reverie_overrides(s, threads) + [f"run.compile={compile_mode}"]:
            args += ["--set", o]
        r = _run(base + args, _env(threads), ROOT, timeout)
        times = {}
        timing = out / "timing.jsonl"
        if timing.exists():
            for line in timing.read_text().splitlines():
                row = json.loads(line)
                times[int(row["step"])] = float(row["time/wall"])
    summary = {}
    for line in reversed(r["output"].splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    result = {
        "command": shlex.join(["reverie", *args]).replace(str(out), "$TMP/run"),
        "backbone": backbone, "compile": compile_mode, "total_env_steps": b,
        "window_env_steps": [a, b],
        "torch_threads": threads, "grad_steps": summary.get("grad_steps"),
        "env_steps_per_s": _rate(times, a, b),
        "seconds_per_update_period": _periods(times, a, b, s["update_every"]),
        **{k: v for k, v in r.items() if k != "output"},
    }
    if result["env_steps_per_s"] is None:
        result["error"] = r["output"][-3000:]
    return result


def summarise_rounds(rounds: list[dict]) -> dict:
    """One system's rounds: the median env steps/s as its number, min-max and every round."""
    values = [r["env_steps_per_s"] for r in rounds if r["env_steps_per_s"] is not None]
    out = dict(rounds[-1])
    out["env_steps_per_s"] = round(statistics.median(values), 3) if values else None
    out["env_steps_per_s_range"] = [round(min(values), 3), round(max(values), 3)] \
        if values else None
    keys = ("env_steps_per_s", "process_wall_s", "loadavg_1min_before", "loadavg_1min_after",
            "rc", "error")
    out["rounds"] = [{k: r[k] for k in keys if k in r} for r in rounds]
    return out


# -- parameter counts ----------------------------------------------------------------------
def _sheeprl_params(s: dict, threads: int, venv: Path) -> dict:
    code = "import sys, throughput; throughput.sheeprl_param_counts(sys.argv[1:])"
    cmd = [str(venv / "bin" / "python"), "-c", code, *sheeprl_overrides(s, threads, 1000, None)]
    p = subprocess.run(cmd, env=_env(threads, ROOT / "bench"), cwd=tempfile.gettempdir(),
                       capture_output=True, text=True, timeout=600)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (p.stdout + p.stderr)[-2000:]}


def _reverie_params(s: dict, threads: int, backbone: str) -> dict:
    import torch
    from omegaconf import OmegaConf

    from reverie.config import build_config
    from reverie.envs import make_env, make_obs_spec
    from reverie.run.agent import build_agent

    cfg = build_config("cartpole", reverie_overrides(s, threads), {"backbone": backbone})
    env = make_env(cfg.env.id, cfg.env.image_size)
    agent = build_agent(cfg, make_obs_spec(env.observation_space), env.action_space,
                        torch.device("cpu"))

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    behavior = agent.behavior
    return {"world_model": count(agent.world), "actor": count(behavior.actor),
            "critic": count(behavior.critic),
            "slow_critic_not_counted": count(behavior.slow_critic),
            "world_model_parts": agent.world.param_breakdown(),
            "imagine_config": OmegaConf.to_container(cfg.imagine)}


def reverie_update_flops(s: dict, backbone: str, extra: tuple[str, ...] = (),
                         dense: bool = False, scatter: bool = False) -> int:
    """Matmul/conv/attention FLOPs of one reverie update (forward + backward) at the same
    sizes (runlib.update_flops; `dense`: with the one-hot latent's products dense;
    `scatter`: with the one-hot weight gradients as run.compile=on computes them)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from runlib import update_flops

    starts = SEQ_LEN * 2
    over = reverie_overrides(s, 1) + [f"run.prefill={starts}",
                                      f"run.steps={starts + s['update_every']}", *extra]
    return update_flops("cartpole", over, {"backbone": backbone}, dense=dense, scatter=scatter)


def compute_bound(report: dict, peak_flops: float, peak_source: str) -> dict:
    """Fastest possible env steps/s of each reverie run if every counted FLOP ran at the
    machine's measured fp32 matmul peak and nothing else (env, Python, memory) took time.
    Counted are the matmuls the update executes; the one-hot latent's products are column
    sums (reverie/nets/onehot.py), not matmuls, and with run.compile=on so are the actor's and
    critic's one-hot weight gradients (row scatters, reverie/nets/onehot_kernel.py).
    `flops_per_update_dense` counts the one-hot products as the dense products they replace
    (the work of the update as computed before 2026-12-07), and
    `measured_fraction_of_peak_dense` is the measured rate in those FLOPs."""
    s = report["settings"]
    sps0 = report["runs"]["sheeprl"]["env_steps_per_s"]
    bound: dict = {"matmul_peak_flops": peak_flops, "peak_source": peak_source, "runs": {}}
    for name, run in report["runs"].items():
        if name == "sheeprl":
            continue
        scatter = run.get("compile") == "on"
        flops = reverie_update_flops(s, run["backbone"], scatter=scatter)
        # sheeprl starts imagination from the batch's posterior states; reverie warms its
        # backbone on CONTEXT - 1 replayed steps first: the bound without that extra work
        lean = reverie_update_flops(s, run["backbone"], ("imagine.context=1",), scatter=scatter)
        dense = reverie_update_flops(s, run["backbone"], dense=True)
        min_s = flops / peak_flops
        max_sps = s["update_every"] / min_s
        lean_sps = s["update_every"] * peak_flops / lean
        bound["runs"][name] = {
            "flops_per_update": flops, "flops_per_update_without_context": lean,
            "max_ratio_vs_sheeprl_without_context": round(lean_sps / sps0, 2) if sps0 else None,
            "min_seconds_per_update": round(min_s, 4),
            "max_env_steps_per_s": round(max_sps, 2),
            "max_ratio_vs_sheeprl": round(max_sps / sps0, 2) if sps0 else None,
            "measured_fraction_of_peak": round(
                flops * run["env_steps_per_s"] / s["update_every"] / peak_flops, 3)
            if run["env_steps_per_s"] else None,
            "flops_per_update_dense": dense,
            "measured_fraction_of_peak_dense": round(
                dense * run["env_steps_per_s"] / s["update_every"] / peak_flops, 3)
            if run["env_steps_per_s"] else None,
        }
    return bound


# -- where the time goes ------------------------------------------------------------------
BREAKDOWN_SKIP = 2  # updates before the clock starts: the first ones compile (run.compile)
BREAKDOWN_NESTED = {"update": ["replay sample", "world-model step", "imagination",
                               "actor-critic"],
                    "world-model step": ["world-model forward"]}


def reverie_breakdown(s: dict, threads: int, backbone: str, preset: str = "cartpole",
                      matched: bool = True, steps: int | None = None, skip: int = 0,
                      overrides: tuple[str, ...] = ()) -> dict:
    """Seconds per part of one in-process run: the matched sizes of this benchmark (or the
    preset as it is, matched=False), with `overrides`, timed from update `skip` + 1 (the
    first after the prefill by default) to the end. Parts are disjoint: 'world-model step' is
    backward + optimiser (its forward is its own part), 'update' is what the agent's update
    does besides its parts."""
    sys.path.insert(0, str(ROOT / "bench"))
    from reverie.allocator import keep_freed_memory
    from reverie.config import build_config
    from reverie.run import driver
    from reverie.run.driver import Trainer
    from runlib import PartTimer

    driver.plot_curve = lambda *a, **k: None  # once per run: not part of the steady state
    keep_freed_memory()  # as the `reverie` command does
    if matched:
        _, b = window(s)
        over = reverie_overrides(s, threads) + ["run.progress=false", *overrides]
        flags = {"backbone": backbone, "steps": b}
    else:
        over = ["run.progress=false", "run.eval_episodes=0", f"run.threads={threads}",
                "run.checkpoint_every=1000000000", *overrides]
        flags = {"backbone": backbone, "steps": steps}
    cfg = build_config(preset, over, flags)
    timer = PartTimer()
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        agent = trainer.agent
        open_run = trainer._open

        def opened() -> None:  # the replay is made when train() starts
            open_run()
            timer.wrap(trainer.replay, "sample", "replay sample")

        trainer._open = opened
        for obj, name, part in (
                (agent.world, "loss_terms", "world-model forward"),
                (agent, "train_world", "world-model step"),
                (agent, "imagine", "imagination"), (agent.behavior, "update", "actor-critic"),
                (agent, "update", "update"), (agent, "act", "act"),
                (trainer.envs, "step", "env step"), (trainer, "_log", "logging"),
                (trainer, "checkpoint", "checkpoint")):
            timer.wrap(obj, name, part)
        first: dict[str, float] = {}
        update = agent.update
        calls = [0]

        def mark_first(replay):  # the clock starts at update skip + 1, after prefill
            calls[0] += 1
            if not first and calls[0] > skip:
                first["t"] = time.perf_counter()
                for k in timer.seconds:
                    first[k] = timer.seconds[k]
                first["updates"] = timer.calls.get("update", 0)
            return update(replay)

        agent.update = mark_first
        trainer.train()
        wall = time.perf_counter() - first["t"]
        updates = timer.calls["update"] - int(first.pop("updates"))
    since = {k: v - first.get(k, 0.0) for k, v in timer.seconds.items()}
    timer.seconds = since
    parts = timer.exclusive(BREAKDOWN_NESTED, wall)
    return {"backbone": backbone, "preset": preset, "matched_sizes": matched,
            "updates": updates, "skipped_updates": skip, "wall_s_from_first_update": round(wall, 2),
            "seconds_per_update": round(wall / max(updates, 1), 4),
            "share": {k: round(v / wall, 4) for k, v in sorted(parts.items(),
                                                                key=lambda kv: -kv[1])},
            "ms_per_update": {k: round(1000 * v / max(updates, 1), 1)
                              for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "torch_threads": threads, "loadavg_1min": round(os.getloadavg()[0], 2)}


def add_breakdown(path: Path, s: dict, threads: int, backbones: list[str],
                  rounds: int, compile_modes: list[str]) -> int:
    """Per-update time breakdown of reverie at the matched sizes (per run.compile setting)
    and of the default preset, `rounds` runs per backbone in alternation (medians), added
    to throughput.json. The clock starts after BREAKDOWN_SKIP updates (compiling)."""
    report = json.loads(path.read_text()) if path.exists() else {"benchmark": "throughput"}
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for bb in backbones:
            arms = [(f"matched/{bb}" + ("" if mode == "auto" else f", run.compile={mode}"),
                     {"matched": True, "overrides": (f"run.compile={mode}",)})
                    for mode in compile_modes]
            arms.append((f"cartpole-preset/{bb}", {"matched": False, "steps": 1500}))
            for key, kw in arms:
                print(f"breakdown {key} ...", flush=True)
                runs.setdefault(key, []).append(
                    reverie_breakdown(s, threads, bb, skip=BREAKDOWN_SKIP, **kw))
    out = {}
    for key, rs in runs.items():
        parts = sorted({p for r in rs for p in r["ms_per_update"]})
        out[key] = {
            "runs": len(rs), "seconds_per_update_median": statistics.median(
                r["seconds_per_update"] for r in rs),
            "seconds_per_update_range": [min(r["seconds_per_update"] for r in rs),
                                         max(r["seconds_per_update"] for r in rs)],
            "ms_per_update_median": {p: round(statistics.median(
                r["ms_per_update"].get(p, 0.0) for r in rs), 1) for p in parts},
            "share_median": {p: round(statistics.median(
                r["share"].get(p, 0.0) for r in rs), 3) for p in parts},
            "loadavg_1min": [r["loadavg_1min"] for r in rs], "raw": rs}
    report["breakdown"] = {"torch_threads": threads, "rounds": rounds, "cores": os.cpu_count(),
                           "skipped_updates": BREAKDOWN_SKIP,
                           "date": time.strftime("%Y-%m-%d %H:%M"),
                           "loaded": max(x for r in out.values() for x in r["loadavg_1min"])
                           > (os.cpu_count() or 1), "runs": out}
    if "runs" in report and "settings" in report:
        report["markdown"] = markdown(report)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for key, r in out.items():
        print(key, r["seconds_per_update_median"], r["share_median"])
    return 0


# -- report --------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    from backbones import machine_info as cpu_info  # bench/ is the script's directory

    info = cpu_info(torch.get_num_threads())
    info["note"] = "shared machine: see each run's load averages"
    return info


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "error" if x is None else format(x, spec)


def bound_verdict(bound: dict) -> str:
    """Whether the target ratio is within the compute bound of every measured backbone."""
    best = [b["max_ratio_vs_sheeprl"] for b in bound["runs"].values()
            if b.get("max_ratio_vs_sheeprl") is not None]
    if not best:
        return ""
    if max(best) < TARGET:
        return (f"A {TARGET:g}x ratio at matched sizes is above this bound: reverie's update "
                "as it computes it cannot reach it on this CPU in fp32.")
    return (f"The {TARGET:g}x target is within this bound for "
            + ("every backbone" if min(best) >= TARGET else "some backbones") + ".")


def breakdown_markdown(b: dict) -> str:
    """Where an update's time goes: ms per update by part (medians over the rounds)."""
    keys = list(b["runs"])
    parts = sorted({p for r in b["runs"].values() for p in r["ms_per_update_median"]},
                   key=lambda p: -max(r["ms_per_update_median"].get(p, 0.0)
                                      for r in b["runs"].values()))
    rows = ["| part | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for part in parts:
        cells = [f"{r['ms_per_update_median'].get(part, 0.0):.0f} ms "
                 f"({100 * r['share_median'].get(part, 0.0):.0f}%)" for r in b["runs"].values()]
        rows.append(f"| {part} | " + " | ".join(cells) + " |")
    rows.append("| **seconds per update** | " + " | ".join(
        f"**{r['seconds_per_update_median']:.2f}** ({r['seconds_per_update_range'][0]:.2f}–"
        f"{r['seconds_per_update_range'][1]:.2f})" for r in b["runs"].values()) + " |")
    loads = [x for r in b["runs"].values() for x in r["loadavg_1min"]]
    skipped = b.get("skipped_updates", 0)  # breakdowns before 2026-12-07 (noon): 0
    start = f"after the first {skipped} updates" if skipped else "from the first update on"
    note = (f"Per-update time by part {start}, medians of {b['rounds']} alternating "
            f"in-process runs, {b['torch_threads']} torch thread(s)"
            + (f", {b['date']}" if "date" in b else "")
            + "; `matched`: the sizes above (run.compile=auto unless named; with on, the "
            "world-model forward is timed inside its step, the compiled loss holds it), "
            "`cartpole-preset`: the default preset as it is. 'update' is the "
            f"agent's own bookkeeping; 'other' is the driver. 1-min load {min(loads):.2f}–"
            f"{max(loads):.2f} on {b['cores']} cores"
            + (" (**loaded**)." if b.get("loaded") else "."))
    return "\n".join(rows) + f"\n\n{note}\n"


def _arm(run: dict, sep: str = ", ") -> str:
    """A reverie run's label: its backbone, and run.compile unless the default (auto)."""
    mode = run.get("compile", "auto")  # runs before 2026-12-07 (afternoon): the default
    return run["backbone"] + ("" if mode == "auto" else f"{sep}run.compile={mode}")


def markdown(report: dict) -> str:
    s = report["settings"]
    sheep = report["runs"]["sheeprl"]
    sps0 = sheep["env_steps_per_s"]
    rows = ["| system | world-model params | actor + critic params | env steps/s | "
            "x sheeprl | target >= 5x |", "|---|---:|---:|---:|---:|:---:|"]
    for name, run in report["runs"].items():
        p = run.get("params", {})
        wm = p.get("world_model")
        ac = (p["actor"] + p["critic"]) if "actor" in p else None
        ratio = report["ratios"].get(name)
        target = report["target"].get(name, "")
        label = "sheeprl DreamerV3 XS" if name == "sheeprl" else f"reverie ({_arm(run)})"
        sps = _fmt(run["env_steps_per_s"])
        if run.get("env_steps_per_s_range"):
            lo, hi = run["env_steps_per_s_range"]
            sps += f" ({lo:.2f}–{hi:.2f})"
        x = "1.00" if name == "sheeprl" else _fmt(ratio)
        if report.get("ratio_ranges", {}).get(name):
            lo, hi = report["ratio_ranges"][name]
            x += f" ({lo:.2f}–{hi:.2f})"
        rows.append(f"| {label} | {_fmt(wm and wm / 1e6, '.2f')}M | "
                    f"{_fmt(ac and ac / 1e6, '.2f')}M | {sps} | {x} | {target} |")
    note = (f"CartPole-v1, CPU, {s['torch_threads']} torch threads, batch {BATCH}x{SEQ_LEN}, "
            f"horizon {HORIZON}, {IMAG_STARTS} imagination starts, one update every "
            f"{s['update_every']} env steps (train ratio {s['reverie_train_ratio']:g} = sheeprl "
            f"replay_ratio {s['sheeprl_replay_ratio']:g}), timed over env steps "
            f"{s['window_env_steps'][0]}-{s['window_env_steps'][1]}"
            f" ({s['measure_updates']} updates)")
    if s.get("rounds"):
        note += (f"; {s['rounds']} rounds alternating the systems, median (min–max) over "
                 f"rounds, ratio = median of the per-round ratios; 1-min load "
                 f"{s['loadavg_1min_at_start']:.2f} at the start, "
                 f"{s['loadavg_1min_at_end']:.2f} at the end on {os.cpu_count()} cores")
        if s.get("loaded"):
            note += " (**loaded**: load > cores, the numbers are slower and noisier than idle)"
    else:
        note += "; one run per system (measured before the benchmark alternated rounds)"
    if report["smoke"]:
        note += "; SMOKE RUN (too few updates for a stable number)"
    if sps0 is None:
        note += "; sheeprl failed"
    text = "\n".join(rows) + f"\n\n{note}.\n"
    bound = report.get("compute_bound")
    if bound:
        parts = [f"{_arm(report['runs'][name])}: {b['flops_per_update'] / 1e9:.0f} GFLOP per "
                 f"update, at most {b['max_env_steps_per_s']:.1f} env steps/s = "
                 f"{_fmt(b['max_ratio_vs_sheeprl'])}x sheeprl, "
                 f"{_fmt(b['max_ratio_vs_sheeprl_without_context'])}x without the "
                 f"{CONTEXT - 1}-step context warm-up (measured: "
                 f"{_fmt(b['measured_fraction_of_peak'])} of peak"
                 + (f"; {_fmt(b['measured_fraction_of_peak_dense'])} counting the "
                    f"{b['flops_per_update_dense'] / 1e9:.0f} GFLOP of the update with the "
                    "one-hot latent's products dense" if "flops_per_update_dense" in b else "")
                 + ")"
                 for name, b in bound["runs"].items()]
        onehot = any("flops_per_update_dense" in b for b in bound["runs"].values())
        peak = bound["matmul_peak_flops"] / 1e9
        text += ("\nCompute bound: every update's matmuls alone"
                 + (" (those it executes: the one-hot latent's products are column sums, not "
                    "counted, and with run.compile=on nor are the actor's and critic's one-hot "
                    "weight gradients, row scatters)" if onehot else "")
                 + f", run at this machine's fp32 matmul peak ({peak:.0f} GFLOP/s, "
                 f"{bound['peak_source']}) with zero time for anything else: "
                 + "; ".join(parts) + ". " + bound_verdict(bound) + "\n")
    if report.get("breakdown"):
        text += "\n" + breakdown_markdown(report["breakdown"])
    return text


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["runs"])
    labels = ["sheeprl\nDreamerV3 XS" if n == "sheeprl"
              else "reverie\n" + _arm(report["runs"][n], ",\n") for n in names]
    values = [report["runs"][n]["env_steps_per_s"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["#888888"] + ["#2a7ab9"] * (len(names) - 1))
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom", fontsize=9)
    sps0 = report["runs"]["sheeprl"]["env_steps_per_s"]
    if sps0:
        ax.axhline(TARGET * sps0, ls="--", color="#c0392b", lw=1,
                   label=f"target: {TARGET:g}x sheeprl")
        ax.legend(loc="upper left", fontsize=8)
    s = report["settings"]
    title = (f"CartPole-v1 training throughput, CPU ({s['torch_threads']} threads)\n"
             f"batch {BATCH}x{SEQ_LEN}, horizon {HORIZON}, 1 update / {s['update_every']} "
             "env steps")
    if report["smoke"]:
        title += " [smoke run]"
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("env steps / s while training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matmul_peak(threads: int | None = None, now: bool = False) -> tuple[float, str]:
    """(fp32 matmul peak, where it comes from): the one bench/backbones.py measured on a quiet
    machine, else (or with `now`) measured now; with `threads`, only a peak of that many torch
    threads (one of 2 threads is no bound for a run on 4), else measured now on `threads`."""
    path = RESULTS / "backbones.json"
    if path.exists() and not now:
        report = json.loads(path.read_text())
        peak, at = report.get("matmul_peak_flops"), report.get("machine", {}).get("torch_threads")
        if peak and threads in (None, at):
            return float(peak), f"bench/results/backbones.json, {_threads(at)}"
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from backbones import best_matmul_peak

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        when = time.strftime("%Y-%m-%d %H:%M") if now else "now"  # now: not the run's time
        return best_matmul_peak(), f"measured {when}, {_threads(torch.get_num_threads())}"
    finally:
        torch.set_num_threads(before)


def _threads(n: int | None) -> str:
    return "? threads" if n is None else f"{n} thread{'' if n == 1 else 's'}"


def add_bound(path: Path, now: bool = False) -> int:
    """Add the compute bound to an existing report and rewrite its JSON, plot and table
    (`now`: against a matmul peak measured now, not bench/backbones.py's)."""
    if not path.exists():
        print(f"no {path}; run python bench/throughput.py first", file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    report["compute_bound"] = compute_bound(
        report, *matmul_peak(report.get("settings", {}).get("torch_threads"), now))
    report["markdown"] = markdown(report)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 2 timed updates each")
    p.add_argument("--backbones", nargs="+", default=["mamba2", "gru"])
    p.add_argument("--compile", nargs="+", default=["auto", "on"], choices=["auto", "on", "off"],
                   help="reverie's run.compile settings, one arm per backbone and setting "
                        "(auto: the default; on: also the losses, the context warm-up and "
                        "reverie's own kernels)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of both systems")
    p.add_argument("--update-every", type=int, default=None,
                   help="env steps per update (a power of 2); default 16")
    p.add_argument("--learning-starts", type=int, default=None)
    p.add_argument("--measure-updates", type=int, default=None)
    p.add_argument("--sheeprl-venv", type=Path, default=SHEEPRL_VENV)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--bound-only", action="store_true",
                   help="only (re)compute the compute bound of an existing throughput.json")
    p.add_argument("--peak-now", action="store_true",
                   help="with --bound-only: measure the matmul peak now (a machine whose speed "
                        "changed since bench/backbones.py ran) instead of reading backbones.json")
    p.add_argument("--breakdown", action="store_true",
                   help="only measure reverie's per-update time breakdown (no sheeprl) and "
                        "add it to throughput.json")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of alternation: every system runs once per round, the order "
                        "reversed every other round (A B C, C B A, ...)")
    args = p.parse_args()
    if args.peak_now and not args.bound_only:
        p.error("--peak-now goes with --bound-only (a full run measures against backbones.json)")
    if args.bound_only:
        return add_bound(args.out / "throughput.json", args.peak_now)
    if args.breakdown:
        s = dict(QUICK if args.quick else FULL)
        return add_breakdown(args.out / "throughput.json", s, args.threads, args.backbones,
                             args.rounds, args.compile)

    s = dict(QUICK if args.quick else FULL)
    for key in ("update_every", "learning_starts", "measure_updates"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    P = s["update_every"]
    if P < 1 or P & (P - 1):
        p.error(f"--update-every must be a power of 2 (exact schedules in both), got {P}")
    if s["learning_starts"] < SEQ_LEN or s["learning_starts"] % P:
        p.error(f"--learning-starts must be >= {SEQ_LEN} and a multiple of --update-every")
    if not (args.sheeprl_venv / "bin" / "sheeprl").exists():
        p.error(f"no sheeprl in {args.sheeprl_venv}; create it with `make bench` "
                "(see bench/peers/README.md)")

    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"warning: 1-min load average {load:.2f} > {BUSY_LOAD}: other processes compete "
              f"for the cores and {args.threads}-thread timings will be slow and noisy",
              file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    a, b = window(s)
    settings = {
        "env": ENV_ID, "batch_size": BATCH, "seq_len": SEQ_LEN, "horizon": HORIZON,
        "imagination_starts": IMAG_STARTS, "reverie_context": CONTEXT,
        **s, "updates_per_env_step": 1 / P,
        "reverie_train_ratio": BATCH * SEQ_LEN / P, "sheeprl_replay_ratio": 1 / P,
        "replayed_steps_per_env_step": BATCH * SEQ_LEN / P,
        "window_env_steps": [a, b], "torch_threads": args.threads, "seed": SEED,
        "loadavg_1min_at_start": round(load, 2),
    }
    arms = {f"reverie-{bb}" + ("" if mode == "auto" else f"-compile-{mode}"): (bb, mode)
            for bb in args.backbones for mode in args.compile}
    names = ["sheeprl", *arms]
    per_round: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            load_r = os.getloadavg()[0]
            if name == "sheeprl":
                print(f"round {r + 1}: sheeprl, {b + 1} env steps ...", flush=True)
                run = run_sheeprl(s, args.threads, args.sheeprl_venv, args.timeout)
            else:
                bb, mode = arms[name]
                print(f"round {r + 1}: reverie {bb} run.compile={mode}, {b} env steps ...",
                      flush=True)
                run = run_reverie(s, args.threads, bb, args.timeout, mode)
            run["loadavg_1min_before"] = round(load_r, 2)
            per_round[name].append(run)
            print(f"  {_fmt(run['env_steps_per_s'])} env steps/s", flush=True)
    runs = {name: summarise_rounds(rs) for name, rs in per_round.items()}
    runs["sheeprl"]["params"] = _sheeprl_params(s, args.threads, args.sheeprl_venv)
    for name, (bb, _) in arms.items():
        runs[name]["params"] = _reverie_params(s, args.threads, bb)
    ratios, ratio_ranges, target = {}, {}, {}
    for name in names[1:]:
        rr = [x["env_steps_per_s"] / y["env_steps_per_s"]
              for x, y in zip(per_round[name], per_round["sheeprl"])
              if x["env_steps_per_s"] and y["env_steps_per_s"]]
        ratios[name] = round(statistics.median(rr), 3) if rr else None
        ratio_ranges[name] = [round(min(rr), 3), round(max(rr), 3)] if rr else None
        target[name] = "n/a" if ratios[name] is None else (
            "pass" if ratios[name] >= TARGET else "miss")
    load_end = os.getloadavg()[0]
    settings["loadavg_1min_at_end"] = round(load_end, 2)
    settings["rounds"] = args.rounds
    settings["loaded"] = max(load, load_end) > (os.cpu_count() or 1)
    report = {
        "benchmark": "throughput", "smoke": args.quick,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "settings": settings,
        "timing_method": (
            "in-process wall clock at env steps a and b of one run per system: reverie's "
            "timing.jsonl time/wall (logged every update_every env steps after that step's "
            "update); sheeprl: perf_counter printed by a gymnasium wrapper before every env "
            "step (env.wrapper._target_=throughput.sheeprl_timed_env), window shifted by +1 "
            "step so both windows hold the same measure_updates updates; env steps/s = "
            "(b - a) / (t_b - t_a)"),
        "target_rule": f"reverie env steps/s >= {TARGET:g}x sheeprl's",
        "runs": runs, "ratios": ratios, "ratio_ranges": ratio_ranges, "target": target,
        "ratio_rule": "median over rounds of the per-round ratio (each round runs every "
                      "system once, alternating the order)",
        "differences": DIFFERENCES,
    }
    report["compute_bound"] = compute_bound(report, *matmul_peak(settings["torch_threads"]))
    stem = "throughput_quick" if args.quick else "throughput"
    earlier = args.out / f"{stem}.json"
    if earlier.exists():  # the --breakdown measurement is separate: keep it
        kept = json.loads(earlier.read_text()).get("breakdown")
        if kept:
            report["breakdown"] = kept
    report["markdown"] = markdown(report)
    report["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / f"{stem}.png")
    print(report["markdown"])
    print(f"wrote {args.out / stem}.json and .png in {report['total_wall_s']:.0f} s")
    return 0 if all(r["env_steps_per_s"] is not None for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
