"""Sequence replay (in memory or memory-mapped on disk) with uniform and DFS samplers, and a
ring of flat transitions for Dyna-style agents (MBPO)."""

from reverie.replay.buffer import SAMPLERS, Replay
from reverie.replay.dfs import DFSSampler, dfs_logits, dfs_weights, draw_without_replacement
from reverie.replay.transitions import TransitionRing
from reverie.replay.uniform import UniformSampler

__all__ = [
    "SAMPLERS",
    "DFSSampler",
    "Replay",
    "TransitionRing",
    "UniformSampler",
    "dfs_logits",
    "dfs_weights",
    "draw_without_replacement",
]
