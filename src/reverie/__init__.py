"""reverie: sample-efficient model-based reinforcement learning on a laptop CPU."""

__version__ = "0.1.0"
