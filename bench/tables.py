"""Markdown tables from the benchmark results in bench/results/*.json.

    python bench/tables.py                      # print every table it has results for
    python bench/tables.py --readme README.md   # also rewrite the marked README sections

A README section is the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->`;
NAME is a key of `TABLES`. To add a table (cartpole, reliability, ...), write a function
`(results_dir) -> str | None` that returns markdown (None when its JSON is absent) and
register it in `TABLES`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from reverie.eval.report import _n as _plural  # the report's plural, for every table

RESULTS = Path(__file__).parent / "results"
T_TARGET = "1024"



def _runs(n: int) -> str:
    return _plural(n, "run")


def load(results: Path, stem: str) -> tuple[dict | None, bool]:
    """The full result `stem.json`, else the smoke-test `stem_quick.json` (flagged True)."""
    for name, quick in ((f"{stem}.json", False), (f"{stem}_quick.json", True)):
        path = results / name
        if path.exists():
            return json.loads(path.read_text()), quick
    return None, False


def _median_range(v: dict, spec: str, unit: str = "") -> str:
    """'median (min–max)' of a summary dict, each formatted with `spec` and `unit`."""
    return (f"{format(v['median'], spec)}{unit} "
            f"({format(v['min'], spec)}–{format(v['max'], spec)})")


def _tps(entry: dict, T: str) -> float | None:
    return entry.get("train", {}).get(T, {}).get("train_tokens_per_s")


def _fmt(x: float | None, spec: str) -> str:
    return "error" if x is None else format(x, spec)


def targets_table(targets) -> str:
    """A blank line, then the | target | result | table of (description, pass/miss/None)."""
    rows = [_row([desc, {True: "pass", False: "miss", None: "n/a"}[ok]])
            for desc, ok in targets]
    return "\n".join(["", _row(["target", "result"]), _row(["---", "---"]), *rows])


def backbone_targets(report: dict, T: str) -> list[tuple[str, bool | None]]:
    """The throughput targets at sequence length T: (description, pass / miss / None),
    decided from the medians of the per-round ratios where the run alternated the models."""
    models, ratios = report["models"], report.get("ratios", {})

    def rounds(name: str, t: str) -> list[float] | None:
        return models.get(name, {}).get("train", {}).get(t, {}).get("train_tokens_per_s_rounds")

    def ratio_at_least(a: str, b: str, k: float) -> tuple[str, str, bool | None]:
        """(T it was decided at, how, pass/miss/None). Where b failed at T in any round
        (mambapy runs out of memory at T=1024 in most), the longest T at which both ran in
        every round decides: a ratio from fewer rounds is not a median over them."""
        r = ratios.get(f"{a}/{b}@T={T}")
        n_rounds = report.get("rounds")
        per = None if r is None else r.get("per_round")
        if r is not None and (n_rounds is None or per is None or len(per) == n_rounds):
            return (T, f" (median {r['median']:.2f}x, rounds {r['min']:.2f}–{r['max']:.2f}x)",
                    r["median"] >= k)
        short = min((a, b), key=lambda m: len(rounds(m, T) or []))
        ran = len(rounds(short, T) or [])
        failed = (f"{short} failed at T={T}" if not ran else
                  f"{short} ran at T={T} in {ran} of {n_rounds} rounds")
        lengths = sorted(models.get(b, {}).get("train", {}), key=int, reverse=True)
        for t in lengths:
            x, y = rounds(a, t), rounds(b, t)
            # the per-round lists drop failed rounds: only full lists pair round with round
            if x and y and len(x) == len(y) == (n_rounds or len(x)):
                per = [u / v for u, v in zip(x, y)]
                med = statistics.median(per)
                return (t, f" (median {med:.2f}x, rounds {min(per):.2f}–{max(per):.2f}x; "
                           f"{failed})", med >= k)
        x, y = _tps(models.get(a, {}), T), _tps(models.get(b, {}), T)
        return T, "", None if x is None or y is None else x >= k * y

    frac = models.get("mamba2", {}).get("train", {}).get(T, {}).get("fraction_of_peak")
    out = []
    for a, b, k in (("mamba2", "mambapy", 10), ("mamba2", "nn.GRU", 1.5), ("ffm", "nn.GRU", 1)):
        t, how, ok = ratio_at_least(a, b, k)
        out.append((f"{a} >= {k:g}x {b} tokens/s at T={t}{how}", ok))
    out.append((f"mamba2 fraction of peak >= 0.5 at T={T}", None if frac is None else frac >= 0.5))
    return out


def backbones_table(results: Path) -> str | None:
    report, quick = load(results, "backbones")
    if report is None:
        return None
    cfg, models = report["config"], report["models"]
    lengths = [str(t) for t in cfg["lengths"]]
    t_max = T_TARGET if T_TARGET in lengths else lengths[-1]
    head = (["model"] + [f"tokens/s T={t}" for t in lengths]
            + [f"frac. of peak T={t_max}", f"peak MiB T={t_max}",
               f"step ms (B={cfg['step_batch']})"])
    rows = []
    for name, e in models.items():
        r = e["train"].get(t_max, {})
        step = e.get("step", {}).get("step_ms")
        rows.append([f"`{name}`"] + [_fmt(_tps(e, t), ",.0f") for t in lengths]
                    + [_fmt(r.get("fraction_of_peak"), ".3f"), _fmt(r.get("peak_rss_mib"), ".0f"),
                       _fmt(step, ".2f")])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    m = report["machine"]
    note = (f"\nB={cfg['batch']}, D={cfg['d_model']}, {cfg['n_layers']} layers, fp32, "
            f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}; matmul peak "
            f"{report['matmul_peak_flops'] / 1e9:.0f} GFLOP/s. Transformer context: T in "
            f"training, {report['transformer_context']['step']} in step.")
    if "rounds" in report:
        note += (f" Medians of {report['rounds']} alternating rounds (each a fresh process); "
                 f"allocator: {report['allocator']}; 1-min load average "
                 f"{report['loadavg_1min_before']} before, {report['loadavg_1min_after']} after"
                 + (" — **the machine was loaded (load > cores)**." if report["loaded"] else "."))
        partial = [f"{name} at T={t} in {len(e['train_tokens_per_s_rounds'])} of "
                   f"{report['rounds']} rounds ({_plural(e['errors'], 'failure')})"
                   for name, m in models.items() for t, e in m["train"].items()
                   if e.get("errors") and e.get("train_tokens_per_s_rounds")]
        if partial:  # a median over the rounds that ran
            note += f" Measured in fewer rounds: {'; '.join(partial)}."
    else:
        note += " One measurement per model (before alternating rounds existed)."
    if quick:
        note += " **Smoke-test sizes (--quick), not a real measurement.**"
    return ("\n".join(lines) + "\n" + note + "\n"
            + targets_table(backbone_targets(report, t_max)))


def _step_cell(row: dict, step: int) -> str:
    """'mean [95% CI]' of a cartpole summary row at `step` ('–' where not evaluated)."""
    mean, ci = row.get(f"return@{step}"), row.get(f"return@{step}_ci95")
    if mean is None:
        return "–"
    band = f" [{ci[0]:.0f}–{ci[1]:.0f}]" if ci and row["seeds"] > 1 else ""
    return f"{mean:.0f}{band}"


def cartpole_table(results: Path) -> str | None:
    report, _ = load(results, "cartpole")
    if report is None:
        return None
    steps = (1000, 2000, 3000, 4000, 5000, 10000)
    head = ["agent", "seeds"] + [f"return @{s // 1000}k" for s in steps] + ["wall min/run"]
    rows = []
    for name, row in report["summary"].items():
        label = "SB3 PPO (defaults)" if name == "sb3-ppo" else f"reverie `{name}`"
        wall = row.get("wall_s_mean")
        rows.append([label, str(row["seeds"])] + [_step_cell(row, s) for s in steps]
                    + ["–" if wall is None else f"{wall / 60:.1f}"])
    t = report["targets"]
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    verdict = {True: "pass", False: "miss"}
    lines += ["", _row(["target", "result"]), _row(["---", "---"]),
              _row([f"mamba2 mean eval return >= 450 at 5k env steps ({t['seeds']} seeds)",
                    verdict[bool(t["mean_return_at_5k_ge_450"])]]),
              _row([f"under 15 min per seed (max {t['max_wall_minutes']} min)",
                    verdict[bool(t["wall_under_15_min"])]])]
    return ("\n".join(lines) + "\n\n" + report["protocol"] + ". Returns: mean over seeds, in "
            "brackets its 95% bootstrap interval over seeds (`reverie.eval.stats`).")


def reliability_table(results: Path) -> str | None:
    rows = []
    for path in sorted(results.glob("reliability-*.json")):
        r = json.loads(path.read_text())
        k, b = r["kills"], r["bad_inputs"]
        u = r.get("untrusted_runs")
        rows.append([f"`{r['agent']}` agent, {r['steps']} steps",
                     f"{k['survived']} / {k['tried']} ({k['mid_checkpoint_write']} mid-write)",
                     f"{b['handled']} / {b['tried']}",
                     f"{u['handled']} / {u['tried']}" if u else "not run",
                     f"{r['resume_restore_s']:.1f} s",
                     "identical" if r["deterministic"] else "DIFFERENT"])
    if not rows:
        return None
    head = ["run", "SIGKILLs survived (resumed run == uninterrupted)", "bad inputs handled",
            "untrusted run-folder cases handled", "resume restore time", "same seed twice"]
    return "\n".join([_row(head), _row(["---"] * len(head))] + [_row(x) for x in rows])


def cartpole_sweep_table(results: Path) -> str | None:
    report, _ = load(results, "cartpole_sweep")
    if report is None:
        return None
    head = ["variant (`--set`)", "seeds", "return @5k per seed", "mean @5k",
            "mean of last 3 evals", "max wall min", "target"]
    rows = []
    for r in report["summary"].values():
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "(preset as is)"
        per_seed = ", ".join(f"{x:.0f}" for x in r["return@5000_per_seed"])
        target = "pass" if r["meets_target"] else (
            "miss" if len(r["seeds"]) >= 3 else f"{len(r['seeds'])} seed(s)")
        rows.append([overrides, " ".join(map(str, r["seeds"])), per_seed,
                     f"{r['return@5000']:.0f}", f"{r['mean_of_last_3_evals']:.0f}",
                     f"{r['max_wall_min']:.1f}", target])
    return "\n".join([_row(head), _row(["---"] * len(head))] + [_row(x) for x in rows])


def throughput_table(results: Path) -> str | None:
    report, quick = load(results, "throughput")
    if report is None:
        return None
    text = report["markdown"]
    return text + ("\n\n**Smoke-test sizes (--quick), not a real measurement.**" if quick else "")


def dfs_table(results: Path) -> str | None:
    report, _ = load(results, "dfs")
    if report is None:
        return None
    head = ["task", "env steps", "sampler", "seeds", "final eval return (mean)",
            "mean over all evaluations"]
    rows = []
    for task, samplers in report["summary"].items():
        for sampler, r in samplers.items():
            if "mean_return_100_episodes" in r:  # the random-policy reference level
                rows.append([task, "–", sampler, "100 episodes",
                             f"{r['mean_return_100_episodes']:.1f}", "–"])
                continue
            rows.append([task, str(r["env_steps"]), sampler, str(r["seeds"]),
                         _with_ci(r, "final_mean", "final_ci95", ".1f"),
                         _with_ci(r, "auc_mean", "auc_ci95", ".1f")])
    return ("\n".join([_row(head), _row(["---"] * len(head))] + [_row(x) for x in rows])
            + "\n\nMeans over seeds; in brackets their 95% bootstrap interval over seeds "
            "(`reverie.eval.stats`).")


def _ci_cell(est: dict, spec: str = ".2f") -> str:
    """'mean [low–high]' of a `runlib.seed_mean_ci` result."""
    low, high = est["ci95"]
    return f"{est['mean']:{spec}} [{low:{spec}}–{high:{spec}}]"


def campaign_table(results: Path, name: str, column: str) -> str | None:
    """A bench/campaign.py campaign: per task (`column`), each method's final score."""
    report, _ = load(results, f"campaign_{name}")
    if report is None:
        return None
    names = {"imagine": "reverie `imagine` (DFS)",
             "imagine-uniform": "reverie `imagine`, uniform replay"}
    labels = {m: names.get(m) or f"SB3 {m[4:].upper()}" for m in report["methods"]}
    head = [column, "random policy", *labels.values()]
    rows = []
    for task, methods in report["summary"].items():
        cells = [task, f"{methods['random policy (100 episodes)']:.2f}"]
        for method in labels:
            m = methods.get(method)
            cells.append("–" if m is None else
                         f"{_ci_cell(m['final'])} (n={m['seeds']}"
                         f"{', all seeds > random' if m['above_random_all_seeds'] else ''})")
        rows.append(cells)
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    walls: dict[str, list[float]] = {}
    for ms in report["summary"].values():
        for m, v in ms.items():
            if isinstance(v, dict):
                walls.setdefault(m, []).append(v["wall_s_median"])
    note = (f"\nFinal score at {report['env_steps']:,} env steps: mean of the last two "
            f"evaluations ({report['eval_episodes']} greedy episodes each, every "
            f"{report['eval_every']:,} steps, reverie's evaluation seeds for every method), "
            "mean over seeds with its 95% bootstrap interval (`reverie.eval.stats`); "
            "\"all seeds > random\": every seed's final score is above the random policy's "
            f"mean over 100 episodes. reverie: the `{report['imagine']['preset']}` preset with "
            f"{', '.join(f'`{o}`' for o in report['imagine']['overrides'])}; "
            f"peers: {report['peers']}.")
    if walls:
        note += (f" Median wall time per run over all {column}s: "
                 + ", ".join(f"{labels[m]} {statistics.median(walls[m]) / 60:.1f} min"
                             for m in labels if m in walls) + ".")
    if report["dfs_vs_uniform"]:
        note += (" DFS vs uniform (DFS first), decided by whether the intervals are apart "
                 "(with 2 seeds an interval spans about the two seeds' range): " + "; ".join(
                     f"{g}: {v}" for g, v in report["dfs_vs_uniform"].items()) + ".")
    if report["missing"]:
        more = ", ..." if len(report["missing"]) > 10 else ""
        note += (f" Still missing: {_runs(len(report['missing']))} "
                 f"({', '.join(report['missing'][:10])}{more}).")
    return "\n".join(lines) + "\n" + note


