"""Sequence replay (in memory or memory-mapped on disk) with uniform and DFS samplers."""

from reverie.replay.buffer import SAMPLERS, Replay
from reverie.replay.dfs import DFSSampler, dfs_logits, dfs_weights, draw_without_replacement
from reverie.replay.uniform import UniformSampler

__all__ = [
    "SAMPLERS",
    "DFSSampler",
    "Replay",
    "UniformSampler",
    "dfs_logits",
    "dfs_weights",
    "draw_without_replacement",
]
