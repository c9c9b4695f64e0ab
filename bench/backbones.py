"""Backbone throughput benchmark: reverie's five backbones next to two peers.

    python bench/backbones.py            # full: B=16, D=512, 2 layers, T in {64, 256, 1024}
    python bench/backbones.py --quick    # tiny sizes, a smoke test in well under a minute

Models: `reverie.sequence.BACKBONES` with their defaults (the Transformer gets
`context=T` for training, so it attends to the whole sequence like the O(T) models remember
it, and its default context 64 for `step`, as in imagination), and the peers
`torch.nn.GRU(D, D, num_layers=2, batch_first=True)` and mambapy's pure-PyTorch Mamba
(d_state 16). Every (model, T) measurement runs in its own subprocess so that one failure
or crash is recorded as an error and peak memory is not polluted by earlier runs.

What is measured
* `train_tokens_per_s`: B*T / median wall time of forward + backward of `y.pow(2).mean()`
  (a few timed iterations after one warm-up).
* `peak_rss_mib`: growth of the process's peak resident set (`ru_maxrss`) from just before
  the warm-up to the end of the timed iterations: activations, gradients and allocator
  caching of one fwd+bwd, not the model weights or the Python/torch baseline.
* `step_ms`: median latency of one `step` at batch 1024 (the imagination batch).
* `matmul_peak_flops`: best of several 2048^3 fp32 GEMMs on this machine.
* `fraction_of_peak` = 3 * fwd_flops_per_token * train_tokens_per_s / matmul_peak_flops.

FLOPs per token of the forward pass (fwd+bwd counted as 3x forward), per layer, summed:
* dense: 2 * (number of weights in tensors of rank >= 2, learned position tables
  excluded): every weight matrix and (depthwise) conv kernel does one multiply-add per
  token. nn.GRU: 2 * (3D*D + 3D*D) = 12 D^2; Transformer: 2 * (3D^2 + D^2 + 8D^2) = 24 D^2.
* sequence mixing, not in the dense term:
  - transformer: 4 * D * S, S = mean over t of min(t + 1, context) (QK^T and AV over the
    causal window; masked-out work is not counted);
  - mamba1, mamba2, ffm, mambapy: 4 * (recurrent state elements per row), the recurrent
    form's decay multiply-add plus read-out multiply-add per state element (for reverie
    backbones the state elements come from `initial_state(1)`; mambapy: expand*D*d_state);
  - gru: 0 (the recurrence is a matmul, already dense).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

PEERS = ("nn.GRU", "mambapy")
FULL = {"batch": 16, "d_model": 512, "n_layers": 2, "lengths": [64, 256, 1024],
        "step_batch": 1024, "iters": 3, "step_iters": 10}
QUICK = {"batch": 2, "d_model": 32, "n_layers": 2, "lengths": [16, 64],
         "step_batch": 16, "iters": 2, "step_iters": 3}
STEP_CONTEXT = 64  # the Transformer's default (STORM) context, used for step latency

FLOP_FORMULAS = {
    "dense": "2 * weights in rank>=2 tensors (position tables excluded), per token",
    "transformer": "dense + 4 * D * S per layer, S = mean_t min(t+1, context)",
    "recurrent_ssm": "dense + 4 * recurrent state elements per row (mamba1, mamba2, ffm, "
                     "mambapy)",
    "gru": "dense only (12 D^2 per layer)",
    "fwd_bwd": "3 * forward",
}


# -- models -----------------------------------------------------------------------------
class PeerGRU(nn.Module):
    """torch.nn.GRU with the backbone call signature (no resets)."""

    def __init__(self, d_model: int, n_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(d_model, d_model, num_layers=n_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(x)[0]

    def initial_state(self, batch: int) -> Tensor:
        return torch.zeros(self.gru.num_layers, batch, self.gru.hidden_size)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        y, h = self.gru(x.unsqueeze(1), h)
        return y[:, 0], h


class PeerMamba(nn.Module):
    """mambapy's pure-PyTorch Mamba (parallel scan in training, recurrent step)."""

    def __init__(self, d_model: int, n_layers: int) -> None:
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig

        self.config = MambaConfig(d_model=d_model, n_layers=n_layers, d_state=16)
        self.mamba = Mamba(self.config)

    def forward(self, x: Tensor) -> Tensor:
        return self.mamba(x)

    def initial_state(self, batch: int) -> list:
        c = self.config
        e = c.expand_factor * c.d_model
        return [(torch.zeros(batch, e, c.d_state), torch.zeros(batch, e, c.d_conv - 1))
                for _ in range(c.n_layers)]

    def step(self, x: Tensor, caches: list) -> tuple[Tensor, list]:
        return self.mamba.step(x, caches)

    def state_elements(self) -> int:
        c = self.config
        return c.expand_factor * c.d_model * c.d_state * c.n_layers


