"""Memory probe: can a backbone learn to recall the symbol seen k steps ago (or the first one)?

    python bench/recall.py                              # every variant, lags 1 4 16 + first
    python bench/recall.py --variants ffm ffm:max_period=16 --lags 4 --seeds 0 1 2
    python bench/recall.py --quick                      # a smoke test

A supervised check of what a memory can hold, without RL's noise: the input is a sequence of
random one-hot symbols (4 of them, like POPGym's card suits), the target at step t is the
symbol of step t − k ("lag k", POPGym's RepeatPrevious with k = 4 on Easy) or of step 0
("first", RepeatFirst). Model: Linear(4 → D) → backbone (D, n layers) → Linear(D → 4),
trained with Adam on cross-entropy over the steps that have a target. Reported per variant
and task: the accuracy on fresh sequences after training (chance 0.25), median and min–max
over seeds, and the accuracy curve. Sizes default to the `popgym-ppo` preset's memory
(D = 64, 1 layer).

"first" has no cue in the input: a memory must tell step 0 from the others by itself (a zero
initial state that a state-dependent gate sees, or a convolution's zero padding). FFM's gates
see only the current input, so it cannot; in POPGym's RepeatFirst the agent's previous action
(none at step 0) is that cue.

A variant is a backbone name with optional backbone options, `name:key=value,key=value`
(values parsed as YAML scalars): `ffm:max_period=16`, `ffm:init=reference,norm_affine=false`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from reverie.sequence import make_backbone

RESULTS = Path(__file__).parent / "results"
SYMBOLS = 4
# ffm: reverie's default (oscillation periods over [1, 16] steps); ffm:max_period=1024: the
# paper's periods with reverie's init otherwise (reverie's default before 2026-12-02)
VARIANTS = ["gru", "transformer", "mamba2", "ffm", "ffm:max_period=1024",
            "ffm:init=reference,norm_affine=false"]
TASKS = ["lag1", "lag4", "lag16", "first"]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, opts = text.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"bad variant '{text}': options are key=value, e.g. "
                             "ffm:max_period=16")
        kwargs[key] = yaml.safe_load(value)
    return name, kwargs


class Probe(nn.Module):
    def __init__(self, variant: str, d_model: int, n_layers: int) -> None:
        super().__init__()
        name, kwargs = parse_variant(variant)
        self.embed = nn.Linear(SYMBOLS, d_model)
        self.backbone = make_backbone(name, d_model=d_model, n_layers=n_layers, **kwargs)
        self.head = nn.Linear(d_model, SYMBOLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.backbone(self.embed(x), self.backbone.initial_state(x.shape[0]), None)
        return self.head(h)


def batch(task: str, n: int, T: int, gen: torch.Generator):
    """Symbols [n, T] as one-hot inputs, the targets [n, T] and the mask of steps with one."""
    s = torch.randint(0, SYMBOLS, (n, T), generator=gen)
    if task == "first":
        target = s[:, :1].expand(n, T)
        mask = torch.ones(n, T, dtype=torch.bool)
        mask[:, 0] = False  # step 0 sees its own symbol: not a memory test
    else:
        k = int(task.removeprefix("lag"))
        target = torch.roll(s, k, dims=1)
        mask = (torch.arange(T) >= k).expand(n, T)
    return F.one_hot(s, SYMBOLS).float(), target, mask


def accuracy(model: Probe, task: str, T: int, gen: torch.Generator, n: int = 256) -> float:
    with torch.no_grad():
        x, y, mask = batch(task, n, T, gen)
        return (model(x).argmax(-1) == y)[mask].float().mean().item()


def train(variant: str, task: str, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    eval_gen = torch.Generator().manual_seed(20_000 + seed)
    model = Probe(variant, args.d_model, args.n_layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y, mask = batch(task, args.batch, args.seq_len, gen)
        loss = F.cross_entropy(model(x)[mask], y[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, round(accuracy(model, task, args.seq_len, eval_gen), 4)))
    return {"accuracy": curve[-1][1], "curve": curve, "wall_s": round(time.perf_counter() - t0, 1)}


def summarise(runs: list[dict]) -> dict:
    acc = [r["accuracy"] for r in runs]
    return {"seeds": len(runs), "median": round(statistics.median(acc), 4),
            "min": min(acc), "max": max(acc), "runs": runs}


def markdown(result: dict) -> str:
    tasks = result["tasks"]
    lines = ["| memory | " + " | ".join(tasks) + " |",
             "| --- | " + " | ".join("---" for _ in tasks) + " |"]
    for variant, by_task in result["results"].items():
        cells = []
        for t in tasks:
            s = by_task.get(t)
            cells.append("—" if s is None else
                         f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})")
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    c = result["config"]
    lines.append("")
    lines.append(
        f"Recall accuracy on fresh sequences after {c['steps']} Adam steps (lr {c['lr']}, "
        f"batch {c['batch']} x {c['seq_len']} steps), D = {c['d_model']}, {c['n_layers']} "
        f"layer(s); median (min–max) over {len(result['seeds'])} seeds; chance 0.25. "
        "lagK: the symbol of K steps ago; first: the sequence's first symbol.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (variant, by_task) in enumerate(result["results"].items()):
            for j, r in enumerate(by_task.get(task, {}).get("runs", [])):
                ax.plot(*zip(*r["curve"]), color=f"C{i}", alpha=0.8,
                        label=variant if j == 0 else None)
        ax.axhline(1 / SYMBOLS, color="grey", ls=":", lw=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("Adam steps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--tasks", nargs="+", default=TASKS,
                   help="lagK (any K >= 1) or first")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke test: few steps, one seed")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    for t in args.tasks:
        if t != "first" and not (t.startswith("lag") and t[3:].isdigit() and int(t[3:]) >= 1):
            p.error(f"unknown task '{t}': use lagK (K >= 1, e.g. lag4) or first")
        if t.startswith("lag") and int(t[3:]) >= args.seq_len:
            p.error(f"task {t} needs --seq-len above {t[3:]}")
    for variant in args.variants:  # a bad name or option: one line and exit 2, before any run
        try:
            Probe(variant, args.d_model, args.n_layers)
        except ValueError as e:
            p.error(str(e))
    if args.quick:
        args.steps, args.eval_every, args.seeds = 20, 10, args.seeds[:1]
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    results: dict[str, dict] = {}
    # seeds outermost, variants alternating inside: a slow phase of the machine hits all
    runs: dict[tuple[str, str], list[dict]] = {}
    for seed in args.seeds:
        for task in args.tasks:
            for variant in args.variants:
                r = train(variant, task, seed, args)
                runs.setdefault((variant, task), []).append({"seed": seed, **r})
                print(f"seed {seed} {task:6s} {variant:40s} acc {r['accuracy']:.3f} "
                      f"({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    for (variant, task), rs in runs.items():
        results.setdefault(variant, {})[task] = summarise(rs)
    load1 = os.getloadavg()[0]
    result = {"benchmark": "recall", "quick": args.quick,
              "config": {k: getattr(args, k) for k in
                         ("steps", "lr", "batch", "seq_len", "d_model", "n_layers", "threads")},
              "tasks": args.tasks, "seeds": args.seeds, "symbols": SYMBOLS,
              "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
              "results": results}
    result["markdown"] = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "recall_quick" if args.quick else "recall"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(result["markdown"])
    plot(result, args.out / f"{stem}.png")
    print(result["markdown"])


if __name__ == "__main__":
    main()
