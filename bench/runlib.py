"""Benchmark runs as ordinary, resumable `reverie train` run folders (shared by bench/*.py).

`ensure_run` trains a run folder to a number of env steps: a finished run is left alone, an
unfinished one is continued with `reverie train --resume` (exactly, from its last
checkpoint), a missing one is created, so a long benchmark can be run in pieces.

Run folders live under bench/runs/ (kept out of git: checkpoints and replay buffers are
large), so they do not outlive the checkout. What a report needs of each run (config.yaml,
metrics.jsonl, timing.jsonl and the env steps reached) is therefore copied, after every
training piece, into the committed archive bench/results/runs/ (`keep`), under the same
relative path. Readers go through `locate`, which prefers the live folder and falls back to
the archive, and `ensure_run` does not retrain a run that the archive holds finished. An
archived run is an ordinary run folder without checkpoints: `reverie report
bench/results/runs/...` reads it, `reverie train --resume` cannot continue it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RUNS_ROOT = BENCH / "runs"
ARCHIVE = BENCH / "results" / "runs"
# what a report reads of a run folder (external.json: a Stable-Baselines3 peer's result, in
# the form `reverie report` reads for runs of other libraries, reverie.eval.runs)
KEPT = ("config.yaml", "metrics.jsonl", "timing.jsonl", "machine.jsonl", "external.json")


def archived(run: Path) -> Path:
    """Where the archive keeps `run` (a folder under bench/runs/)."""
    return ARCHIVE / run.resolve().relative_to(RUNS_ROOT.resolve())


def keep(run: Path) -> None:
    """Copy what a report needs of `run` into the archive, with the env steps it reached."""
    dst = archived(run)
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run / name).exists():
            shutil.copy2(run / name, dst / name)
    (dst / "progress.json").write_text(json.dumps({"env_steps": progress(run)}) + "\n")


def locate(run: Path) -> Path:
    """The live run folder if there is one, else its archived copy (else `run` itself)."""
    if any((run / name).exists() for name in KEPT):
        return run
    kept = archived(run)
    return kept if kept.exists() else run


def progress(run: Path) -> int:
    """Env steps a run folder has reached: its newest checkpoint's step (0 if none); for an
    archived run, the step recorded when it was kept; for a peer (`external.json`), the steps
    it trained. (The logged rows can end before it: the last log row need not fall on the
    last step.)"""
    from reverie.errors import UserError
    from reverie.run.checkpoint import CheckpointStore

    if (run / "external.json").exists():
        return int(json.loads((run / "external.json").read_text())["steps"])
    if not (run / "checkpoints").exists() and (run / "progress.json").exists():
        return int(json.loads((run / "progress.json").read_text())["env_steps"])

    try:
        entries = CheckpointStore(run / "checkpoints").entries()
    except UserError:
        return 0
    return entries[-1].step if entries else 0


def ensure_run(run: Path, train_args: list[str], steps: int, threads: int = 1,
               earlier: dict | None = None, checkpoint_every: int | None = None) -> dict:
    """Train (or continue) `run` to `steps` env steps. train_args: the `reverie train` flags
    that create it (preset, env, seed, --set ...), used only when it does not exist yet.
    earlier: the run's result in the committed JSON, if any; a run finished there is not
    trained again when neither its folder nor its archived copy is here. checkpoint_every:
    the run's checkpoint cadence (a key a resume may change), given on every call, so a run
    stopped midway loses at most that many env steps."""
    from reverie.distributed.trial import final_evaluation_missing_in

    common = ["--no-progress", "--steps", str(steps), "--set", f"run.threads={threads}"]
    if checkpoint_every is not None:
        common += ["--set", f"run.checkpoint_every={checkpoint_every}"]
    if (run / "config.yaml").exists():
        # done at its budget, unless stopped before its final evaluation (the resume runs it)
        if progress(run) >= steps and not final_evaluation_missing_in(run, progress(run)):
            keep(run)
            return {"status": "done"}
        cmd = ["train", "--resume", str(run), *common]
    elif archived(run).exists() and progress(archived(run)) >= steps:
        return {"status": "done", "archived": True}
    elif not archived(run).exists() and (earlier or {}).get("env_steps", 0) >= steps:
        return {"status": "done", "from_committed_json": True}
    else:
        cmd = ["train", *train_args, "--out", str(run), *common]
    t0 = time.time()
    try:
        proc = run_child([sys.executable, "-m", "reverie", *cmd])
    finally:  # also when stopped by Ctrl-C: the archive gets what the run did
        if (run / "config.yaml").exists():
            keep(run)
    if proc.returncode != 0:
        return {"status": "error", "error": proc.stderr.strip()[-600:]}
    return {"status": "trained", "wall_s": round(time.time() - t0, 1)}


def run_child(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd` (a `reverie train`) to its end, capturing its output; it ends if this
    script is killed (`child_env`). From the main thread the run gets its own session, and
    a Ctrl-C (or SIGINT) here is passed on as exactly one SIGINT: the run stops after its
    current env step with a checkpoint there, and `BenchStopped` (a one-line exit) follows
    once it has; a second Ctrl-C kills it. (`subprocess.run` killed the run 0.25 s after a
    Ctrl-C, long before it could save.) From a worker thread (several runs at once, as
    `reverie sweep` does) the run stays in this process group, so a terminal's Ctrl-C
    reaches it directly and it stops the same way."""
    import signal
    import threading

    from reverie.distributed.trial import child_env  # here: bench/mbpo_cost.py --ab runs
    # this module against older checkouts, which do not have it

    main = threading.current_thread() is threading.main_thread()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=child_env(),
                            start_new_session=main)
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # its own session: this is the only one it gets
        try:
            out, err = proc.communicate()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise BenchStopped("bench: run killed at the second Ctrl-C; rerun the same "
                               "command to continue from its last checkpoint") from None
        if proc.returncode == 0:
            raise BenchStopped("bench: interrupted as the run finished; rerun the same "
                               "command to go on") from None
        last = (err.strip().splitlines() or ["(no message)"])[-1]
        raise BenchStopped(f"bench: stopped ({last}); rerun the same command to continue") \
            from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class BenchStopped(SystemExit):
    """A benchmark stopped by Ctrl-C once its training run had saved: exits with one line."""


