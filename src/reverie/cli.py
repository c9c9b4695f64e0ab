"""`reverie train | eval | watch`: the command line. User mistakes exit with code 2 and one line."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from reverie.errors import UserError

USAGE_EXIT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="reverie", description="Sample-efficient model-based RL on a laptop CPU.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train an agent; writes a run folder")
    t.add_argument("--preset", default=None, help="named preset (default: cartpole)")
    t.add_argument("--env", default=None, help="env spec, e.g. CartPole-v1, ALE/Pong-v5")
    t.add_argument("--backbone", default=None, help="gru | transformer | mamba1 | mamba2 | ffm")
    t.add_argument("--steps", type=_positive_int, default=None, help="env steps to train")
    t.add_argument("--seed", type=_int, default=None)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set run.train_ratio=512")
    t.add_argument("--out", default=None, help="run folder (default runs/<env>-<backbone>-s<seed>)")
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a killed or finished run (with --steps to extend it)")
    t.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint; prints JSON")
    e.add_argument("run")
    e.add_argument("--episodes", type=_positive_int, default=10)
    e.add_argument("--seed", type=_int, default=12345)
    e.add_argument("--out", default=None, help="JSON path (default RUN/eval.json)")

    w = sub.add_parser("watch", help="GIF of the agent (and real vs imagined frames for images)")
    w.add_argument("run")
    w.add_argument("--steps", type=_positive_int, default=300)
    w.add_argument("--out", default=None, help="GIF path (default RUN/watch.gif)")

    sub.add_parser("presets", help="list the bundled presets")
    return p


def _default_out(cfg) -> Path:
    from omegaconf import OmegaConf

    from reverie.config import agent_parts

    _, _, key = agent_parts(cfg.agent)
    backbone = (OmegaConf.select(cfg, f"{cfg.agent}.{key}", default=None) if key else None)
    if backbone is None or cfg.agent != "imagine":  # the default agent keeps short names
        backbone = cfg.agent if backbone is None else f"{cfg.agent}-{backbone}"
    name = f"{cfg.env.id}-{backbone}-s{cfg.seed}".replace("/", "_").replace(":", "_")
    return Path("runs") / name


def cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from reverie.config import apply_resume_overrides, build_config, load_run_config
    from reverie.run.driver import Trainer
    from reverie.run.folder import check_no_links

    if args.resume:
        run = Path(args.resume)
        fixed = {"--preset": args.preset, "--env": args.env, "--backbone": args.backbone,
                 "--seed": args.seed, "--out": args.out}
        for flag, value in fixed.items():
            if value is not None:
                raise UserError(
                    f"{flag} cannot be used with --resume: a run keeps the {flag[2:]} it was "
                    f"created with (see {run / 'config.yaml'}); drop {flag}, or start a new run"
                )
        if not (run / "config.yaml").exists():
            raise UserError(f"cannot resume '{run}': no run there (missing config.yaml)")
        check_no_links(run)
        cfg = load_run_config(run)
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"run.steps={args.steps}")
        if args.no_progress:
            overrides.append("run.progress=false")
        cfg = apply_resume_overrides(cfg, overrides)
        if args.show_config:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, run, resume=True)
    else:
        flags = {"env": args.env, "backbone": args.backbone, "steps": args.steps,
                 "seed": args.seed}
        overrides = list(args.overrides)
        if args.no_progress:
            overrides.append("run.progress=false")
        cfg = build_config(args.preset or "cartpole", overrides, flags)
        if args.show_config:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, Path(args.out) if args.out else _default_out(cfg))
    summary = trainer.train()
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reverie.run.policy import load

    policy = load(args.run)
    returns = policy.evaluate(args.episodes, seed=args.seed)
    result = {"run": str(args.run), "episodes": len(returns), "returns": returns,
              "mean": sum(returns) / len(returns)}
    text = json.dumps(result)
    print(text, flush=True)  # the result first: a failed save below must not lose it
    if args.out is not None:
        out = Path(args.out)
    elif Path(args.run).is_dir():
        out = Path(args.run) / "eval.json"
    else:
        return 0
    try:
        if out.is_symlink():
            raise OSError(errno.ELOOP, "a link, never written through")
        out.write_text(text + "\n")
    except OSError as e:
        print(f"reverie: note: could not save {out} ({e.strerror}); the result is printed "
              "above (save it elsewhere with --out FILE)", file=sys.stderr)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from reverie.eval.video import watch

    out = watch(args.run, steps=args.steps, out=args.out)
    print(json.dumps({"gif": [str(p) for p in out]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from reverie.allocator import keep_freed_memory

    keep_freed_memory()  # large activations stay mapped between passes (allocator.py)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return USAGE_EXIT
        if args.command == "presets":
            from reverie.config import presets

            print("\n".join(presets()))
            return 0
        handler = {"train": cmd_train, "eval": cmd_eval, "watch": cmd_watch}[args.command]
        return handler(args)
    except UserError as e:
        print(f"reverie: error: {e}", file=sys.stderr)
        return USAGE_EXIT
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