def atari_table(results: Path) -> str | None:
    report, _ = load(results, "atari_smoke")
    if report is None:
        return None
    head = ["run", "env steps", "updates", "s / update", "100k-step protocol (extrapolated)"]
    cmd = report["command"]
    if isinstance(cmd, list):  # ["reverie", "train", ...] (bench/atari_smoke.py as_typed)
        cmd = " ".join(cmd)
    row = [f"`{cmd}`", str(report["env_steps"]), str(report["grad_steps"]),
           f"{report['seconds_per_update']:.1f}",
           f"{report['full_protocol_hours_extrapolated']:.0f} h "
           f"({report['full_protocol_days_extrapolated']:.0f} days)"]
    note = report.get("conditions", "")  # written by hand into the JSON of 2026-12-02
    if not note and "torch_threads" in report:
        loads = report.get("loadavg_1min") or []
        note = (f"{_plural(report['torch_threads'], 'torch thread')}, atari100k preset at "
                f"Drama's 16x128 sequences; timed: {report.get('timed', 'after the prefill')}"
                + (f"; 1-min load {min(loads)}–{max(loads)}" if loads else ""))
    note = "; ".join(filter(None, [note, _atari_bound(report.get("compute_bound"),
                                                      report["seconds_per_update"]),
                                   _atari_breakdown(report.get("breakdown"))]))
    return "\n".join([_row(head), _row(["---"] * len(head)), _row(row)]) + (
        f"\n\n{note}." if note else "")


def _atari_breakdown(b: dict | None) -> str:
    """Where an update's time went (bench/atari_smoke.py --breakdown)."""
    if not b:
        return ""
    parts = ", ".join(f"{part} {ms / 1000:.2f} s ({100 * b['share'][part]:.0f}%)"
                      for part, ms in b["ms_per_update"].items() if b["share"][part] >= 0.01)
    return (f"where an update's time goes (one in-process run, {b['updates']} updates from "
            f"update {b['skipped_updates'] + 1} on, {b['seconds_per_update']:.2f} s each, 1-min "
            f"load {b['loadavg_1min']}): {parts}")


def _atari_bound(bound: dict | None, seconds: float) -> str:
    """The compute-bound sentence of the Atari tables (bench/atari_smoke.py compute_bound)."""
    if not bound:
        return ""
    return (f"compute bound: {bound['flops_per_update'] / 1e9:,.0f} GFLOP per update "
            f"(matmuls and convolutions, forward + backward) at the fp32 matmul peak of "
            f"{bound['matmul_peak_flops'] / 1e9:.0f} GFLOP/s ({bound['peak_source']}) take "
            f"{bound['min_seconds_per_update']:.2f} s, so {seconds:.2f} s per update is "
            f"{bound['min_seconds_per_update'] / seconds:.2f} of peak")


def atari_ab_table(results: Path, name: str = "atari_ab") -> str | None:
    """bench/atari_smoke.py's alternation of two codes (--baseline-src) or two settings
    (--baseline-set / --current-set) of the atari100k preset."""
    report, _ = load(results, name)
    if report is None:
        return None
    spu, ratio = report["seconds_per_update"], report["speedup_baseline_over_current"]

    def label(side: str) -> str:
        commit = report.get(f"{side}_commit")
        same = side == "current" or report.get(
            "baseline_is_this_tree", commit is not None and commit == report.get("current_commit"))
        text = ("this tree" + (f" (commit {commit})" if commit else "") if same
                else f"commit {commit}")
        sets = report.get(f"{side}_sets") or []
        env = (report.get("baseline_env") or {}) if side == "baseline" else {}
        return (text + "".join(f", `--set {kv}`" for kv in sets)
                + "".join(f", environment `{k}={v}`" for k, v in env.items()))

    head = ["code", "s / update (median, min–max)", "100k-step protocol (extrapolated)"]
    rows = [_row(head), _row(["---"] * len(head))]
    for side in ("baseline", "current"):
        v = spu[side]
        rows.append(_row([label(side), f"{v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f})",
                          f"{v['median'] * 100_000 / 3600:.0f} h"]))
    loads = report["loadavg_1min"]
    own = "; each side adds its own --sets" if any(
        report.get(f"{side}_sets") for side in ("baseline", "current")) else ""
    started = {k: v for k, v in (report.get("openmp_env") or {}).items() if v is not None}
    if started:
        own += "; started with " + ", ".join(f"`{k}={v}`" for k, v in started.items()) + (
            " in the environment (the baseline side's own environment variables aside)")
    note = (f"`{' '.join(report['command'])}` (--steps counts the prefill{own}), each side a "
            f"fresh run, {report['rounds']} rounds alternating (the "
            f"order reversed every round); timed: {report['timed']}; "
            f"{report['torch_threads']} torch threads; the second row's speed-up over the first "
            f"(first row's seconds / second row's) per round: median {ratio['median']:.2f}x "
            f"({ratio['min']:.2f}–{ratio['max']:.2f}x); "
            f"1-min load {min(loads)}–{max(loads)}"
            + (" (**loaded**)" if report.get("loaded") else "")
            + "; " * bool(report.get("compute_bound"))
            + _atari_bound(report.get("compute_bound"), spu["current"]["median"]))
    return "\n".join(rows) + f"\n\n{note}.\n"


