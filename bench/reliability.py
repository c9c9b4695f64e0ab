"""Reliability in numbers: SIGKILLs survived, bad inputs handled, resume overhead, determinism.

Writes bench/results/reliability.json. Each kill trial starts a training run in a subprocess,
SIGKILLs it at a random moment (some trials while a checkpoint file is being written), resumes
it with `reverie train --resume`, and counts the trial as survived when the resumed run
finishes and its metrics.jsonl is byte-identical to an uninterrupted reference run. The bad
input matrix is the one in tests/test_bad_input.py, run through the real CLI in subprocesses.

    python bench/reliability.py --kills 10 --agent random
    python bench/reliability.py --kills 3 --agent imagine --steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))


def cli(args: list[str], env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "reverie", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def train_args(agent: str, steps: int) -> list[str]:
    common = ["--no-progress", "--steps", str(steps), "--set", "run.checkpoint_every=250",
              "--set", "run.log_every=100", "--set", "run.eval_every=500",
              "--set", "run.eval_episodes=1"]
    if agent == "random":
        return ["--preset", "random", *common]
    return ["--preset", "cartpole", "--backbone", "gru", "--set", "run.prefill=200",
            "--set", "imagine.imag_batch=32", "--set", "run.train_ratio=128", *common]


def checkpoint_steps(run: Path) -> list[int]:
    manifest = run / "checkpoints" / "manifest.json"
    return [e["step"] for e in json.loads(manifest.read_text())["checkpoints"]]


def kill_trial(args_: list[str], run: Path, reference: str, delay: float,
               crash_file: str | None) -> dict:
    env = {"REVERIE_CRASH_WRITING": crash_file} if crash_file else {}
    cmd = [sys.executable, "-m", "reverie", "train", *args_, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **env})
    if crash_file is None:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    if not (run / "config.yaml").exists():
        # killed during start-up, before the run existed: the user simply runs it again
        r = subprocess.run(cmd, capture_output=True, text=True)
        same = r.returncode == 0 and (run / "metrics.jsonl").read_text() == reference
        return {"killed": killed, "survived": same, "kill_mode": "during start-up (rerun)",
                "resume_rc": r.returncode, "stderr": r.stderr.strip()[-300:]}
    t0 = time.time()
    r = cli(["train", "--resume", str(run), "--no-progress"])
    resume_wall = time.time() - t0  # restore + the steps left, including those redone
    same = r.returncode == 0 and (run / "metrics.jsonl").read_text() == reference
    return {"killed": killed, "survived": same, "resume_rc": r.returncode,
            "kill_mode": "mid-checkpoint-write" if crash_file else f"after {delay:.2f}s",
            "resume_wall_s": round(resume_wall, 2), "stderr": r.stderr.strip()[-300:]}


def restore_seconds(run: Path) -> float:
    """Wall time of `--resume` on a finished run: start-up plus loading the checkpoint and
    reattaching the replay, with no training after it."""
    t0 = time.time()
    r = cli(["train", "--resume", str(run), "--no-progress"])
    assert r.returncode == 0, r.stderr
    return time.time() - t0


def bad_inputs(tmp: Path) -> dict:
    from test_bad_input import CASES, PREPARE

    done = tmp / "done"
    cli(["train", "--preset", "random", "--no-progress", "--set", "run.eval_episodes=0",
         "--steps", "300", "--out", str(done)])
    handled, failures = 0, []
    for name, argv, fragment in CASES:
        case = tmp / "case" / name.replace(" ", "_")
        case.mkdir(parents=True)
        run = case / "run"
        shutil.copytree(done, run)
        if name in PREPARE:
            PREPARE[name](run)
        if name == "missing extra":
            continue_env = {"PYTHONPATH": str(case)}
            (case / "dm_control.py").write_text("raise ImportError('absent')\n")
        else:
            continue_env = {}
        argv = [a.replace("{run}", str(run)).replace("{tmp}", str(case)) for a in argv]
        r = cli(argv, env=continue_env, cwd=case)
        err = r.stderr.strip()
        ok = (r.returncode == 2 and err.startswith("reverie: error: ") and "\n" not in err
              and "Traceback" not in err and fragment in err)
        handled += ok
        if not ok:
            failures.append({"case": name, "rc": r.returncode, "stderr": err[-300:]})
    return {"tried": len(CASES), "handled": handled, "failures": failures}


def untrusted_runs(tmp: Path) -> dict:
    """The untrusted-run-folder matrix (tests/test_untrusted_run.py: crafted manifests,
    foreign --out folders, damaged logs, flags with --resume, fuzzed manifest/config.yaml),
    run by pytest in a subprocess and counted case by case from its JUnit XML."""
    import xml.etree.ElementTree as ET

    report = tmp / "untrusted.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    str(ROOT / "tests" / "test_untrusted_run.py"), f"--junitxml={report}"],
                   cwd=ROOT, capture_output=True, text=True)
    cases = ET.parse(report).getroot().iter("testcase")
    failures = []
    tried = 0
    for case in cases:
        tried += 1
        if any(child.tag in ("failure", "error") for child in case):
            failures.append(case.get("name"))
    return {"tried": tried, "handled": tried - len(failures), "failures": failures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", choices=["random", "imagine"], default="random")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rnd = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="reverie-reliability-"))
    targs = train_args(args.agent, args.steps)

    t0 = time.time()
    ref = tmp / "reference"
    r = cli(["train", *targs, "--out", str(ref)])
    assert r.returncode == 0, r.stderr
    full_wall = time.time() - t0
    reference = (ref / "metrics.jsonl").read_text()
    again = tmp / "again"
    cli(["train", *targs, "--out", str(again)])
    deterministic = (again / "metrics.jsonl").read_text() == reference

    ckpts = checkpoint_steps(ref)
    trials = []
    for i in range(args.kills):
        crash = None
        if i % 3 == 2 and len(ckpts) > 1:  # every third trial dies inside a checkpoint write
            crash = f"ckpt-{rnd.choice(ckpts[:-1]):010d}.pt"
        delay = rnd.uniform(0.15, 0.9) * full_wall
        trial = kill_trial(targs, tmp / f"kill{i}", reference, delay, crash)
        print(json.dumps(trial), flush=True)
        trials.append(trial)

    restore = restore_seconds(ref)
    bad = bad_inputs(tmp)
    untrusted = untrusted_runs(tmp)
    result = {
        "benchmark": "reliability",
        "agent": args.agent,
        "steps": args.steps,
        # a trial whose run finished before the kill landed is not a kill
        "kills": {"tried": sum(t["killed"] for t in trials),
                  "survived": sum(t["survived"] for t in trials if t["killed"]),
                  "mid_checkpoint_write": sum("write" in t.get("kill_mode", "") for t in trials),
                  "trials": trials},
        "bad_inputs": bad,
        "untrusted_runs": untrusted,
        "resume_restore_s": round(restore, 2),
        "uninterrupted_wall_s": round(full_wall, 2),
        "deterministic": deterministic,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"reliability-{args.agent}.json"
    out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "kills"} |
                     {"kills": {k: v for k, v in result["kills"].items() if k != "trials"}},
                     indent=1))


if __name__ == "__main__":
    main()
