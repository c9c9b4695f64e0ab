"""`reverie train | eval | watch | report | sweep`: the command line. User mistakes exit 2,
with one line; a run stopped by a signal exits with the shell's code for it (130 for
Ctrl-C, 143 for SIGTERM), also with one line."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path

from reverie.errors import USAGE_EXIT, Stopped, UserError, suggest


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, exit code 2; no prefixes of
    options (`sweep --seed 3` would have meant `--seeds 3`: three seeds, not seed 3)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an unknown option names its command's help and the option it
        was probably meant to be (`reverie train --stpes 5`)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(ns, "command", None)
            sub = getattr(self, "commands", {}).get(command, self)
            options = [o for a in sub._actions for o in a.option_strings]
            flag = extras[0].split("=")[0]
            hint = OTHER_COMMANDS_FLAGS.get((command, flag)) or suggest(flag, options)
            raise UserError(f"unrecognized arguments: {' '.join(extras)}{hint}; "
                            f"see `{sub.prog} --help`")
        return ns


# flags of `reverie train` that another command takes in its own way: said instead of the
# nearest of its flags (`sweep --backbone` was "did you mean '--backend'?")
OTHER_COMMANDS_FLAGS = {
    ("sweep", "--backbone"): " (a sweep takes the backbone as a setting: --set or --grid of "
                             "the agent's backbone key, e.g. --grid "
                             "imagine.world.backbone=gru,mamba2 or --set rppo.backbone=ffm)",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def _seed(text: str) -> int:
    from reverie.config import MAX_SEED  # the bound `--seed` of train has (config.validate)

    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer below 2**32, got {value}")
    return value


def _given(text: str) -> str:
    """A path or name that must not be empty: `--resume ""` (an unset shell variable) would
    otherwise mean no value at all, e.g. a new run instead of the one to continue."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a value (is a shell variable unset?)")
    return text


AGENT_HELP = ("imagine | mbpo | rppo | random: without --preset, starts from the agent's "
              "preset (cartpole, mbpo-pendulum, popgym-ppo, random)")