def campaign_atari_table(results: Path) -> str | None:
    report, _ = load(results, "campaign_atari")
    if report is None or not report.get("scores"):
        return None
    head = ["env steps", "model, all pixels (mean over the imagined steps)",
            "copy the last frame", "imagined steps where the model is better"]
    rows = [_row(head), _row(["---"] * len(head))]
    for s in report["scores"]:
        model, copy = s["model_mse"], s["copy_last_mse"]
        worse = [i + 1 for i, (m, c) in enumerate(zip(model, copy)) if m >= c]
        rows.append(_row([f"{s['env_steps']:,}", f"{sum(model) / len(model):.5f}",
                          f"{sum(copy) / len(copy):.5f}",
                          f"{len(model) - len(worse)} of {len(model)}"
                          + (f" (not step{'s' if len(worse) > 1 else ''} "
                             f"{', '.join(map(str, worse))})"
                             if worse and len(worse) < len(model) else "")]))
    wall = report.get("wall_s")
    note = (f"{report['game']}, {report['windows']} windows of greedy play, 8 observed + "
            f"{len(report['scores'][0]['model_mse'])} imagined frames; mean squared error per "
            "pixel in [0, 1] units; each checkpoint scored on its own windows"
            + (f"; training wall time {wall / 60:.0f} min at "
               + report.get("threads_note", _plural(report["threads"], "thread"))
               if wall else ""))
    return "\n".join(rows) + f"\n\n{note}."


def popgym_table(results: Path) -> str | None:
    report, _ = load(results, "popgym")
    if report is None or not report["summary"]:
        return None
    backbones = list(report["seeds"])
    head = ["task"] + [f"`{b}` MMER" for b in backbones]
    rows, means = [], {b: [] for b in backbones}
    for task in report["tasks"]:
        cells = [task]
        for b in backbones:
            s = report["summary"].get(task, {}).get(b)
            if s is None:
                cells.append("–")
                continue
            means[b].append(s["mmer_mean"])
            ci = s.get("mmer_ci95")
            spread = (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else
                      f" ({s['mmer_min']:.2f}–{s['mmer_max']:.2f})") if s["seeds"] > 1 else ""
            cells.append(f"{s['mmer_mean']:.2f}{spread}, n={s['seeds']}, "
                         f"{s['wall_s_mean'] / 60:.1f} min")
        rows.append(cells)
    rows.append(["**mean over the tasks above**"]
                + [f"{sum(v) / len(v):.2f} over {len(v)} tasks (normalised "
                   f"{0.5 * sum(v) / len(v) + 0.5:.2f})" if v else "–"
                   for v in means.values()])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    note = (f"\nrecurrent PPO, `popgym-ppo` preset, {report['steps_per_run']:,} env steps per "
            "run; MMER = running max of the mean greedy evaluation return (POPGym returns are "
            "in [-1, 1]; POPGym's normalised score is 0.5·MMER + 0.5); cells: mean over seeds "
            "[95% bootstrap interval over seeds, `reverie.eval.stats`], seeds, mean wall time "
            "(runs shared "
            "the machine with other work, so wall times are not a speed comparison — see the "
            "throughput table).")
    if report["missing"]:
        note += (f" Still missing: {_runs(len(report['missing']))} "
                 f"({', '.join(report['missing'][:6])}")
        note += ", ...)." if len(report["missing"]) > 6 else ")."
    published = popgym_published_table(report["tasks"], report["steps_per_run"])
    return "\n".join(lines) + "\n" + note + "\n\n" + popgym_scoring_table(report) + published


def popgym_scoring_table(report: dict) -> str:
    """Greedy-evaluation MMER beside POPGym's own (training episodes), on the runs that
    logged both; '' when none did."""
    rows = []
    for task in report["tasks"]:
        for b, s in report["summary"].get(task, {}).items():
            both = s.get("both")
            if both:
                # from the shown (rounded) values, so a row adds up; + 0.0: no -0.00
                diff = round(round(both["mmer_train_mean"], 2) - round(both["mmer_mean"], 2),
                             2) + 0.0
                rows.append([task, f"`{b}`", str(both["seeds"]), f"{both['mmer_mean']:.2f}",
                             f"{both['mmer_train_mean']:.2f}", f"{diff:+.2f}"])
    if not rows:
        return ""
    head = ["task", "memory", "seeds", "MMER, greedy evaluations", "MMER, training episodes",
            "difference"]
    windows = report.get("train_window_steps") or []
    note = ("\n\nThe same runs scored both ways (those whose training episodes are in their "
            "archived metrics.jsonl): reverie's MMER from greedy evaluations, and POPGym's "
            "(`reverie report --returns train`), from the mean return of the training episodes "
            "(sampled actions) that ended in each window of "
            + " or ".join(f"{w:,}" for w in windows) + " env steps (the run's evaluation "
            "interval); means over seeds.\n\n")
    return "\n".join([_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]) + note


def popgym_imagine_table(results: Path) -> str | None:
    report, _ = load(results, "popgym_imagine")
    if report is None or not report["runs"]:
        return None
    head = ["task", "memory", "seed", "env steps", "imagine MMER", "PPO's MMER (500k, target)",
            "imagine steps to target", "PPO steps to target", "ratio", "wall"]
    rows = []
    for key, r in report["runs"].items():
        task, memory, seed = key.split("/")

        def steps(x):
            return "not reached" if x is None else f"{x:,.0f}"

        label = f"`{memory}`" + (f" ({r['memory_note']})" if r.get("memory_note") else "")
        rows.append([task, label, seed.lstrip("s"), f"{r['env_steps']:,}", f"{r['mmer']:.2f}",
                     "–" if r.get("target") is None else f"{r['target']:.2f}",
                     steps(r.get("imagine_steps_to_target")),
                     steps(r.get("ppo_steps_to_target")),
                     "–" if r.get("ratio") is None else f"**{r['ratio']:.1f}x**",
                     f"{r['wall_s'] / 60:.0f} min"])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    overrides = "; ".join(f"{t}: `{' '.join(o)}`" for t, o in report["task_overrides"].items())
    note = (f"\n`imagine` with the `popgym` preset, {report['steps_per_run']:,} env steps per "
            f"run, greedy evaluation every {report['eval_every']:,} steps; PPO: the runs of the "
            "table above with the same memory (mean over its seeds). Target = PPO's final MMER; "
            "steps to target = first evaluation at or above it (PPO evaluates every 16,384 "
            "steps, so its count is an upper bound by up to that much); ratio = PPO's steps / "
            f"imagine's. Task settings beside the preset: {overrides or 'none'}.")
    if report["missing"]:
        note += (f" Still missing: {_runs(len(report['missing']))} "
                 f"({', '.join(report['missing'])}).")
    return "\n".join(lines) + "\n" + note


def popgym_published_table(tasks: list[str], our_steps: int) -> str:
    """Published per-task MMER on `tasks` (eval/data/popgym_published.json), each at its
    source's own budget, as raw MMER; sources not transcribed yet are listed as such."""
    from reverie.eval.scores import popgym_reference, published_popgym

    ref = popgym_reference()
    sources = ref["sources"]
    entries = published_popgym(tasks)
    data = "`src/reverie/eval/data/popgym_published.json`"
    columns = list(dict.fromkeys((e.source, e.memory) for e in entries))
    if not columns:
        out = [f"**Published numbers, at their own budget:** none transcribed yet ({data} "
               "takes them once read from a source's table):", ""]
    else:
        out = [f"**Published numbers, at their own budget** ({data}; not reverie runs; "
               "raw MMER in [-1, 1], mean ± std over seeds as published):", ""]
        head = ["task"] + [f"`{m}`, {sources[s]['name']}" for s, m in columns]
        cells = {(e.source, e.memory, e.task): e for e in entries}
        out += [_row(head), _row(["---"] * len(head))]
        for task in tasks:
            row = [task]
            for s, m in columns:
                e = cells.get((s, m, task))
                row.append("–" if e is None else f"{e.mean:.2f}"
                           + ("" if e.std is None else f" ± {e.std:.2f}"))
            out.append(_row(row))
        out.append("")
    for key, src in sources.items():
        steps = src["budget_env_steps"]
        seeds = f", {src['seeds']} seeds" if src.get("seeds") else ""
        line = (f"- {src['name']}, [{src['url'].rsplit('/', 1)[-1]}]({src['url']}): "
                f"{steps / 1e6:g}M env steps per run ({steps / our_steps:g}x ours"
                + (", read in the authors' code" if src.get("budget_read_in") == "code" else "")
                + f"){seeds}")
        if any(e.source == key for e in entries):
            how = {"mmer": "raw MMER as published",
                   "normalized": "published as 0.5·MMER + 0.5, shown as 2·v − 1 (std × 2)"}
            line += f"; {src['table']}, {how[src['scale']]}."
        else:
            line += "; per-task numbers not transcribed."
        out.append(line)
    aliases = {a: b for a, b in ref.get("task_aliases", {}).items() if a in tasks}
    if aliases:
        out += ["", "The papers' names: " + ", ".join(f"{b} (= {a})" for a, b in aliases.items())
                + "."]
    return "\n".join(out)