def build(name: str, d_model: int, n_layers: int, context: int | None) -> nn.Module:
    if name == "nn.GRU":
        return PeerGRU(d_model, n_layers)
    if name == "mambapy":
        return PeerMamba(d_model, n_layers)
    from reverie.sequence import make_backbone

    kwargs = {"context": context} if name == "transformer" and context else {}
    return make_backbone(name, d_model=d_model, n_layers=n_layers, **kwargs)


def run_forward(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def flops_per_token(name: str, model: nn.Module, T: int, d_model: int, n_layers: int,
                    context: int | None) -> float:
    """Forward FLOPs per token (see the module docstring for the formulas)."""
    dense = 2.0 * sum(p.numel() for n, p in model.named_parameters()
                      if p.dim() >= 2 and "pos_emb" not in n)
    if name in ("gru", "nn.GRU"):
        return dense
    if name == "transformer":
        c = context or T
        s = sum(min(t + 1, c) for t in range(T)) / T
        return dense + 4.0 * d_model * s * n_layers
    if name == "mambapy":
        return dense + 4.0 * model.state_elements()
    state = model.initial_state(1)
    return dense + 4.0 * sum(v.numel() for layer in state for v in layer.values())


# -- measurements (run inside a worker subprocess) --------------------------------------
def max_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_train(name: str, cfg: dict, T: int) -> dict:
    torch.manual_seed(0)
    B, D, L = cfg["batch"], cfg["d_model"], cfg["n_layers"]
    context = T if name == "transformer" else None
    model = build(name, D, L, context).train()
    x = torch.randn(B, T, D)
    rss0 = max_rss_mib()
    times = []
    for i in range(cfg["iters"] + 1):
        t0 = time.perf_counter()
        run_forward(model, x).pow(2).mean().backward()
        if i > 0:  # the first iteration is warm-up
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    sec = statistics.median(times)
    return {
        "train_tokens_per_s": B * T / sec,
        "train_iter_s": sec,
        "peak_rss_mib": max_rss_mib() - rss0,
        "fwd_flops_per_token": flops_per_token(name, model, T, D, L, context),
        "params": sum(p.numel() for p in model.parameters()),
        "context": context,
    }


@torch.no_grad()
def measure_step(name: str, cfg: dict) -> dict:
    torch.manual_seed(0)
    B, D, L = cfg["step_batch"], cfg["d_model"], cfg["n_layers"]
    context = STEP_CONTEXT if name == "transformer" else None
    model = build(name, D, L, context).eval()
    state = model.initial_state(B)
    x = torch.randn(B, D)
    times = []
    for i in range(cfg["step_iters"] + 2):
        t0 = time.perf_counter()
        _, state = model.step(x, state)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {"step_ms": 1e3 * statistics.median(times), "step_batch": B, "step_context": context}


def matmul_peak_flops(n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best


def best_matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 10) -> float:
    """The best GEMM rate over a few sizes: a single size can land on a slow blocking."""
    return max(matmul_peak_flops(n, repeats) for n in sizes)


def repeak(path: Path) -> None:
    """Re-measure the matmul peak on a quiet machine and rescale the fractions of a result:
    peak = max(the run's own measurement, this one), both recorded."""
    report = json.loads(path.read_text())
    new = best_matmul_peak()
    peak = max(report["matmul_peak_flops"], new)
    report["matmul_peak_first_measurement"] = report["matmul_peak_flops"]
    report["matmul_peak_remeasured"] = new
    report["matmul_peak_flops"] = peak
    report["matmul_peak_note"] = ("max of the run's 2048^3 measurement and a re-measurement "
                                  "(best of 10 at 1024/2048/3072) on the quiet machine after it")
    for entry in report["models"].values():
        for r in entry["train"].values():
            if "train_tokens_per_s" in r:
                r["fraction_of_peak"] = 3 * r["fwd_flops_per_token"] * r[
                    "train_tokens_per_s"] / peak
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, path.with_suffix(".png"))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    if not args.default_malloc:
        from reverie.allocator import keep_freed_memory

        keep_freed_memory()
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    out = measure_step(args.model, cfg) if args.step else measure_train(args.model, cfg, args.T)
    print(json.dumps(out))


