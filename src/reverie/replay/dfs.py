"""Dynamic frequency-based sampling (DFS) of replay starts, from Drama (Wang et al., ICLR 2025).

Every slot i of the ring buffer keeps two counters:

* n_i — how many world-model "train" sequences started at slot i;
* m_i — how many imagination contexts ("imagine") started at slot i.

Imagination batches are much larger than world-model batches (1024 vs 16), so m is put on
the scale of n before comparing: m̃_i = m_i · train_batch / imagine_batch, where the two
batch sizes are the last ones seen in `choose` calls (ratio 1 until both were seen, or
fixed by the `train_batch` / `imagine_batch` constructor arguments).

* train:   P(i) ∝ exp(−n_i / τ)                        — fresh, rarely-trained data first;
* imagine: P(i) ∝ exp((n_i − m̃_i − max(0, n_i − m̃_i)) / τ) = exp(min(0, n_i − m̃_i) / τ)
           — uniform over slots the model has trained on at least as often as it imagined
           from them, exponentially less for over-imagined ones.

Both purposes draw the batch without replacement (as Drama's code does), here with the
Gumbel-top-k trick, which yields exactly the successive-sampling (Plackett-Luce) law of
drawing one slot at a time from the renormalised remaining weights. When a slot is
overwritten by new data its counters go back to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PURPOSES = ("train", "imagine")


def dfs_logits(n: np.ndarray, m_tilde: np.ndarray, tau: float, purpose: str) -> np.ndarray:
    """Unnormalised log-weights of DFS; `n`, `m_tilde`: [N] -> [N] float64."""
    n = np.asarray(n, dtype=np.float64)
    if purpose == "train":
        return -n / tau
    if purpose == "imagine":
        # n − m̃ − max(0, n − m̃) == min(0, n − m̃): written the short way, same numbers.
        return np.minimum(0.0, n - np.asarray(m_tilde, dtype=np.float64)) / tau
    raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")


def dfs_weights(n: np.ndarray, m_tilde: np.ndarray, tau: float, purpose: str) -> np.ndarray:
    """DFS sampling probabilities over slots; `n`, `m_tilde`: [N] -> [N], sums to 1."""
    logits = dfs_logits(n, m_tilde, tau, purpose)
    # Subtracting the max keeps exp() finite however large the counters grow.
    w = np.exp(logits - logits.max())
    return w / w.sum()


def draw_without_replacement(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw k distinct indices of `logits` [N] with successive-sampling probabilities.

    Gumbel-top-k: the k largest of logits_i + Gumbel_i, in decreasing order, are distributed
    exactly like k sequential draws from softmax(logits) with the drawn items removed.
    Returns [k] int64.
    """
    # −log E with E ~ Exp(1) is a standard Gumbel; this form is ~3x faster than rng.gumbel.
    keys = logits - np.log(rng.standard_exponential(size=logits.shape[0]))
    if k < logits.shape[0]:
        top = np.argpartition(-keys, k - 1)[:k]
    else:
        top = np.arange(logits.shape[0])
    return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)


def window_slots(oldest: int, count: int, capacity: int) -> np.ndarray:
    """`count` consecutive slots of a ring of `capacity` from slot `oldest`, in age order."""
    return (oldest + np.arange(count, dtype=np.int64)) % capacity


class DFSSampler:
    """Drama's DFS: per-slot counters, train/imagine weights, draws without replacement.

    When the batch asks for more starts than there are valid ones (a nearly empty buffer),
    every valid start is taken `batch_size // count` times and the remainder is drawn
    without replacement, so no start is ever taken twice more often than another.
    """

    name = "dfs"

    def __init__(
        self,
        capacity: int,
        tau: float = 10.0,
        train_batch: int | None = None,
        imagine_batch: int | None = None,
    ) -> None:
        if not tau > 0:
            raise ValueError(f"dfs tau must be > 0, got {tau!r}")
        self.capacity = capacity
        self.tau = float(tau)
        self.n = np.zeros(capacity, dtype=np.int64)
        self.m = np.zeros(capacity, dtype=np.int64)
        # 0 means "not seen yet"; a fixed value from the constructor is never replaced.
        self.train_batch = int(train_batch or 0)
        self.imagine_batch = int(imagine_batch or 0)
        self._fixed = (train_batch is not None, imagine_batch is not None)

    def m_scale(self) -> float:
        """train_batch / imagine_batch, the factor putting m on the scale of n (m̃ = m · it)."""
        if self.train_batch > 0 and self.imagine_batch > 0:
            return self.train_batch / self.imagine_batch
        return 1.0

    def choose(
        self, oldest: int, count: int, batch_size: int, purpose: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Pick `batch_size` start slots among the `count` valid ones from `oldest`: [B]."""
        return self.choose_from(window_slots(oldest, count, self.capacity), batch_size,
                                purpose, rng)

    def choose_from(
        self, slots: np.ndarray, batch_size: int, purpose: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Pick `batch_size` start slots among the valid ones `slots` [N] (any order, e.g. the
        valid starts of several env streams): [B]."""
        if purpose == "train" and not self._fixed[0]:
            self.train_batch = batch_size
        elif purpose == "imagine" and not self._fixed[1]:
            self.imagine_batch = batch_size
        count = slots.shape[0]
        n = self.n[slots]
        m_tilde = self.m[slots] * self.m_scale() if purpose == "imagine" else n
        logits = dfs_logits(n, m_tilde, self.tau, purpose)
        rounds, rest = divmod(batch_size, count)
        picks = [np.tile(np.arange(count, dtype=np.int64), rounds)] if rounds else []
        if rest:
            picks.append(draw_without_replacement(logits, rest, rng))
        offsets = np.concatenate(picks) if len(picks) > 1 else picks[0]
        slots = slots[offsets]
        # add.at, not +=, so a slot taken twice (only when rounds > 0) counts twice.
        np.add.at(self.n if purpose == "train" else self.m, slots, 1)
        return slots

    def on_write(self, slot: int) -> None:
        """A new transition replaced slot `slot`: its history no longer applies."""
        self.n[slot] = 0
        self.m[slot] = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": torch.from_numpy(self.n.copy()),
            "m": torch.from_numpy(self.m.copy()),
            "train_batch": self.train_batch,
            "imagine_batch": self.imagine_batch,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        n = np.asarray(d["n"], dtype=np.int64)
        if n.shape != (self.capacity,):
            raise ValueError(
                f"dfs counters have {n.shape[0]} slots but the replay has {self.capacity}; "
                "resume with the capacity the run was started with"
            )
        self.n[:] = n
        self.m[:] = np.asarray(d["m"], dtype=np.int64)
        if not self._fixed[0]:
            self.train_batch = int(d["train_batch"])
        if not self._fixed[1]:
            self.imagine_batch = int(d["imagine_batch"])