def rppo_throughput_table(results: Path) -> str | None:
    report, _ = load(results, "rppo_throughput")
    if report is None:
        return None
    parts = ("act", "env", "observe", "update", "checkpoint", "other")
    head = ["memory", "env steps/s (median, min–max)"] + [f"{p} share" for p in parts]
    rows = []
    for b, s in report["summary"].items():
        e = s["env_steps_per_s"]
        rows.append([f"`{b}`", f"{e['median']:,.0f} ({e['min']:,.0f}–{e['max']:,.0f})"]
                    + [f"{s['share_of_time'][p]:.0%}" for p in parts])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    ffm = report["summary"].get("ffm", {}).get("env_steps_per_s", {}).get("median")
    ratio = report["ratios"].get("ffm/gru")
    note = (f"\n`popgym-ppo` preset (16 envs, d_model 64) on popgym-{report['task']}-v0, "
            f"{report['steps_per_measurement']:,} env steps per measurement, "
            f"{report['rounds']} alternating rounds in fresh processes, "
            f"{report['threads']} torch thread(s); 1-min load {report['loadavg_1min_before']}"
            f" before, {report['loadavg_1min_after']} after"
            + (" (**loaded**: load > cores)." if report["loaded"] else "."))
    if ratio:
        note += (f" ffm/gru speed: median {ratio['median']:.2f}x "
                 f"({ratio['min']:.2f}–{ratio['max']:.2f}).")
    target = ["", _row(["target", "result"]), _row(["---", "---"]),
              _row(["rppo with ffm >= 3,000 env steps/s",
                    "n/a" if ffm is None else ("pass" if ffm >= 3000 else "miss")]),
              _row(["ffm faster than gru (wall time)",
                    "n/a" if not ratio else ("pass" if ratio["median"] > 1 else "miss")])]
    return "\n".join(lines) + "\n" + note + "\n" + "\n".join(target)


def coplanner_table(results: Path) -> str | None:
    report, _ = load(results, "coplanner")
    if report is None or not report["summary"]:
        return None
    head = ["task", "method", "seeds", "final return [95% CI] (min–max)",
            "area under curve [95% CI] (min–max)", "wall min/run"]
    rows = []

    def cell(s: dict, name: str) -> str:
        ci = s.get(f"{name}_ci95")
        band = f" [{ci[0]:.0f}–{ci[1]:.0f}]" if ci else ""
        return f"{s[name + '_mean']:.0f}{band} ({s[name + '_min']:.0f}–{s[name + '_max']:.0f})"

    for task, methods in report["summary"].items():
        for method, s in methods.items():
            rows.append([task, method, str(s["seeds"]), cell(s, "final"), cell(s, "auc"),
                         f"{s['wall_min_mean']:.0f}"])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    note = ("\nEvaluation: mean return of greedy episodes (reverie's evaluation seeds, also for "
            "SB3 SAC) every `run.eval_every` env steps; area under curve = mean over those "
            "evaluations; [95% CI]: bootstrap interval of the mean over seeds "
            "(`reverie.eval.stats`; with 3 seeds it spans nearly the whole min–max range). "
            "Runs shared the 2-core machine with other benchmarks.")
    if report["missing"]:
        more = ", ..." if len(report["missing"]) > 8 else ""
        note += (f" Still missing: {_runs(len(report['missing']))} "
                 f"({', '.join(report['missing'][:8])}{more}).")
    return "\n".join(lines) + "\n" + note


def upmpc_cost_table(results: Path) -> str | None:
    """UP-MPC's cost per env step in both agents: mbpo's modes (bench/mbpo_cost.py --modes)
    and the imagination agent's (bench/coplanner_cost.py), extra model steps and wall time."""
    mbpo, _ = load(results, "upmpc_cost")
    imagine, _ = load(results, "coplanner_cost")
    if imagine is not None and "env_steps_per_update" not in imagine:
        imagine = None  # measured before the script recorded its per-env-step terms
    if mbpo is None and imagine is None:
        return None
    head = ["agent (preset)", "mode", "wall s per env step (median, min–max)",
            "x baseline (median, min–max)", "extra model steps per env step: data generation",
            "extra model steps per env step: acting"]
    rows, notes, loads = [], [], []
    for preset, entry in (mbpo or {}).items():
        for mode, m in entry["modes"].items():
            ratio = m["ratio_to_baseline"]["seconds_per_env_step"]
            pairs = m["model_pairs_per_env_step"]
            rows.append([f"mbpo ({preset}, rollout length {m['rollout_length']:g})", f"`{mode}`",
                         _median_range(m["seconds_per_env_step"], ".3f"),
                         _median_range(ratio, ".1f", "x"),
                         f"{pairs['rollouts'] - m['rollout_rows_per_env_step']:,.0f}",
                         f"{pairs['act']:,.0f}"])
        loads.append(f"{preset} up to {entry['load_avg_max']:.1f}")
        longest = {m: v["seconds_per_env_step_at_max_length"]["median"]
                   for m, v in entry["modes"].items()}
        if max(longest.values()) > 1.05 * max(m["seconds_per_env_step"]["median"]
                                              for m in entry["modes"].values()):
            notes.append(
                f"At {preset}'s longest rollouts (its schedule's last length; every rollout "
                "step costs the same) the data generation's extra model steps scale with the "
                "length, and the wall time per env step extrapolates to "
                + ", ".join(f"{v:.2f} s ({m})" for m, v in longest.items()) + ".")
    if mbpo:
        first = next(iter(mbpo.values()))
        notes.insert(0, (
            "mbpo: one model-refit period per mode and round, each mode a fresh process, "
            f"alternating ({first['rounds']} rounds, {first['threads']} torch thread(s); "
            f"1-min load {', '.join(loads)} on {first['cores']} cores); a model step is one "
            "state-action pair through the ensemble, and the extra ones are those beyond one "
            "per rollout row kept as data (in mode `mbpo`: the u metric's evaluations of the "
            "first 1,024 start rows); each UP-MPC step runs all "
            f"{first['modes'][first['baseline']]['elites']} elites."))
    if imagine is not None:
        k = imagine["env_steps_per_update"]
        base = imagine["seconds_per_update"]["off"]["median"]
        for mode, upd in imagine["seconds_per_update"].items():
            act = imagine["seconds_per_act_explore"][mode]
            wall = {q: upd[q] / k + act[q] for q in ("median", "min", "max")}
            ratio = (imagine["ratio_to_off"][mode] if mode != "off"
                     else {"median": 1.0, "min": 1.0, "max": 1.0})
            rows.append([f"imagine ({imagine['preset']})", f"`{mode}`",
                         _median_range(wall, ".3f"), _median_range(ratio, ".1f", "x"),
                         f"{imagine['planner_model_steps_per_update'][mode] / k:,.0f}",
                         f"{imagine['planner_model_steps_per_act'][mode]:,.0f}"])
        notes.append(
            f"imagine ({imagine['preset']}): seconds per update / {k:g} env steps per update "
            f"+ seconds per act (the ratio is per update; off: {base:.3f} s per update) on a "
            f"synthetic replay, {imagine['rounds']} rounds alternating, "
            f"{imagine['threads']} torch thread(s), 1-min load "
            f"{max(imagine['load_avg_1min_before_after']):.1f} at most on {imagine['cores']} "
            "cores; a model step is one backbone step of a batch row with the prior, the "
            "disagreement heads and the actor around it.")
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def omp_wait_table(results: Path) -> str | None:
    report, _ = load(results, "omp_wait")
    if report is None:
        return None
    conditions = report["conditions"]
    names = list(next(iter(conditions.values())))
    label = {"quiet": "quiet machine", "beside": "beside a 1-thread training process"}
    head = ["setting"] + [x for c in conditions
                          for x in (f"{label[c]}: s/update (median, min–max)",
                                    f"{label[c]}: default / setting")]
    rows = [[n] + [x for c in conditions
                   for x in (_median_range(conditions[c][n]["seconds_per_update"], ".3f"),
                             _median_range(conditions[c][n]["ratio_to_default"], ".2f", "x"))]
            for n in names]
    loads = [x for c in conditions.values() for v in c.values() for pair in v["load_avg"]
             for x in pair]
    note = (f"\nOne update of the `{report['preset']}` preset's agent (run.compile off), median "
            f"of {report['updates']} after a warm-up, each setting a fresh process, the settings "
            f"alternating ({report['rounds']} rounds per condition); the neighbour runs the same "
            f"agent's updates on 1 thread; 1-min load {min(loads):.1f}–{max(loads):.1f} on "
            f"{report['cores']} cores.")
    return "\n".join([_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]) + note


