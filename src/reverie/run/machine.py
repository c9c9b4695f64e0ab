"""What a run trained on: one row per training process in the run folder's `machine.jsonl`.

Wall time is only comparable between runs on the same kind of machine (one CPU here is three
times another at fp32 matmuls), so `reverie report` shows each row's machines beside its
wall time. A row: {"step": the env step the process started at, "cpu": model name, "cores":
logical cores, "threads": torch's intra-op threads, "device": "cpu" or the GPU's name,
"torch": version}, and from the driver "params": the agent's parameter count
(`run.agent.num_params`).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch



def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, e.g. under
    taskset or a container's cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def threads_note(threads: int) -> str | None:
    """A note for run.threads above the usable cores (oversubscribed threads wait for each
    other at every parallel region: slower, not faster), else None."""
    cores = usable_cores()
    if threads <= cores:
        return None
    return (f"run.threads={threads} is more than the {cores} core{'s' if cores > 1 else ''} "
            f"this process may use: the extra threads only wait for each other and slow "
            f"training; set run.threads={cores} or 0 (all cores)")


def describe(device: torch.device) -> dict[str, Any]:
    """This process's machine as a `machine.jsonl` row (without its step)."""
    import torch  # here: a sweep's head process reads usable_cores without loading torch

    gpu = "cpu"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 0,
            "threads": torch.get_num_threads(), "device": gpu, "torch": torch.__version__}


_UNSAFE = re.compile(r"[^\w .,()@+/-]")


def label(row: dict[str, Any]) -> str:
    """A short line for a report, e.g. 'AMD EPYC · 2 cores · 1 thread' (GPU named if used).
    Run folders may come from elsewhere: every field is cleaned to plain text and bounded."""
    def text(key: str) -> str:
        return _UNSAFE.sub("", str(row.get(key, "")))[:48].strip()

    def count(key: str) -> int | None:
        v = row.get(key)
        return v if type(v) is int and 0 < v < 100_000 else None

    parts = [text("cpu") or "unknown CPU"]
    cores, threads = count("cores"), count("threads")
    if cores:
        parts.append(f"{cores} cores")
    if threads:
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}")
    device = text("device")
    if device and device != "cpu":
        parts.append(device)
    return " · ".join(parts)