class _Version(argparse.Action):
    """`--version`: reverie's, torch's and Python's, looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from reverie import __version__

        try:
            torch = version("torch")
        except PackageNotFoundError:
            torch = "not installed"
        print(f"reverie {__version__} (torch {torch}, Python {sys.version.split()[0]})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="reverie", description="Sample-efficient model-based RL on a laptop CPU.")
    p.add_argument("--version", action=_Version, nargs=0, help="show versions and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train an agent; writes a run folder",
                       epilog="Ctrl-C (or SIGTERM) stops after the current env step with a "
                              "checkpoint (exit 130, or 143); --resume RUN continues exactly "
                              "where it stopped. Mistakes in the command exit 2.")
    t.add_argument("--preset", type=_given, default=None,
                   help="a bundled preset (`reverie presets`) or your own YAML file "
                        "(default: cartpole, or the --agent's preset)")
    t.add_argument("--agent", type=_given, default=None, help=AGENT_HELP)
    t.add_argument("--env", type=_given, default=None,
                   help="env spec, e.g. CartPole-v1, ALE/Pong-v5")
    t.add_argument("--backbone", type=_given, default=None,
                   help="gru | transformer | mamba1 | mamba2 | ffm")
    t.add_argument("--steps", type=_positive_int, default=None, help="env steps to train")
    t.add_argument("--seed", type=_int, default=None)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set run.train_ratio=512")
    t.add_argument("--out", type=_given, default=None,
                   help="run folder (default runs/<env>-<backbone>-s<seed> for imagine, "
                        "runs/<env>-<agent>[-<backbone>]-s<seed> for other agents; mbpo's "
                        "agent part names a mode other than mbpo: mbpo-coplanner)")
    t.add_argument("--resume", type=_given, default=None, metavar="RUN",
                   help="continue a killed or finished run (with --steps to extend it)")
    t.add_argument("--show-config", action="store_true",
                   help="print the resolved config and exit (its env is checked as training "
                        "would)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint; prints JSON")
    e.add_argument("run", type=_given)
    e.add_argument("--episodes", type=_positive_int, default=10,
                   help="greedy evaluation episodes (default 10)")
    e.add_argument("--seed", type=_seed, default=12345,
                   help="seed of the evaluation episodes (default 12345)")
    e.add_argument("--out", type=_given, default=None,
                   help="JSON path (default RUN/eval.json, with --best RUN/eval-best.json; "
                        "the result of a checkpoint file is saved only with --out)")
    e.add_argument("--best", action="store_true",
                   help="the agent of the run's best evaluation (checkpoints/best.pt), not "
                        "its latest")
    e.add_argument("--prediction", type=_int, default=0, metavar="WINDOWS",
                   help="also score the world model's open-loop prediction of the next "
                        "--horizon observations after --context observed ones, over WINDOWS "
                        "windows of greedy episodes, beside copying the last observed one "
                        "(default 0: off)")
    e.add_argument("--horizon", type=_positive_int, default=None,
                   help="imagined steps per --prediction window (default 16)")
    e.add_argument("--context", type=_positive_int, default=None,
                   help="observed steps before each --prediction window (default: the run's "
                        "imagine.context)")

    w = sub.add_parser("watch", help="GIF of the agent in its env, and the world model's "
                       "imagination beside the real episode")
    w.add_argument("run", type=_given)
    w.add_argument("--steps", type=_positive_int, default=300,
                   help="env steps to film, at most one episode (default 300; the film ends "
                        "where the episode does)")
    w.add_argument("--seed", type=_seed, default=0,
                   help="seed of the filmed episode (default 0)")
    w.add_argument("--out", type=_given, default=None,
                   help="GIF path (default RUN/watch.gif, with --best RUN/watch-best.gif, for "
                        "a checkpoint file RUN/watch-<its name>.gif)")
    w.add_argument("--best", action="store_true",
                   help="the agent of the run's best evaluation (checkpoints/best.pt)")

    r = sub.add_parser("report", help="report.md + PNGs over run folders: scores with CIs, "
                       "curves, baselines",
                       description="Score run folders (final greedy evaluation; HNS for "
                       "Atari, MMER for POPGym) and write OUT/report.md with aggregates and "
                       "95% bootstrap intervals over tasks x seeds, per-task scores, learning "
                       "curves, sample efficiency, performance profiles and compute. OUT's "
                       "report.md and PNGs are rewritten; run folders are only read.")
    r.add_argument("runs", nargs="+", type=_given, metavar="RUN_OR_DIR",
                   help="run folders, or folders holding them (searched recursively)")
    r.add_argument("--out", type=_given, required=True, help="folder for report.md and the PNGs")
    r.add_argument("--finished-only", action="store_true",
                   help="leave out runs that have not reached their run.steps (still training)")
    r.add_argument("--returns", choices=["auto", "eval", "train"], default="auto",
                   help="score runs from their greedy evaluations (eval), their training "
                        "episodes (train: POPGym's MMER protocol, means over windows of the "
                        "run's evaluation interval), or evaluations where a run has them, else "
                        "training episodes (auto, the default)")
    r.add_argument("--group-by", dest="group_by", action="append", default=None, metavar="KEY",
                   help="group runs by a setting: agent, backbone or a dotted config key "
                        "(repeatable; default: agent, backbone and the settings that make another "
                        "algorithm of an agent: mbpo.mode, imagine.coplanner.mode)")

    s = sub.add_parser("sweep", help="a grid of `reverie train` runs (local processes or Ray), "
                       "then a report",
                       description="Run envs x --grid values x seeds, each an ordinary "
                       "`reverie train` run folder under --out, then `reverie report` of them "
                       "into OUT/report. Running the same command again skips finished trials "
                       "and resumes unfinished ones from their checkpoints; a crashed trial is "
                       "resumed up to --retries times. Ctrl-C stops the running trials with "
                       "their checkpoints.")
    s.add_argument("--preset", type=_given, default=None,
                   help="a bundled preset (`reverie presets`) or your own YAML file "
                        "(default: cartpole, or the --agent's preset)")
    s.add_argument("--agent", type=_given, default=None, help=AGENT_HELP)
    s.add_argument("--env", type=_given, dest="envs", action="append", default=[], metavar="ENV",
                   help="env spec (repeatable; default: the preset's)")
    s.add_argument("--seeds", type=_positive_int, default=1,
                   help="seeds 0..N-1 per setting (default 1)")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="env steps per trial (default: the preset's run.steps)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every trial")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key to vary (repeatable: the grid is their product)")
    s.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: processes on this machine (the default); ray: Ray tasks, on a "
                        "local Ray instance or the cluster of --address")
    s.add_argument("--address", type=_given, default=None,
                   help="Ray cluster to join (auto or HOST:PORT; default: a local Ray instance)")
    s.add_argument("--out", type=_given, default=None,
                   help="sweep folder (default sweeps/<preset>)")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="trials at a time (default: CPU cores / 2, at least 1)")
    s.add_argument("--retries", type=_int, default=2,
                   help="times a crashed or killed trial is resumed (default 2)")

    pr = sub.add_parser("presets", help="list the bundled presets, or show one in full")
    pr.add_argument("name", nargs="?", type=_given,
                    help="a preset to show (its file, comments included), or an agent's name: "
                    "its presets")
    p.commands = sub.choices  # name -> its parser, for the unknown-option error
    return p


def _default_out(cfg) -> Path:
    from reverie.config import backbone_of

    backbone = backbone_of(cfg)
    agent = cfg.agent
    if agent == "mbpo" and cfg.mbpo.mode != "mbpo":  # one mode's run is not another's
        agent = f"mbpo-{cfg.mbpo.mode}"
    if backbone is None or cfg.agent != "imagine":  # the default agent keeps short names
        backbone = agent if backbone is None else f"{agent}-{backbone}"
    name = f"{cfg.env.id}-{backbone}-s{cfg.seed}".replace("/", "_").replace(":", "_")
    return Path("runs") / name


def cmd_train(args: argparse.Namespace) -> int:
    from reverie.config import build_config, config_yaml, preset_of_agent
    from reverie.run.checks import check_env
    from reverie.run.driver import Trainer, resume_config

    if args.resume:
        run = Path(args.resume)
        fixed = {"--preset": args.preset, "--agent": args.agent, "--env": args.env,
                 "--backbone": args.backbone, "--seed": args.seed, "--out": args.out}
        for flag, value in fixed.items():
            if flag == "--out" and value is not None:
                raise UserError(f"--out cannot be used with --resume: a run continues in its "
                                f"own folder ({run}); drop --out, or start a new run at "
                                "--out without --resume")
            if value is not None:
                raise UserError(
                    f"{flag} cannot be used with --resume: a run keeps the {flag[2:]} it was "
                    f"created with (see {run / 'config.yaml'}); drop {flag}, or start a new run"
                )
        overrides = list(args.overrides)
        if args.show_config:  # the config the resume would train with
            from reverie.run.replay_setup import check_resume_capacity

            cfg = resume_config(run, args.steps, overrides)
            check_resume_capacity(cfg, run)  # what the resume would refuse
            print(config_yaml(cfg), end="")
            return 0
        trainer = Trainer.resume(run, args.steps, overrides)
    else:
        flags = {"env": args.env, "backbone": args.backbone, "steps": args.steps,
                 "seed": args.seed}
        overrides = list(args.overrides)
        preset = preset_of_agent(args.agent, args.preset, overrides)
        cfg = build_config(preset or "cartpole", overrides, flags)
        if args.show_config:
            check_env(cfg, agent=True)  # what training would refuse, refused here too
            print(config_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, Path(args.out) if args.out else _default_out(cfg))
    # --no-progress is this command's, not the run's: kept out of config.yaml, so that a
    # later resume (or the config used as a preset) shows progress again
    trainer.show_progress = not args.no_progress
    summary = trainer.train()
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reverie.run.folder import check_out_parent
    from reverie.run.policy import load

    given = [f for f, v in (("--horizon", args.horizon), ("--context", args.context))
             if v is not None]
    if given and not args.prediction:  # would be ignored in silence
        flags = " and ".join(given)
        raise UserError(f"{flags} {'set' if len(given) > 1 else 'sets'} the --prediction "
                        f"windows; add --prediction N (windows to score) or drop {flags}")
    if args.out is not None:  # checked before the episodes are played
        out = Path(args.out)
        # a trailing / names a folder too (Path drops it: a file of that name was written)
        if out.is_dir() or args.out.endswith(("/", os.sep)):
            raise UserError(f"--out must be a file path for the JSON, got the folder "
                            f"'{args.out}'; e.g. --out {out / 'eval.json'}")
        check_out_parent(out)
    policy = load(args.run, best=args.best)
    if args.prediction < 0:
        raise UserError(f"--prediction must be >= 0 windows, got {args.prediction}")
    if args.prediction and not hasattr(policy.agent, "world"):
        raise UserError(f"--prediction scores a latent world model's open-loop prediction "
                        f"(agent imagine); agent '{policy.cfg.agent}' has none (drop "
                        "--prediction)")
    if args.prediction:  # before the episodes are played, not after
        from reverie.eval.prediction import HORIZON, check_window

        check_window(policy, args.context, args.horizon or HORIZON)
    returns = policy.evaluate(args.episodes, seed=args.seed,
                              on_step=_eval_progress(args.episodes))
    result = {"run": str(args.run), "checkpoint_step": policy.step,
              **({"best": True, "training_eval_return": policy.eval_return}
                 if args.best else {}),
              "episodes": len(returns), "returns": returns, "mean": sum(returns) / len(returns)}
    if args.prediction:
        from reverie.eval.prediction import HORIZON, prediction_error

        try:
            result["prediction"] = prediction_error(
                policy, windows=args.prediction, context=args.context,
                horizon=args.horizon or HORIZON,
                seed=args.seed).as_dict()
        except UserError as e:  # the returns are printed, not saved over an earlier result
            print(json.dumps(result), flush=True)
            raise UserError(f"{e} (the returns above are not saved)") from None
    _report_eval(args, result)
    pred = result.get("prediction", {})
    if pred.get("windows", args.prediction) < args.prediction:
        print(f"reverie: note: --prediction scored {pred['windows']} of {args.prediction} "
              f"windows: the greedy episodes held no more windows of {pred['context']} observed "
              f"+ {len(pred['model_mse'])} imagined steps (up to 4 an episode); lower "
              "--context/--horizon for more", file=sys.stderr)
    return 0


def _report_eval(args: argparse.Namespace, result: dict) -> None:
    """Save an eval result where `reverie eval` saves (a failed save is a note after the
    result), then print it: saved first, so a closed pipe (`| head`) cannot lose it."""
    text = json.dumps(result)
    note = _save_eval(args, text)
    print(text, flush=True)
    if note:
        print(f"reverie: note: {note}", file=sys.stderr)


EVAL_PROGRESS_S = 10.0  # between `reverie eval`'s progress lines


def _eval_progress(episodes: int):
    """A line on stderr every EVAL_PROGRESS_S while the greedy episodes play: a long one
    (an Atari agent that never fires plays to the 108k-frame cap) was minutes of silence."""
    last = [time.monotonic()]

    def said(steps: int, ended: int) -> None:
        now = time.monotonic()
        if now - last[0] >= EVAL_PROGRESS_S:
            last[0] = now
            print(f"reverie: evaluating: {steps:,} env steps played, {ended} of {episodes} "
                  "episodes ended", file=sys.stderr, flush=True)

    return said


def _save_eval(args: argparse.Namespace, text: str) -> str | None:
    """Write `text` to the eval JSON's path; returns a note when it is not saved."""
    if args.out is not None:
        out = Path(args.out)
    elif Path(args.run).is_dir():
        out = Path(args.run) / ("eval-best.json" if args.best else "eval.json")
    else:  # a checkpoint file: which run's eval.json it would belong in is not certain
        return "the result of a checkpoint file is printed, not saved; add --out FILE to save it"
    try:
        if out.is_symlink():
            raise OSError(errno.ELOOP, "a link, never written through")
        out.write_text(text + "\n")
    except OSError as e:
        return (f"could not save {out} ({e.strerror}); the result is printed above (save it "
                "elsewhere with --out FILE)")
    return None