def allocator_table(results: Path) -> str | None:
    report, quick = load(results, "allocator")
    if report is None:
        return None
    head = ["model", "tokens/s, glibc default (median, min–max)",
            "tokens/s, keep_freed_memory", "keep / default (median, min–max)"]
    rows = []
    for name, m in report["models"].items():
        d, k, r = (m["tokens_per_s"]["default"], m["tokens_per_s"]["keep"],
                   m["ratio_keep_over_default"])
        rows.append([f"`{name}`", f"{d['median']:,.0f} ({d['min']:,.0f}–{d['max']:,.0f})",
                     f"{k['median']:,.0f} ({k['min']:,.0f}–{k['max']:,.0f})",
                     f"{r['median']:.2f}x ({r['min']:.2f}–{r['max']:.2f})"])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    st = report["settings"]
    note = (f"\nforward+backward, B={st['batch']}, T={st['T']}, D={st['d_model']}, "
            f"{st['n_layers']} layers, {report['machine']['torch_threads']} threads; "
            f"{st['rounds']} rounds alternating the two settings in one process; 1-min load "
            f"{report['loadavg_1min_before']} before, {report['loadavg_1min_after']} after"
            + (" (**loaded**: load > cores)." if report["loaded"] else "."))
    gru = report.get("mamba2_over_gru")
    if gru:
        note += (f" mamba2 / nn.GRU: {gru['default']['median']:.2f}x with glibc's defaults, "
                 f"{gru['keep']['median']:.2f}x "
                 f"({gru['keep']['min']:.2f}–{gru['keep']['max']:.2f}) with both keeping memory.")
    if quick:
        note += " **Smoke-test sizes (--quick).**"
    return "\n".join(lines) + "\n" + note


def ensemble_speed_table(results: Path) -> str | None:
    report, quick = load(results, "ensemble_speed")
    if report is None:
        return None

    st = report["settings"]
    n = st["rollout_batch"]
    head = ["size (obs, action)", "measure", "reverie (median, min–max)", "mbrl-lib GaussianMLP",
            "reverie / mbrl-lib (median, min–max)"]
    rows, targets = [], []
    for size, e in report["results"].items():
        label = f"{size} ({e['obs_dim']}, {e['action_dim']})"
        for name, unit, what in (("train_step", "steps_per_s", "training steps/s"),
                                 ("rollout_step", "samples_per_s", "rollout samples/s, TS1")):
            m, r = e[name], e[name]["ratio_reverie_over_mbrl"]
            spec = ",.1f" if unit == "steps_per_s" else ",.0f"
            rows.append([label, what, _median_range(m["reverie"][unit], spec),
                         _median_range(m["mbrl"][unit], spec), _median_range(r, ".2f", "x")])
            targets.append(_row([f"reverie >= {m['target']:g}x mbrl-lib, {what}, {size}",
                                 "pass" if m["pass"] else "miss"]))
        a = e["reverie_agent_rollout_step"]
        rows.append([label, "rollout samples/s, reverie `rollout_step` (all elites + u)",
                     _median_range(a["samples_per_s"], ",.0f"), "–",
                     _median_range(a["ratio_over_mbrl_ts1"], ".2f", "x") + " of mbrl-lib's TS1"])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    v = report["versions"]
    note = (f"\n{st['members']} members ({st['elites']} elites), {st['layers']}x{st['hidden']} "
            f"{st['activation']}; training: one forward + Gaussian NLL + backward + Adam step on "
            f"{st['train_batch_per_member']} rows per member; rollout: next obs + reward for "
            f"{n:,} states, each from a random elite (TS1). reverie {v['reverie']['reverie']} vs "
            f"mbrl {v['mbrl']['mbrl']} (hydra-core {v['mbrl']['hydra-core']}), torch "
            f"{v['reverie']['torch']} in both, {st['threads']} thread; {st['rounds']} rounds "
            f"alternating the two systems, each a fresh process, glibc's thresholds raised in "
            f"both; 1-min load {report['loadavg_1min_before']} before, "
            f"{report['loadavg_1min_after']} after on {report['cores']} cores"
            + (" (**loaded**: load > cores)." if report["loaded"] else ".")
            + " The last row of each size is what reverie's MBPO agent calls in its "
            "conservative modes (every elite on every row, for COPlanner's disagreement), "
            "shown for information.")
    if quick:
        note += " **Smoke-test sizes (--quick).**"
    return ("\n".join(lines) + "\n" + note + "\n\n" + _row(["target", "result"]) + "\n"
            + _row(["---", "---"]) + "\n" + "\n".join(targets))


def compile_table(results: Path) -> str | None:
    report, quick = load(results, "compile")
    if report is None:
        return None

    head = ["backbone", "s/update, compile off (median, min–max)", "s/update, compile on",
            "off / on (median, min–max)", "ms: world model, imagination, actor-critic (off → on)",
            "compile s, cold cache", "compile s, warm cache"]
    rows = []
    for name, a in report["agent"].items():
        s, c = a["seconds_per_update"], a["compile_s"]
        parts = a.get("ms_per_update_by_part_median", {})
        moved = ", ".join(f"{parts['off'][k]:.0f} → {parts['on'][k]:.0f}"
                          for k in parts.get("off", {}))
        rows.append([f"`{name}`", _median_range(s["off"], ".3f"), _median_range(s["on"], ".3f"),
                     _median_range(a["speedup_off_over_on"], ".2f", "x"), moved or "–",
                     f"{c['cold']:.0f}",
                     f"{c['warm']:.0f}" + (" (fell back)" if a["fell_back"] else "")])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    note = (f"\n`{report['preset']}` preset's agent on a synthetic replay with CartPole's shapes, "
            f"median of {report['updates_per_process']} updates per process after the first and "
            f"{report['warmup_updates']} more; {report['rounds']} rounds alternating off and on, "
            f"each a fresh process on a warm inductor cache; compile s = first update − median "
            f"update; {report['torch_threads']} torch thread, torch {report['torch']}; 1-min "
            f"load {report['loadavg_1min_before']} before, {report['loadavg_1min_after']} after, "
            f"at most {report['loadavg_1min_max']} on {report['cores']} cores"
            + (" (**loaded**: load > cores)." if report["loaded"] else "."))
    for name, d in (report.get("drift") or {}).items():
        m = d["max_abs_diff"]
        note += (f" Drift, `{name}`: compile off vs on from one seed on the same batches, "
                 f"{d['updates']} updates, {d['identical_updates']} of them bit-identical: max |Δ| "
                 f"{m['wm/loss']:.1e} (world-model loss), {m['ac/actor_loss']:.1e} (actor), "
                 f"{m['ac/critic_loss']:.1e} (critic).")
    prof = report.get("matmul_share") or {}
    if prof:
        any_run = next(iter(next(iter(prof.values())).values()))
        loads = [r["loadavg_1min"] for modes in prof.values() for r in modes.values()]
        lines2 = [_row(["backbone", "compile", "forward+backward ms", "matmul share of op time"]),
                  _row(["---"] * 4)]
        for name, modes in prof.items():
            for mode, r in modes.items():
                lines2.append(_row([f"`{name}`", mode, f"{r['ms_fwd_bwd']:.1f}",
                                    f"{r['matmul_share']:.0%}"]))
        note += ("\n\n" + "\n".join(lines2) + f"\n\nB={any_run['B']}, T={any_run['T']}, "
                 f"D={any_run['D']}, {any_run['n_layers']} layers, no resets, torch.profiler: "
                 "self time of aten::mm, addmm, bmm, baddbmm, matmul and linear over the self "
                 "time of all ops (a compiled region's fused kernels count as its own time); "
                 "one process per backbone and mode, 1 thread; 1-min load "
                 + "–".join(f"{x:.2f}" for x in sorted({min(loads), max(loads)}))
                 + " while profiling.")
    if quick:
        note += " **Smoke-test sizes (--quick).**"
    return "\n".join(lines) + "\n" + note


def compile_auto_table(results: Path) -> str | None:
    report, _ = load(results, "compile_auto")
    if report is None:
        return None

    head = ["backbone", "s/update, eager", "s/update, imagined step compiled", "eager / compiled",
            "imagination ms (eager → compiled)", "compile s, cold / warm cache",
            f"saved s in a default run ({report['default_run_updates']} updates)",
            "run.compile=auto compiles it"]
    lines = [_row(head), _row(["---"] * len(head))]
    for name, a in report["agent"].items():
        s, c = a["seconds_per_update"], a["compile_s"]
        parts = a["ms_per_update_by_part_median"]
        lines.append(_row([
            f"`{name}`", _median_range(s["off"], ".3f"), _median_range(s["step"], ".3f"),
            _median_range(a["speedup_off_over_step"], ".2f", "x"),
            f"{parts['off']['imagination']:.0f} → {parts['step']['imagination']:.0f}",
            f"{c['cold']:.0f} / {c['warm']:.0f}" + (" (fell back)" if a["fell_back"] else ""),
            f"{a['saved_s_per_default_run']:.0f}",
            "yes" if a["pays_on_cold_cache"] else "no"]))
    note = (f"\n`{report['preset']}` preset's agent, as in the table above: {report['rounds']} "
            f"rounds alternating eager and step-compiled processes on a warm cache, median of "
            f"{report['updates_per_process']} updates each; a backbone's step pays on a cold "
            f"cache when (eager − compiled) x {report['default_run_updates']} updates exceeds "
            f"its cold compile time; {report['torch_threads']} torch thread, torch "
            f"{report['torch']}; 1-min load {report['loadavg_1min_before']} before, "
            f"{report['loadavg_1min_after']} after, at most {report['loadavg_1min_max']} on "
            f"{report['cores']} cores" + (" (**loaded**: load > cores)." if report["loaded"]
                                          else "."))
    return "\n".join(lines) + "\n" + note


