"""reverie: sample-efficient model-based reinforcement learning on a laptop CPU."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, device: str = "auto"):
    """Load a trained agent: `reverie.load("runs/demo").act(obs) -> (action, state)`."""
    from reverie.run.policy import load as _load

    return _load(path, device=device)


__all__ = ["load", "__version__"]