def require_sb3() -> None:
    """Exit with one line naming the fix when Stable-Baselines3 (the peers) is missing."""
    import importlib.util

    if importlib.util.find_spec("stable_baselines3") is None:
        print("bench: the Stable-Baselines3 peers need stable-baselines3; install the bench "
              "extra: .venv/bin/pip install -e '.[bench]' (make bench does)", file=sys.stderr)
        sys.exit(2)


def run_sb3(algo: str, env_id: str, seed: int, steps: int, every: int, episodes: int,
            out: Path) -> dict:
    """A Stable-Baselines3 peer (`algo`: SAC, DQN, PPO, ...; its default hyper-parameters,
    MlpPolicy, 1 thread) trained for `steps` env steps on reverie's env `env_id`, evaluated
    as reverie evaluates: `episodes` greedy episodes every `every` env steps, seeded as
    reverie seeds its evaluation episodes. Its curve is stored as `out/external.json` (the
    form `reverie report` reads, so reports place the peer beside reverie's runs; archived
    with `keep`), so a finished run is not repeated."""
    if (locate(out) / "external.json").exists():
        return json.loads((locate(out) / "external.json").read_text())
    import gymnasium as gym
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from reverie.envs import make_env
    from reverie.run.collector import episode_seed

    torch.set_num_threads(1)
    flat = gym.wrappers.FlattenObservation  # reverie's {"vector": x} as a plain Box
    train_env, eval_env = flat(make_env(env_id)), flat(make_env(env_id))
    curve: list[tuple[int, float]] = []

    def evaluate(model) -> float:
        returns = []
        for i in range(episodes):
            obs, _ = eval_env.reset(seed=episode_seed(seed, len(curve) * 1000 + i, stream=1))
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = eval_env.step(action)
                total += float(r)
                done = term or trunc
            returns.append(total)
        return float(np.mean(returns))

    class Every(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % every == 0:
                curve.append((self.num_timesteps, evaluate(self.model)))
            # False ends learn() at the budget: on-policy algorithms (PPO's 2048-step
            # rollouts) would otherwise round it up to whole rollouts
            return self.num_timesteps < steps

    t0 = time.time()
    model = getattr(stable_baselines3, algo)("MlpPolicy", train_env, seed=seed, verbose=0,
                                             device="cpu")
    model.learn(total_timesteps=steps, callback=Every())
    record = {"agent": f"sb3-{algo.lower()}", "env": env_id, "seed": seed, "steps": steps,
              "evals": curve, "wall_s": round(time.time() - t0, 1), "algo": algo,
              "env_steps": int(model.num_timesteps)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "external.json").write_text(json.dumps(record))
    keep(out)
    return record


def random_policy_return(env_id: str, episodes: int = 100) -> float:
    """Mean return of uniformly random actions on reverie's env `env_id` over `episodes`
    seeded episodes: the level below which nothing has been learned."""
    import numpy as np

    from reverie.envs import make_env

    env = make_env(env_id)
    env.action_space.seed(0)
    total = []
    for episode in range(episodes):
        env.reset(seed=episode)
        done, ret = False, 0.0
        while not done:
            _, reward, term, trunc, _ = env.step(env.action_space.sample())
            ret, done = ret + float(reward), term or trunc
        total.append(ret)
    return float(np.mean(total))


def matmul_gflops(threads: int = 0, n: int = 1024, reps: int = 5) -> float:
    """This machine's fp32 matmul speed now (median of `reps` rounds of 10 n x n products, on
    `threads` torch threads, 0 = all cores), in GFLOP/s. A shared machine slowed by other
    tenants shows it here even when the 1-minute load average (this VM's) does not."""
    import statistics

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    rates = []
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(10):
                a @ b
            rates.append(10 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(before)
    return round(statistics.median(rates), 1)


def revision(src: Path) -> str:
    """The checkout's commit ("?" outside git), "+changes" where files under `src` differ from
    it: what a timing ran, for the JSON that records it."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        return proc.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + ("+changes" if git("status", "--porcelain", "--", ".") else "")


# The presets of the benches that time updates preset by preset (onehot.py, kernels.py,
# compile_presets.py): name -> (preset, extra overrides, prefill env steps); `matched` is
# bench/throughput.py's matched sizes on the cartpole preset (`bench_agent`)
BENCH_PRESETS = {
    "matched": ("cartpole", None, 600),
    "cartpole": ("cartpole", [], 600),
    "minatar": ("minatar", ["env.id=minatar:breakout"], 1100),
    "dmc-proprio": ("dmc-proprio", ["env.id=dmc:walker-walk"], 1100),
    "atari100k": ("atari100k", [], 300),
    # the same in mixed precision, as the README's Atari section runs it
    "atari100k-bf16": ("atari100k", ["run.precision=bf16"], 300),
}


def bench_agent(name: str, compile_mode: str, threads: int):
    """`prefilled_agent` of BENCH_PRESETS[name] with run.compile=`compile_mode`; `matched`
    takes bench/throughput.py's overrides but those of its run (prefill, threads,
    evaluation, checkpoints), which prefilled_agent sets."""
    preset, extra, prefill = BENCH_PRESETS[name]
    if extra is None:
        import throughput

        drop = ("run.prefill", "run.threads", "run.eval_episodes", "run.checkpoint_every")
        over = throughput.reverie_overrides({"update_every": 16, "learning_starts": 512},
                                            threads)
        extra = [o for o in over if not o.startswith(drop)]
    return prefilled_agent(preset, [*extra, f"run.compile={compile_mode}"], prefill, threads)


@contextmanager
def prefilled_agent(preset: str, overrides: list[str], prefill: int,
                    threads: int) -> Iterator[tuple]:
    """(agent, replay) of `preset` as `reverie train` builds them (seed 0, `threads` torch
    threads, glibc keeping freed memory as the `reverie` command does), the replay holding
    `prefill` env steps of random actions through the driver: what an update costs does not
    depend on the data. No update has run (run.prefill is one step past the run: at a train
    ratio of one update per env step the last prefill step would earn one, and it would
    compile). For measuring updates in one process (`alternate`)."""
    import tempfile

    from reverie.allocator import keep_freed_memory
    from reverie.config import build_config
    from reverie.run.driver import Trainer

    keep_freed_memory()
    cfg = build_config(preset, [*overrides, f"run.threads={threads}", f"run.prefill={prefill + 1}",
                                "run.eval_episodes=0", "run.progress=false",
                                "run.checkpoint_every=1000000000"], {"steps": prefill})
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.train()  # prefill only: random actions into the replay
        yield trainer.agent, trainer.replay


@contextmanager
def dense_latent_layers() -> Iterator[None]:
    """Inside: the layers that read the one-hot latent take the dense product, as before
    2026-12-07 (reverie/nets/onehot.py: `use_onehot` answers no), the same numbers to float
    rounding."""
    from reverie.nets import mlp, onehot
    from reverie.world import latent

    mlp.use_onehot = latent.use_onehot = lambda index, x: False
    try:
        yield
    finally:
        mlp.use_onehot = latent.use_onehot = onehot.use_onehot


def update_flops(preset: str, overrides: list[str], flags: dict | None = None,
                 dense: bool = False, scatter: bool = False) -> int:
    """Matmul/conv/attention FLOPs (forward + backward) of one update of `preset` as `reverie
    train` builds it with these overrides and command flags, counted by torch's
    FlopCounterMode on the first update of a short in-process run (the overrides set its
    prefill and steps). Counted eagerly (run.compile=off): the counter sees aten operators,
    not a compiled graph's kernels, and compiling changes no operator's FLOPs. The one-hot
    latent's products are column sums, not counted; `dense` counts the update with them as
    dense products (`dense_latent_layers`), the work they stand for. `scatter`: the actor's
    and critic's one-hot weight gradients as row scatters (reverie/nets/onehot_kernel.py, as
    run.compile=on runs them), not counted either."""
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from reverie.config import build_config
    from reverie.run.driver import Trainer

    cfg = build_config(preset, [*overrides, "run.compile=off", "run.progress=false"],
                       flags or {})
    counted: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-flops-") as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        update = trainer.agent.update
        if scatter:
            from reverie.nets import onehot_kernel

            onehot_kernel.load()
            trainer.agent.behavior.use_onehot_kernel(True)

        def counting_update(replay):
            if counted:
                return update(replay)
            mode = FlopCounterMode(display=False)
            with mode:
                out = update(replay)
            counted["total"] = int(mode.get_total_flops())
            return out

        trainer.agent.update = counting_update
        with torch.random.fork_rng(devices=[]), \
                (dense_latent_layers() if dense else contextlib.nullcontext()):
            trainer.train()
    return counted["total"]


def alternate(arms: dict[str, Callable[[], object]], rounds: int, warmup: int,
              calls: int = 1, flip: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each arm, the arms taking turns (A B A B ...) for `warmup` untimed
    and then `rounds` timed rounds of `calls` calls each, so that a load changing during the
    measurement falls on every arm alike; `flip` reverses the order every other round (B A
    after A B), so that neither arm always runs first."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(warmup + rounds):
        order = list(arms)[::-1] if flip and i % 2 else list(arms)
        for name in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                arms[name]()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) / calls)
    return times


def add_worker_arguments(p, presets: list[str]) -> None:
    """The options every one-process-per-preset bench shares (`run_worker`): --presets,
    --warmup, --threads, --quick and the hidden --worker PRESET."""
    import argparse

    p.add_argument("--presets", nargs="+", default=presets, choices=presets)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="2 timed updates of each after 1 warm-up, no files")
    p.add_argument("--worker", metavar="PRESET", help=argparse.SUPPRESS)


def close_report(report: dict, probe_threads: int | None = None) -> dict:
    """The closing fields of a bench's report that recorded `loadavg_1min_before`: the fp32
    matmul probe after (with `probe_threads`), the 1-minute load after, and `loaded`: the
    load above the core count before or after."""
    if probe_threads is not None:
        report["matmul_gflops_after"] = matmul_gflops(probe_threads)
    report["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    report["loaded"] = max(report["loadavg_1min_before"], report["loadavg_1min_after"]) > (
        os.cpu_count() or 1)
    return report


def preset_report(stem: str, names: list[str], order: list[str], threads: int, quick: bool,
                  measure: Callable[[str], dict], shown: tuple[str, ...]) -> dict:
    """The driver of a bench measured preset by preset: `measure(name)` for each of `names`
    (its `shown` keys printed as it ends), the presets of bench/results/`stem`.json it did
    not measure kept, the matmul probe and load around it (`close_report`), the presets in
    `order`; written there unless `quick` (a smoke test). Returns the report."""
    path = Path(__file__).parent / "results" / f"{stem}.json"
    kept = json.loads(path.read_text())["presets"] if path.exists() and not quick else {}
    report = {"benchmark": stem, "threads": threads, "cores": os.cpu_count(),
              "matmul_gflops_before": matmul_gflops(threads),
              "loadavg_1min_before": round(os.getloadavg()[0], 2),
              "presets": {k: v for k, v in kept.items() if k not in names}}
    for name in names:
        r = measure(name)
        print(json.dumps({k: r[k] for k in shown}), flush=True)
        report["presets"][name] = r
    close_report(report, threads)
    report["presets"] = {k: report["presets"][k] for k in order if k in report["presets"]}
    if not quick:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    return report


def preset_bench_main(script: str, doc: str, stem: str,
                      measure: Callable[[str, int, int, int], dict], presets: list[str],
                      default_presets: list[str], shown: tuple[str, ...], updates: int = 10,
                      threads: int = 2, written: Callable[[dict], None] | None = None) -> int:
    """The command line of a bench whose `measure(preset, updates, warmup, threads)` times
    one preset's updates, alternating its arms in one process: --updates rounds (default
    `updates`), --threads (default `threads`) and the options of `add_worker_arguments`;
    each preset in a fresh process (`run_worker` of `script`), the report by `preset_report`
    into bench/results/`stem`.json, then `written(report)` (a plot) unless --quick."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--updates", type=int, default=updates,
                   help="timed rounds (one update per arm)")
    add_worker_arguments(p, presets)
    p.set_defaults(threads=threads, presets=default_presets)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.updates, args.warmup, args.threads)))
        return 0
    if args.quick:
        args.updates, args.warmup = 2, 1
    report = preset_report(
        stem, args.presets, presets, args.threads, args.quick,
        lambda name: run_worker(script, name, args.updates, args.warmup, args.threads), shown)
    if written is not None and not args.quick:
        written(report)
    return 0