def ffm_chunk_table(results: Path) -> str | None:
    report, _ = load(results, "ffm_chunk")
    if report is None:
        return None
    chunks = [str(c) for c in report["chunks"]]
    head = ["size (B x T x d_model)", *[f"chunk {c}: ms" for c in chunks], "fastest"]
    lines = [_row(head), _row(["---"] * len(head))]
    for z in report["sizes"]:
        cells = [f"{v['median']:.1f} ({v['min']:.1f}–{v['max']:.1f})"
                 for v in (z["ms_fwd_bwd"][c] for c in chunks)]
        lines.append(_row([f"{z['name']}: {z['B']} x {z['T']} x {z['d_model']}", *cells,
                           str(z["fastest_chunk"])]))
    note = (f"\nForward + backward of one FFM layer (memory 32, 4 contexts), one row with an "
            f"episode reset inside; chunk lengths in alternation, {report['rounds']} rounds, "
            f"median (min–max) of the rounds; {report['torch_threads']} torch thread; fp32 "
            f"matmul {report['matmul_gflops_1_thread']:.0f} GFLOP/s on that thread before; "
            f"1-min load {report['loadavg_1min_before']} before, "
            f"{report['loadavg_1min_after']} after on {report['cores']} cores.")
    return "\n".join(lines) + "\n" + note


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def default_run_table(results: Path, stem: str = "default_run") -> str | None:
    report, _ = load(results, stem)
    if report is None:
        return None
    alt = report.get("alt")
    head = ["seed", "wall min", "ms per env step after prefill", "eval returns (every 1k)"]
    if alt:
        head.insert(1, "config")
    lines = [_row(head), _row(["---"] * len(head))]
    default = report.get("default_label", "default")
    pairs = [(r, default) for r in report["runs"]]
    if alt:
        parts = []
        if alt["overrides"]:
            parts.append(f"`{' '.join(alt['overrides'])}`")
        if alt.get("env"):  # files written before --alt-env have none
            parts.append("env `" + " ".join(f"{k}={v}" for k, v in alt["env"].items()) + "`")
        label = alt.get("label") or " ".join(parts)
        pairs = [x for a, b in zip(report["runs"], alt["runs"])
                 for x in ((a, default), (b, label))]
    for r, label in pairs:
        config = [label] if alt else []
        if "error" in r:
            lines.append(_row([str(r["seed"]), *config, "error", "", r["error"][:80]]))
            continue
        lines.append(_row([str(r["seed"]), *config, f"{r['wall_s'] / 60:.2f}",
                           _fmt(r.get("ms_per_env_step_after_prefill"), ".1f"),
                           ", ".join(f"{v:.0f}" for v in r["eval_return"])]))
    runs = report["runs"] + (alt["runs"] if alt else [])
    loads = [x for r in runs for x in (r["loadavg_1min_before"], r["loadavg_1min_after"])]
    compiled = (f", run.compile={report['compile']} on the {report['inductor_cache']} inductor "
                "cache" if "compile" in report else "")
    def minutes(seconds: float | None) -> str:  # None: no run of that arm finished
        return "n/a" if seconds is None else f"{seconds / 60:.2f}"

    note = (f"\n`{report['command']}`, one run at a time, run.threads={report['threads']} "
            f"(0 = all {report['cores']} cores){compiled}; wall time of the whole command, "
            f"prefill and evaluations included; median {minutes(report['wall_s_median'])} min "
            f"({minutes(report['wall_s_min'])}–{minutes(report['wall_s_max'])})")
    if alt:
        ratio = alt["wall_ratio_alt_over_default"]
        note += (f"; with {label} (run right after the same seed's default run): median "
                 f"{minutes(alt['wall_s_median'])} min, wall ratio to the default "
                 f"{_fmt(ratio['median'], '.2f')} ({_fmt(ratio['min'], '.2f')}–"
                 f"{_fmt(ratio['max'], '.2f')}), mean final return {alt['final_return_mean']}")
    probes = [r["matmul_gflops_before"] for r in runs if "matmul_gflops_before" in r]
    if probes:  # other tenants of a shared machine do not show in this VM's load average
        note += (f"; fp32 matmul before each run {min(probes):.0f}–{max(probes):.0f} GFLOP/s "
                 "(`runlib.matmul_gflops`)")
    note += f"; 1-min load {min(loads):.2f}–{max(loads):.2f}"
    if report.get("seeds_missing"):
        note += f"; rounds still missing: seeds {', '.join(map(str, report['seeds_missing']))}"
    if report.get("beside"):
        note += f"; beside, on purpose: {report['beside']}."
    else:
        note += (" — **other work shared the machine**." if report["loaded"] else
                 " (the run's own threads; nothing else of mine ran).")
    return ("\n".join(lines) + "\n" + note + "\n"
            + (targets_table(report["targets"].items()) if report["targets"] else ""))


def recall_table(results: Path) -> str | None:
    report, quick = load(results, "recall")
    if report is None:
        return None
    return report["markdown"].rstrip("\n") + (
        "\n\n**Smoke-test sizes (--quick), not a real measurement.**" if quick else "")


def _with_ci(summary: dict, name: str, ci_key: str | None = None, spec: str = ".0f") -> str:
    """`summary[name]` and, where recorded, its 95% interval `summary[ci_key]` (default
    `name + '_ci95'`) in brackets."""
    ci = summary.get(ci_key or f"{name}_ci95")
    return f"{summary[name]:{spec}}" + (f" [{ci[0]:{spec}}–{ci[1]:{spec}}]" if ci else "")


def drama_ablation_table(results: Path) -> str | None:
    report, _ = load(results, "drama_ablation")
    if report is None or not report["summary"]:
        return None
    head = ["task", "variant (`--set`)", "seeds", "final", "best", "mean of last 3",
            "wall min/run"]
    lines = [_row(head), _row(["---"] * len(head))]
    for s in report["summary"].values():
        sets = " ".join(f"`{o}`" for o in report["variants"][s["variant"]]) or "preset as is"
        lines.append(_row([s["task"], f"{s['variant']}: {sets}",
                           " ".join(str(x) for x in s["seeds"]), _with_ci(s, "final"),
                           _with_ci(s, "best"), _with_ci(s, "last3"), f"{s['wall_min']:.0f}"]))
    budgets = "; ".join(f"{task}: {t[3]:,} env steps, an evaluation every {t[2]:,}"
                        + (f", with {' '.join(f'`{o}`' for o in t[4])}" if t[4] else "")
                        for task, t in report["tasks"].items()
                        if any(s["task"] == task for s in report["summary"].values()))
    note = (f"\nMamba-2 world model, the task's preset plus the variant ({budgets}), greedy "
            "evaluations; returns are "
            "means over the seeds listed, in brackets their 95% bootstrap interval over seeds "
            "(`reverie.eval.stats`; with 2–4 seeds it is wide and only as good as those seeds). "
            "A policy that peaks and then drifts shows a gap between best and the mean of the "
            "last three evaluations. Seeds 0–1 ran eagerly; runs recorded with "
            "`run.compile=auto` (the later default) differ from eager ones by float rounding.")
    shared: dict[tuple[str, str], set[str]] = {}
    for e in report["runs"]:
        if e.get("same_run_as"):
            where = str(Path(e["same_run_as"]).parent)
            shared.setdefault((e["task"], where), set()).add(e["variant"])
    for (task, where), variants in sorted(shared.items()):
        note += (f" {task} {' and '.join(sorted(variants))}: the runs under `{where}`, whose "
                 "config is the same (recorded, not trained again).")
    return "\n".join(lines) + "\n" + note


