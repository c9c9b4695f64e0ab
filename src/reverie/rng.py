"""Random-number state as plain tensors, so checkpoints load with weights_only=True.

A resumed run must draw exactly the numbers the uninterrupted run would have drawn, so every
generator a run owns (numpy PCG64s, torch's CPU generator, Python's `random`) is captured.
"""

from __future__ import annotations

import random

import numpy as np
import torch

_MASK = (1 << 32) - 1


def substream(seed: int, *path: int) -> int:
    """A 32-bit seed for one of a run's random streams: `seed` and `path` through numpy's
    SeedSequence. It pads with zeros ([s, k] gives what [s, k, 0] does), and paths (0, e)
    and (1, e) are the env episodes' (`run.collector.episode_seed`), so an agent's own
    streams take a first id of 2 or more."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def numpy_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def generator_state(gen: np.random.Generator) -> torch.Tensor:
    """PCG64 state -> int64 tensor of 32-bit words (128-bit state, 128-bit increment, cache)."""
    st = gen.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError("only PCG64 generators are supported; use numpy_generator(seed)")
    s, inc = st["state"]["state"], st["state"]["inc"]
    words = [(s >> (32 * i)) & _MASK for i in range(4)]
    words += [(inc >> (32 * i)) & _MASK for i in range(4)]
    words += [int(st["has_uint32"]), int(st["uinteger"])]
    return torch.tensor(words, dtype=torch.int64)


def set_generator_state(gen: np.random.Generator, words: torch.Tensor) -> None:
    w = [int(x) for x in words.tolist()]
    s = sum(w[i] << (32 * i) for i in range(4))
    inc = sum(w[4 + i] << (32 * i) for i in range(4))
    gen.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": s, "inc": inc},
        "has_uint32": w[8],
        "uinteger": w[9],
    }


def global_rng_state() -> dict[str, torch.Tensor]:
    """torch CPU, numpy legacy and Python `random` state as tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([py[0], *py[1], -1 if py[2] is None else 1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
    }


def set_global_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"].tolist()
    random.setstate((py[0], tuple(py[1:-1]), None))
    pos = state["numpy_pos"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos[0], pos[1],
         float(state["numpy_gauss"][0]))
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