# -- driver -----------------------------------------------------------------------------
def in_subprocess(args: argparse.Namespace, model: str, T: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--threads", str(args.threads)]
    cmd += ["--step"] if T is None else ["--T", str(T)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--default-malloc"] if args.default_malloc else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": cpu, "logical_cpus": os.cpu_count(),
            "torch_threads": threads, "python": platform.python_version(),
            "platform": platform.platform()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--repeak", action="store_true",
                   help="re-measure the matmul peak and rescale an existing result")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    p.add_argument("--models", nargs="*", default=None, help="subset of models to run")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds (A B A B ...); default 5, 1 with --quick")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's allocator thresholds at their defaults in the workers")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    p.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.worker:
        worker(args)
        return

    from reverie.sequence import BACKBONES

    if args.repeak:
        repeak(Path(args.out) / "backbones.json")
        return
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    models = args.models or [*BACKBONES, *PEERS]
    if "mambapy" in models and importlib.util.find_spec("mambapy") is None:
        # every round would record an import error (make test's venv has no bench extra)
        p.error("mambapy is not installed: run `make bench` (or pip install 'reverie[bench]'), "
                "or leave it out with --models")
    peak = matmul_peak_flops(256) if args.quick else best_matmul_peak()
    load0 = os.getloadavg()[0]
    # A B A B ...: every round measures every model once per T (fresh subprocess each), the
    # model order rotating per round, so slow phases of a shared machine hit all models.
    runs: dict[str, dict[str, list[dict]]] = {m: {} for m in models}
    for r in range(args.rounds):
        order = models[r % len(models):] + models[:r % len(models)]
        for T in [*cfg["lengths"], None]:
            for name in order:
                m = in_subprocess(args, name, T)
                runs[name].setdefault("step" if T is None else str(T), []).append(m)
                print(f"round {r} {name:12s} {'step' if T is None else f'T={T:5d}'} "
                      f"{_short(m, peak)}", file=sys.stderr, flush=True)
    results = {name: {"train": {T: _median_entry(ms, "train_tokens_per_s", peak)
                                for T, ms in by_t.items() if T != "step"},
                      "step": _median_entry(by_t["step"], "step_ms", peak)}
               for name, by_t in runs.items()}
    load1 = os.getloadavg()[0]
    t_max = str(max(cfg["lengths"]))
    ratios = {}
    for a, b in (("mamba2", "nn.GRU"), ("ffm", "nn.GRU"), ("mamba2", "mambapy")):
        if a in runs and b in runs:
            pairs = [(x.get("train_tokens_per_s"), y.get("train_tokens_per_s"))
                     for x, y in zip(runs[a][t_max], runs[b][t_max])]
            vals = [x / y for x, y in pairs if x and y]
            if vals:
                ratios[f"{a}/{b}@T={t_max}"] = {
                    "median": statistics.median(vals), "min": min(vals), "max": max(vals),
                    "per_round": vals}
    report = {
        "benchmark": "backbones",
        "quick": args.quick,
        "config": {k: v for k, v in cfg.items()},
        "transformer_context": {"train": "T", "step": STEP_CONTEXT},
        "machine": machine_info(args.threads),
        "matmul_peak_flops": peak,
        "rounds": args.rounds,
        "allocator": "default glibc" if args.default_malloc else
                     "reverie.keep_freed_memory() in every worker (models and peers alike)",
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
        "loaded": max(load0, load1) > (os.cpu_count() or 1),
        "ratios": ratios,
        "matmul_peak_size": 256 if args.quick else 2048,
        "flop_formulas": FLOP_FORMULAS,
        "memory": "peak_rss_mib: growth of ru_maxrss over warm-up + timed fwd+bwd, in a fresh "
                  "subprocess per (model, T)",
        "models": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "backbones_quick" if args.quick else "backbones"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}", file=sys.stderr)


def _median_entry(ms: list[dict], key: str, peak: float) -> dict:
    """One (model, T) cell: the median round's numbers, with min-max and every round."""
    good = [m for m in ms if key in m]
    if not good:
        return ms[-1]
    good.sort(key=lambda m: m[key])
    entry = dict(good[(len(good) - 1) // 2])  # the lower median: an actual measurement
    values = [m[key] for m in good]
    entry.update({key: statistics.median(values), f"{key}_min": values[0],
                  f"{key}_max": values[-1], f"{key}_rounds": [m[key] for m in ms if key in m],
                  "errors": len(ms) - len(good)})
    if key == "train_tokens_per_s":
        entry["fraction_of_peak"] = 3 * entry["fwd_flops_per_token"] * entry[key] / peak
    return entry


def _short(r: dict, peak: float) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:100]
    if "step_ms" in r:
        return f"{r['step_ms']:.2f} ms/step"
    frac = 3 * r["fwd_flops_per_token"] * r["train_tokens_per_s"] / peak
    return f"{r['train_tokens_per_s']:,.0f} tok/s  {frac:.1%} of peak  " \
           f"{r['peak_rss_mib']:.0f} MiB"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    lengths = report["config"]["lengths"]
    t_max = str(max(lengths))
    names, fracs = [], []
    for name, entry in report["models"].items():
        pts = [(int(T), r["train_tokens_per_s"]) for T, r in entry["train"].items()
               if "train_tokens_per_s" in r]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=name)
        r = entry["train"].get(t_max, {})
        names.append(name)
        fracs.append(r.get("fraction_of_peak", 0.0))
    ax1.set(xscale="log", yscale="log", xlabel="sequence length T",
            ylabel="train tokens/s (fwd+bwd)", title="throughput")
    ax1.set_xticks(lengths, [str(t) for t in lengths])
    ax1.legend(fontsize=8)
    ax2.bar(names, fracs)
    ax2.set(ylabel="fraction of fp32 matmul peak", title=f"fraction of peak at T={t_max}")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