def precision_table(results: Path) -> str | None:
    report, _ = load(results, "precision")
    if report is None:
        return None
    lines = []
    if report.get("presets"):
        head = ["preset", "s/update, fp32 (median, min–max)", "s/update, bf16",
                "fp32 / bf16, neighbouring pairs (median, min–max)",
                "world-model loss, bf16 vs fp32 (same weights, same batch)"]
        lines += [_row(head), _row(["---"] * len(head))]
        for name, r in report["presets"].items():
            lines.append(_row([
                f"`{name}`", _median_range(r["fp32"], ".3f"), _median_range(r["bf16"], ".3f"),
                _median_range(r["ratio_fp32_over_bf16"], ".2f", "x"),
                f"{100 * abs(r['wm_loss']['bf16'] / r['wm_loss']['fp32'] - 1):.2g}% apart"]))
        features = ", ".join(report["cpu_bf16_features"]) or "none (bf16 emulated)"
        counts = sorted({(r["updates"], r["warmup"]) for r in report["presets"].values()})
        lines.append(
            "\nOne update of the world-model agent at each preset's sizes (minatar: Breakout, "
            "dmc-proprio: walker-walk, atari100k: Pong), fp32 and bf16 updates alternating in "
            "one process per preset after a prefill of real env steps ("
            + "; ".join(f"{u} timed updates of each after {w} warm-up" for u, w in counts)
            + f"); {report['threads']} torch thread(s), the preset's own run.compile (auto at "
            "every preset until 2026-12-07); CPU bf16 "
            f"features: {features}; fp32 matmul {report['matmul_gflops_before']} GFLOP/s on "
            f"that thread count before; 1-min load {report['loadavg_1min_before']} before, "
            f"{report['loadavg_1min_after']} after on {report['cores']} cores"
            + (" (**loaded**: load > cores)." if report["loaded"] else "."))
    if report.get("learning"):
        head = ["seed", "bf16 eval returns (every 1k)", "fp32 (cartpole.py, same seed)",
                "bf16 wall min"]
        lines += ["", _row(head), _row(["---"] * len(head))]
        for e in report["learning"]:
            fp32 = e.get("fp32_eval_return")
            lines.append(_row([
                str(e["seed"]), ", ".join(f"{r:.0f}" for r in e.get("eval_return", [])) or "failed",
                ", ".join(f"{r:.0f}" for r in fp32) if fp32 else "–",
                f"{e['wall_s'] / 60:.1f}" if "wall_s" in e else "–"]))
        lines.append("\nThe default `reverie train` (CartPole, Mamba-2, 5k env steps) with "
                     "`--set run.precision=bf16 --set run.threads=1`, beside the fp32 runs of "
                     "`bench/cartpole.py` (1 thread each); wall times are of a shared machine.")
    return "\n".join(lines) if lines else None


def optimizer_table(results: Path) -> str | None:
    report, _ = load(results, "optimizer")
    if report is None:
        return None
    head = ["preset", "parameters (tensors)", "s/update, Adam loop (median, min–max)",
            "s/update, fused", "loop / fused per update", "ms per optimiser steps, loop",
            "fused", "loop / fused per steps"]
    lines = [_row(head), _row(["---"] * len(head))]
    for name, r in report["presets"].items():
        u, st = r["update"], r["step"]
        ms = {arm: {k: 1e3 * v for k, v in st[arm].items() if k != "values"}
              for arm in ("loop", "fused")}
        lines.append(_row([
            f"`{name}`", f"{r['parameters'] / 1e6:.2f}M ({r['tensors']})",
            _median_range(u["loop"], ".3f"), _median_range(u["fused"], ".3f"),
            _median_range(u["ratio_loop_over_fused"], ".2f", "x"),
            _median_range(ms["loop"], ".1f"), _median_range(ms["fused"], ".1f"),
            _median_range(st["ratio_loop_over_fused"], ".2f", "x")]))
    counts = sorted({(r["updates"], r["warmup"]) for r in report["presets"].values()})
    lines.append(
        "\nOne update of the world-model agent at each preset's sizes (minatar: Breakout, "
        "dmc-proprio: walker-walk) with two sets of Adam optimisers over the same parameters, "
        "torch's per-parameter loop and the fused kernel, updates alternating in one process "
        "per preset ("
        + "; ".join(f"{u} timed updates of each after {w} warm-up" for u, w in counts)
        + "); optimiser steps: the world model's, actor's and critic's `step()` together on "
        f"fixed gradients, alternating, 5x as many rounds; {report['threads']} torch "
        f"thread(s), the preset's own run.compile (auto at every preset until 2026-12-07); "
        "fp32 matmul "
        f"{report['matmul_gflops_before']} GFLOP/s before, {report['matmul_gflops_after']} "
        f"after; 1-min load {report['loadavg_1min_before']} before, "
        f"{report['loadavg_1min_after']} after on {report['cores']} cores"
        + (" (**loaded**: load > cores)." if report["loaded"] else "."))
    return "\n".join(lines)


def _when_and_load(report: dict) -> str:
    """The closing clause of a table measured preset by preset (`runlib.preset_report`):
    when each preset ran with the matmul probe before it, the 1-minute load per preset."""
    return ("when, and the fp32 matmul probe before: "
            + "; ".join(f"{name} {r['date']}, {r['matmul_gflops_before']:.0f} GFLOP/s"
                        for name, r in report["presets"].items() if "date" in r)
            + "; 1-min load per preset "
            + ", ".join(f"{lo}–{hi}" for lo, hi in (r["loadavg_1min"]
                                                    for r in report["presets"].values()))
            + f" on {report['cores']} cores"
            + (" (**loaded**: load > cores)." if report["loaded"] else "."))


def _rounds_per_preset(report: dict) -> str:
    """How many rounds after how many warm-up updates each preset of a report of
    `runlib.preset_report` ran: "10 rounds after 2 warm-up: matched, minatar; ..."."""
    rounds = {k: (r["updates"], r["warmup"]) for k, r in report["presets"].items()}
    return "; ".join(
        f"{u} rounds after {w} warm-up: " + ", ".join(k for k, c in rounds.items() if c == (u, w))
        for u, w in sorted(set(rounds.values())))


def onehot_table(results: Path) -> str | None:
    report, _ = load(results, "onehot")
    if report is None:
        return None
    head = ["preset", "latent (S x K)", "imagined rollouts x steps", "s/update, dense "
            "(median, min–max)", "s/update, one-hot", "s/update, one-hot + scatter",
            "dense / one-hot per round", "one-hot / scatter per round"]
    lines = [_row(head), _row(["---"] * len(head))]
    for name, r in report["presets"].items():
        u = r["update"]
        scatter = "scatter" in u  # runs before 2026-12-07 (afternoon) had two arms
        lines.append(_row([
            f"`{name}`", "{} x {}".format(*r["latent"]), f"{r['imag_batch']} x {r['horizon']}",
            _median_range(u["dense"], ".3f"), _median_range(u["onehot"], ".3f"),
            _median_range(u["scatter"], ".3f") if scatter else "–",
            _median_range(r["ratio_dense_over_onehot"], ".2f", "x"),
            _median_range(r["ratio_onehot_over_scatter"], ".2f", "x") if scatter else "–"]))
    lines.append(
        "\nOne update of the world-model agent, fp32, with the first layers that read the "
        "one-hot latent as dense products (the code before 2026-12-07) or as sums of weight "
        "columns (today's), and those with the actor's and critic's weight gradients as row "
        "scatters (`scatter`, reverie/nets/onehot_kernel.py, part of run.compile=on), updates "
        "alternating in one process per preset, the order "
        "reversed every round ("
        + _rounds_per_preset(report)
        + "); `matched`: bench/throughput.py's matched sizes, minatar: Breakout, "
        "dmc-proprio: walker-walk, atari100k: Pong (its actor reads a normalised feat, "
        f"actor_input_norm, and stays dense); {report['threads']} torch thread(s), "
        "run.compile=auto (the imagined step compiled; each preset's default when these "
        "were measured); " + _when_and_load(report))
    return "\n".join(lines)


def kernels_table(results: Path) -> str | None:
    report, _ = load(results, "kernels")
    if report is None:
        return None
    head = ["preset", "latent (S x K)", "layers", "imagined rollouts x steps",
            "s/update, torch ops (median, min–max)", "s/update, kernels",
            "torch / kernels per round"]
    lines = [_row(head), _row(["---"] * len(head))]
    for name, r in report["presets"].items():
        u = r["update"]
        lines.append(_row([
            f"`{name}`", "{} x {}".format(*r["latent"]), str(r["layers"]),
            f"{r['imag_batch']} x {r['horizon']}", _median_range(u["torch"], ".3f"),
            _median_range(u["kernels"], ".3f"),
            _median_range(r["ratio_torch_over_kernels"], ".2f", "x")]))
    lines.append(
        "\nOne update of the world-model agent, fp32 (atari100k-bf16: run.precision=bf16), "
        "run.compile=on, with imagination's latent samples and Mamba-2 steps (the state's and "
        "the conv's) and (atari100k rows) the conv nets' pixel scaling, ImageNorm + SiLU and "
        "the decoder's bias sums as torch ops (traced into "
        "the compiled graphs, or eager in the conv nets) or by reverie's kernels "
        "(reverie/nets/categorical_kernel.py, reverie/sequence/ssd_kernel.py, "
        "reverie/nets/image_kernel.py: what run.compile=on runs), updates alternating in one "
        "process per preset, the order reversed every round ("
        + _rounds_per_preset(report)
        + "); `matched`: bench/throughput.py's matched sizes, minatar: Breakout, "
        f"dmc-proprio: walker-walk, atari100k: Pong; {report['threads']} torch thread(s); "
        + _when_and_load(report))
    return "\n".join(lines)


