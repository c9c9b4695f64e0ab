"""The allocator fix, measured: glibc's default thresholds vs `reverie.keep_freed_memory()`.

    python bench/allocator.py                 # B=16, D=512, 2 layers, T=1024, 5 rounds
    python bench/allocator.py --quick         # tiny sizes, a smoke test

Both settings are measured in ONE process, in alternation (round r: for each model, default
then keep, or keep then default on odd rounds), because the thresholds are a process-wide
runtime setting (`mallopt`) that can be switched back and forth. Per (model, setting):
median and min-max of forward+backward tokens/s over the rounds; per model: the median and
min-max of the per-round ratio keep/default. The 1-minute load average is recorded before
and after; a run whose load exceeded the core count says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from backbones import machine_info  # bench/ is the script's directory
from reverie.allocator import DEFAULT_MMAP, DEFAULT_TRIM, KEEP, set_thresholds
from reverie.sequence import make_backbone
from runlib import spread

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"default": (DEFAULT_MMAP, DEFAULT_TRIM), "keep": (KEEP, KEEP)}


def build(name: str, d: int, layers: int) -> nn.Module:
    if name == "nn.GRU":
        gru = nn.GRU(d, d, num_layers=layers, batch_first=True)
        return lambda x: gru(x)[0]  # noqa: E731 - same call shape as the backbones
    model = make_backbone(name, d_model=d, n_layers=layers)
    return lambda x: model(x, model.initial_state(x.shape[0]), None)[0]  # noqa: E731


def tokens_per_s(fn, x: torch.Tensor, iters: int) -> float:
    fn(x).pow(2).mean().backward()  # warm-up under the current setting
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x).pow(2).mean().backward()
        times.append(time.perf_counter() - t0)
    return x.shape[0] * x.shape[1] / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", nargs="*", default=["mamba2", "nn.GRU", "ffm"])
    args = p.parse_args()
    B, T, D, L, iters = (2, 64, 32, 2, 2) if args.quick else (16, 1024, 512, 2, 2)
    torch.manual_seed(0)
    models = {m: build(m, D, L) for m in args.models}
    x = torch.randn(B, T, D, requires_grad=False)
    load0 = os.getloadavg()[0]
    rates: dict[str, dict[str, list[float]]] = {m: {s: [] for s in SETTINGS} for m in models}
    for r in range(args.rounds):
        order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
        for name, fn in models.items():
            for setting in order:
                set_thresholds(*SETTINGS[setting])
                rates[name][setting].append(tokens_per_s(fn, x, iters))
        print(json.dumps({"round": r, **{m: {s: round(v[-1]) for s, v in d.items()}
                                         for m, d in rates.items()}}), flush=True)
    load1 = os.getloadavg()[0]
    result = {
        "benchmark": "allocator", "quick": args.quick,
        "settings": {"batch": B, "T": T, "d_model": D, "n_layers": L, "rounds": args.rounds,
                     "iters_per_measurement": iters, "thresholds": SETTINGS},
        "machine": machine_info(torch.get_num_threads()),
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(load1, 2),
        "loaded": max(load0, load1) > (os.cpu_count() or 1),
        "models": {
            m: {"tokens_per_s": {s: spread(v, 3) for s, v in d.items()},
                "ratio_keep_over_default": spread([k / dflt for k, dflt in
                                                   zip(d["keep"], d["default"])], 3)}
            for m, d in rates.items()
        },
    }
    if "mamba2" in rates and "nn.GRU" in rates:
        result["mamba2_over_gru"] = {
            s: spread([a / b for a, b in zip(rates["mamba2"][s], rates["nn.GRU"][s])], 3)
            for s in SETTINGS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("allocator_quick.json" if args.quick else "allocator.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({m: v["ratio_keep_over_default"]["median"]
                      for m, v in result["models"].items()}))


if __name__ == "__main__":
    main()