def run_worker(script: str, preset: str, updates: int, warmup: int, threads: int) -> dict:
    """`script --worker PRESET ...` (a bench's one-process measurement) in a fresh process:
    the JSON of its last output line."""
    cmd = [sys.executable, script, "--worker", preset, "--updates", str(updates),
           "--warmup", str(warmup), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        raise RuntimeError(f"worker {preset} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot_seed_curves(panels: dict[str, dict[str, list[dict]]], path: Path,
                     ylabel: str = "evaluation return", bold: tuple[str, ...] = ()) -> None:
    """One panel per title, one line per label: the mean over the label's runs (entries with
    `eval_steps` and `eval_return`, cut to the shortest) with its 95% bootstrap band over
    seeds (`reverie.eval.curves.seed_band`; no band for one seed); the labels in `bold` drawn
    thicker (the default); the legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from reverie.eval.curves import seed_band

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    handles: dict[str, object] = {}
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for label, runs in lines.items():
            n = min(len(e["eval_return"]) for e in runs)
            vals = np.array([e["eval_return"][:n] for e in runs], dtype=float)
            mean, low, high = seed_band(vals)
            steps = runs[0]["eval_steps"][:n]
            (line,) = ax.plot(steps, mean, marker="o", ms=3, lw=2.6 if label in bold else 1.2,
                              label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
            handles.setdefault(line.get_label(), line)
        ax.set_title(f"{title} (bands: 95% bootstrap CI over seeds)", fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ncol = min(3, len(handles)) or 1
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8,
               frameon=False)
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(path: Path, result: dict, volatile: tuple[str, ...] = ("loadavg_1min",)) -> bool:
    """Write `result` to `path` as JSON (indent 1), unless the file already holds the same
    apart from the `volatile` keys (a report-only call rewrote a committed JSON with nothing
    new but the load average of the moment). True if it wrote."""
    text = json.dumps(result, indent=1)

    def kept(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in volatile}

    try:
        if kept(json.loads(path.read_text())) == kept(json.loads(text)):
            return False
    except (OSError, ValueError, AttributeError):  # none yet, or not a JSON object
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def spread(values: list[float], digits: int | None = None, keep: str | None = "values") -> dict:
    """Median, min and max of repeated measurements, rounded to `digits` (None: as they are),
    and the measurements themselves under the key `keep` (None: left out)."""
    def r(v: float) -> float:
        return v if digits is None else round(v, digits)

    out = {"median": r(statistics.median(values)), "min": r(min(values)), "max": r(max(values))}
    if keep is not None:
        out[keep] = [r(v) for v in values]
    return out


def seed_mean_ci(values: list[float]) -> dict:
    """Mean over seeds with its 95% bootstrap interval (`reverie.eval.stats`, one task)."""
    import numpy as np

    from reverie.eval.stats import bootstrap_ci, mean_score

    est = bootstrap_ci([np.asarray(values, dtype=float)], mean_score)
    return {"mean": round(est.value, 2), "ci95": [round(est.low, 2), round(est.high, 2)]}


def wall_seconds(timing: list[dict]) -> float:
    """Training wall time of a run over all its processes (wall time restarts at a resume)."""
    total = 0.0
    for prev, row in zip(timing, timing[1:] + [None]):
        if row is None or row["time/wall"] < prev["time/wall"]:
            total += prev["time/wall"]
    return total


def evaluations(run: Path) -> list[tuple[int, float]]:
    """(step, mean evaluation return) of a run."""
    from reverie.run.logger import read_jsonl, scored_evaluations

    return [(r["step"], r["eval/return"])
            for r in scored_evaluations(read_jsonl(run / "metrics.jsonl"))]


class PartTimer:
    """Wall seconds spent inside wrapped methods, by part (where the time of a run goes).

    `wrap(obj, "method", "part")` replaces obj.method with a timed call. Parts may nest (a
    part wrapped inside another is counted in both); `exclusive` turns them into disjoint
    shares by subtracting the nested parts from their parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj, name: str, part: str) -> None:
        fn = getattr(obj, name)
        self.seconds.setdefault(part, 0.0)
        self.calls.setdefault(part, 0)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0
                self.calls[part] += 1

        setattr(obj, name, timed)

    def exclusive(self, nested: dict[str, list[str]], total: float) -> dict[str, float]:
        """Disjoint seconds per part: nested = {parent: [children]}; 'other' = total minus
        the top-level parts."""
        out = dict(self.seconds)
        for parent, children in nested.items():
            out[parent] = out[parent] - sum(self.seconds[c] for c in children)
        children = {c for cs in nested.values() for c in cs}
        out["other"] = total - sum(v for k, v in self.seconds.items() if k not in children)
        return out


def recorded(path: Path) -> dict[str, dict]:
    """The per-run results ("runs") of a committed benchmark JSON, {} if there is none."""
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def collect_runs(keys, folder, read, steps: int,
                 earlier: dict[str, dict] | None = None) -> tuple[dict[str, dict], list[str]]:
    """Read the run of every (task, backbone, seed) in `keys`: `folder(task, backbone, seed)`
    is its run folder (live or archived, see `locate`), `read(path)` its result (None if it
    logged nothing yet). A run with neither is taken from `earlier` (the committed JSON's
    results, from before runs were archived), marked "from_committed_json". Returns
    ({"task/backbone/sSEED": result}, the keys short of `steps`, with their progress)."""
    runs, missing = {}, []
    for task, backbone, seed in keys:
        key = f"{task}/{backbone}/s{seed}"
        path = locate(folder(task, backbone, seed))
        r = read(path) if path.exists() else None
        if r is None and key in (earlier or {}):
            r = {**earlier[key], "from_committed_json": True}
        if r is None or r["env_steps"] < steps:
            missing.append(key + (f" ({r['env_steps']} of {steps} steps)" if r else ""))
        if r is not None:
            runs[key] = r
    return runs, missing