def compile_presets_table(results: Path) -> str | None:
    report, _ = load(results, "compile_presets")
    if report is None:
        return None
    head = ["preset", "s/update, auto (median, min–max)", "s/update, on", "auto / on per round",
            "compile s, cold: auto / on", "warm: auto / on", "default run: updates",
            "on saves per default run", "on pays on a cold cache"]
    lines = [_row(head), _row(["---"] * len(head))]
    for name, r in report["presets"].items():
        u, f = r["update"], r["first_update"]
        lines.append(_row([
            f"`{name}`", _median_range(u["auto"], ".3f"), _median_range(u["on"], ".3f"),
            _median_range(r["ratio_auto_over_on"], ".2f", "x"),
            f"{f['cold']['auto']['compile_s']:.0f} / {f['cold']['on']['compile_s']:.0f}",
            f"{f['warm']['auto']['compile_s']:.1f} / {f['warm']['on']['compile_s']:.1f}",
            f"{r['default_run']['updates']:,}",
            f"{r['on_saves_s_per_default_run']:.0f} s",
            "yes" if r["on_pays_on_a_cold_cache"] else "no"]))
    rounds = sorted({(r["rounds"], r["warmup"]) for r in report["presets"].values()})
    lines.append(
        "\nThe world-model agent at each preset's sizes (fp32, seed 0, minatar: Breakout, "
        "dmc-proprio: walker-walk, atari100k: Pong) with run.compile=auto (the imagined "
        "step compiled) and on (also the losses, the context warm-up and reverie's own "
        "kernels: the one-hot weight gradient, since 2026-12-07 noon imagination's latent "
        "sample and Mamba-2 step too): "
        "updates alternating in one process on warm caches ("
        + "; ".join(f"{n} rounds after {w} warm-up" for n, w in rounds)
        + ", the order reversed every round); compile seconds = the first update minus "
        "the steady update, each mode alone in a fresh process on an empty inductor cache "
        "(cold) and again on that cache (warm)"
        + ("" if all("kernel_build_s" in f for r in report["presets"].values()
                     for c in r["first_update"].values() for f in c.values())
           else " (runs before 2026-12-07 10:00 leave out the one-hot kernel's build, "
                "~8 s cold, which `on` runs before its first update)")
        + "; a default run's updates = (steps − prefill) x train_ratio / (batch x seq_len); "
        "`on` saves the median over rounds of (auto − on) per update times those, and pays "
        "on a cold cache when that exceeds its extra cold compile; "
        f"{report['threads']} torch thread(s); " + _when_and_load(report))
    return "\n".join(lines)


def matvec_table(results: Path) -> str | None:
    report, _ = load(results, "matvec")
    if report is None:
        return None
    head = ["where", "shape (m x v)", "column form (median, min–max)", "`matvec`",
            "column / matvec"]
    lines = [_row(head), _row(["---"] * len(head))]
    parts = [*report["kernels"].items(), *report.get("updates", {}).items()]
    for name, r in parts:
        unit, spec = ("µs", ".1f") if r["unit"] == "microseconds" else (" s/update", ".3f")
        shape = f"{r['m']} x {r['v']}" if "m" in r else "whole update, run.compile=off"
        lines.append(_row([name, shape, _median_range(r["column"], spec, unit),
                           _median_range(r["matvec"], spec, unit),
                           _median_range(r["ratio_column_over_matvec"], ".2f", "x")]))
    load0, load1 = report["loadavg_1min_before_after"]
    lines.append(
        f"\nThe two forms alternating in one process ({report['rounds']} rounds after a "
        f"warm-up, the order flipped every round), {report['threads']} torch thread; "
        f"1-min load {load0} before, {load1} after on {report['cores']} cores"
        + (" (**loaded**: load > cores)." if "note" in report else "."))
    return "\n".join(lines)


def ssd_step_table(results: Path) -> str | None:
    report, _ = load(results, "ssd_step")
    if report is None:
        return None
    lines = [_row(["variant", "ms per call (median, min–max)", "x a copy of the state"]),
             _row(["---"] * 3)]
    for name, ms in report["ms"].items():
        lines.append(_row([name, _median_range(ms, ".3f"),
                           _median_range(report["x_copy"][name], ".2f", "x")]))
    lines.append(
        f"\nOne Mamba-2 block's recurrent step on a {list(report['shape'])} fp32 state "
        f"({report['state_mib']:.0f} MiB: the cartpole preset's imagination), the variants "
        f"alternating in one process ({report['rounds']} rounds after a warm-up, the order "
        f"reversed every round, median of {report['calls_per_round']} calls per round), "
        f"{report['torch_threads']} torch thread, torch {report['torch']}; 1-min load "
        f"{report['loadavg_1min_before']} before, {report['loadavg_1min_after']} after on "
        f"{report['cores']} cores" + (" (**loaded**: load > cores)." if report["loaded"]
                                      else "."))
    return "\n".join(lines)


def vector_env_table(results: Path) -> str | None:
    report, _ = load(results, "vector_env")
    if report is None:
        return None
    runs = report["runs"]
    last = runs[-1]
    head = ["env", "envs", *(f"async / sync, run {i + 1}" for i in range(len(runs))),
            "sync env steps/s (last run)", "async env steps/s (last run)",
            "start-up s, sync / async (last run)"]
    lines = [_row(head), _row(["---"] * len(head))]
    for k, c in enumerate(last["cases"]):
        rate = c["env_steps_per_s"]
        ratios = [_median_range(r["cases"][k]["async_over_sync"], ".2f", "x") for r in runs]
        lines.append(_row([f"`{c['env']}`", str(c["num_envs"]), *ratios,
                           _median_range(rate["sync"], ".0f"), _median_range(rate["async"], ".0f"),
                           f"{c['start_s']['sync']} / {c['start_s']['async']}"]))
    notes = []
    for i, r in enumerate(runs):
        loads = [c[k] for c in r["cases"] for k in ("loadavg_1min_before", "loadavg_1min_after")]
        checked = all("vector_steps" in c.get("same_data_check", {}) for c in r["cases"])
        same = all(c["same_data"] for c in r["cases"])
        notes.append(
            f"run {i + 1} ({r['date']}): 1-min load {min(loads)}–{max(loads)} on {r['cores']} "
            f"cores" + (" (**loaded**)" if r["loaded"] else "") + "; transitions of sync and "
            "async " + ("equal" if same else "**not equal**")
            + (" until every env had ended an episode" if checked else " over 50 vector steps"))
    lines.append(
        "\nThe collector alone (uniform random actions, no acting or learning) stepping N envs "
        "as `run.vector=sync` or `async`, the two alternating in one process "
        f"({last['rounds']} rounds after a warm-up, the order reversed every round); async / "
        "sync per round, median and min–max; " + "; ".join(notes) + ".")
    return "\n".join(lines)


TABLES: dict[str, Callable[[Path], str | None]] = {
    "backbones": backbones_table,
    "cartpole": cartpole_table,
    "default_run": default_run_table,
    **{name: (lambda results, name=name: default_run_table(results, name))
       for name in ("default_run_allocator_ab", "default_run_gomp_ab",
                    "default_run_gomp_ab_neighbour", "default_run_num_envs_ab",
                    "default_run_onehot_ab", "default_run_share_cores_ab")},
    "reliability": reliability_table,
    "cartpole_sweep": cartpole_sweep_table,
    "throughput": throughput_table,
    "dfs": dfs_table,
    "campaign_minatar": lambda results: campaign_table(results, "minatar", "game"),
    "campaign_dmc": lambda results: campaign_table(results, "dmc", "task"),
    "atari": atari_table,
    "atari_ab": atari_ab_table,
    "atari_compile_ab": lambda results: atari_ab_table(results, "atari_compile_ab"),
    "atari_4x_ab": lambda results: atari_ab_table(results, "atari_4x_ab"),
    "atari_4x_ab_spin": lambda results: atari_ab_table(results, "atari_4x_ab_spin"),
    "atari_spin_ab": lambda results: atari_ab_table(results, "atari_spin_ab"),
    "campaign_atari": campaign_atari_table,
    "drama_ablation": drama_ablation_table,
    "popgym": popgym_table,
    "popgym_imagine": popgym_imagine_table,
    "rppo_throughput": rppo_throughput_table,
    "ffm_chunk": ffm_chunk_table,
    "recall": recall_table,
    "coplanner": coplanner_table,
    "upmpc_cost": upmpc_cost_table,
    "allocator": allocator_table,
    "omp_wait": omp_wait_table,
    "compile": compile_table,
    "compile_auto": compile_auto_table,
    "compile_presets": compile_presets_table,
    "kernels": kernels_table,
    "ensemble_speed": ensemble_speed_table,
    "precision": precision_table,
    "optimizer": optimizer_table,
    "onehot": onehot_table,
    "matvec": matvec_table,
    "ssd_step": ssd_step_table,
    "vector_env": vector_env_table,
}


def replace_sections(text: str, tables: dict[str, str]) -> str:
    """Replace the body of every `<!-- table:NAME -->` ... `<!-- /table:NAME -->` block."""
    for name, body in tables.items():
        pattern = re.compile(
            rf"(<!-- table:{re.escape(name)} -->\n).*?(\n?<!-- /table:{re.escape(name)} -->)",
            re.DOTALL,
        )
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2).lstrip("\n"),
                           text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description="markdown tables from bench/results")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--out", default=None, help="directory for NAME.md files "
                   "(default: the results directory)")
    p.add_argument("--readme", default=None, help="rewrite the marked sections of this file")
    args = p.parse_args()
    results = Path(args.results)
    out = Path(args.out) if args.out else results
    tables = {}
    for name, fn in TABLES.items():
        md = fn(results)
        if md is None:
            print(f"({name}: no results in {results})", file=sys.stderr)
            continue
        tables[name] = md
        print(f"## {name}\n\n{md}\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(md + "\n")
    if args.readme:
        path = Path(args.readme)
        path.write_text(replace_sections(path.read_text(), tables))


if __name__ == "__main__":
    main()