def cmd_watch(args: argparse.Namespace) -> int:
    from reverie.eval.video import watch

    notes: list[str] = []
    out = watch(args.run, steps=args.steps, out=args.out, notes=notes, best=args.best,
                seed=args.seed)
    for note in notes:
        print(f"reverie: note: {note}", file=sys.stderr)
    print(json.dumps({"gif": [str(p) for p in out if p.suffix == ".gif"],
                      "plot": [str(p) for p in out if p.suffix == ".png"]}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reverie.eval.report import write_report

    path, warnings = write_report(args.runs, args.out, args.group_by,
                                  finished_only=args.finished_only, returns=args.returns)
    for line in warnings:
        print(f"reverie: warning: {line}", file=sys.stderr)
    print(json.dumps({"report": str(path),
                      "skipped": sum(w.startswith("skipped ") for w in warnings)}))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from reverie.config import preset_of_agent
    from reverie.distributed.sweep import Sweep, run_sweep

    preset = preset_of_agent(args.agent, args.preset, [*args.overrides, *args.grid])
    sweep = Sweep(preset=preset, envs=list(args.envs),
                  seeds=args.seeds, steps=args.steps, overrides=list(args.overrides),
                  grid=list(args.grid), out=args.out, workers=args.workers,
                  retries=args.retries)

    def said(r: dict) -> None:
        extra = f" after {r['resumes']} resume(s)" if r["resumes"] else ""
        if r.get("extended"):
            extra = f" (extended from its earlier run.steps){extra}"
        if r.get("note"):
            extra = f": {r['note']}"
        if r["status"] == "failed":
            extra = f" after {r['attempts']} attempt(s): {r['error']}"
        if r["status"] == "stopped":
            extra = f": {r['note']}" if r.get("note") else \
                " with its checkpoint (resumed by the next run of this sweep)"
        print(f"reverie: trial {r['name']} {r['status']}{extra}", file=sys.stderr, flush=True)

    summary = run_sweep(sweep, backend=args.backend, address=args.address, on_result=said,
                        on_note=lambda line: print(f"reverie: note: {line}", file=sys.stderr,
                                                   flush=True))
    if summary.get("earlier_trials"):
        print(f"reverie: note: sweep.json and the report also hold the {summary['earlier_trials']} "
              "trial(s) an earlier run of this sweep made with other arguments", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and "report_error" not in summary else 1


def cmd_presets(name: str | None) -> int:
    """`reverie presets`: the table of bundled presets; `presets NAME`: one preset's file, or
    for an agent's name the table of its presets."""
    from reverie.config import (
        AGENTS,
        agent_presets,
        is_preset_file,
        preset_summary,
        preset_text,
        presets,
    )

    if name and is_preset_file(name):
        raise UserError(f"`reverie presets` shows the bundled presets; for what {name} sets, "
                        f"run `reverie train --preset {name} --show-config`")
    if name and (name not in AGENTS or name in presets()):  # 'random': agent and preset
        print(preset_text(name), end="")
        return 0
    print(f"{'preset':<24} {'agent':<8} {'env':<30} {'steps':>9}  about")
    print("\n".join(preset_summary(n) for n in (agent_presets(name) if name else presets())))
    print("(`reverie presets NAME` shows one in full; or --preset FILE.yaml: your own, "
          "optionally with base: <preset>)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; its output is flushed before it returns, so a reader that has gone (`reverie
    presets | head -1`) is met here, and ends the command quietly with 141 (SIGPIPE's shell
    code) rather than with Python's error at exit."""
    try:
        try:
            code = _main(argv)
        except SystemExit:  # --help, --version: what they printed goes out now
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe (an env worker's, Ray's): not the reader's
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (its write end polls as an error)."""
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


def _main(argv: list[str] | None) -> int:
    from reverie.allocator import keep_freed_memory
    from reverie.distributed.trial import PARENT_ENV, follow_parent
    from reverie.openmp import shorten_spin_waits, wants_long_spin

    if PARENT_ENV in os.environ:  # started by a sweep or a benchmark: end with it
        follow_parent()
    keep_freed_memory()  # large activations stay mapped between passes (allocator.py)
    if not wants_long_spin(sys.argv[1:] if argv is None else argv):  # run.share_cores
        shorten_spin_waits()  # OpenMP threads yield a shared core soon (openmp.py); before torch
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return USAGE_EXIT
        if args.command == "presets":
            return cmd_presets(args.name)
        handler = {"train": cmd_train, "eval": cmd_eval, "watch": cmd_watch,
                   "report": cmd_report, "sweep": cmd_sweep}[args.command]
        return handler(args)
    except UserError as e:  # a stop by a signal is asked for, not an error: said without one
        print(f"reverie: {'' if isinstance(e, Stopped) else 'error: '}{e}", file=sys.stderr)
        return getattr(e, "exit_code", USAGE_EXIT)  # a stop by a signal: 128 + its number
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise
        print(f"reverie: error: {e.strerror}: {e.filename or ''}; free disk space or choose a "
              "writable --out (checkpoints already written are intact)", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print("reverie: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
