"""reverie: sample-efficient model-based reinforcement learning on a laptop CPU."""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# Whether the user chose inductor's cache folder: importing torch._dynamo (reverie's models
# do) sets TORCHINDUCTOR_CACHE_DIR to torch's /tmp default, which reverie.compiler then
# replaces with ~/.cache/reverie/inductor unless the user had set it (README, "Cache"). The
# answer is handed down to the processes this one starts (a sweep's trials, Ray's workers),
# which inherit torch's default from it and would take it for the user's choice.
_CACHE_CHOSEN_ENV = "REVERIE_INDUCTOR_CACHE_CHOSEN"
_INDUCTOR_CACHE_CHOSEN = _os.environ.get(
    _CACHE_CHOSEN_ENV, "1" if "TORCHINDUCTOR_CACHE_DIR" in _os.environ else "0") == "1"
_os.environ[_CACHE_CHOSEN_ENV] = "1" if _INDUCTOR_CACHE_CHOSEN else "0"


def load(path, device: str = "auto", best: bool = False):
    """Load a trained agent: `reverie.load("runs/demo").act(obs) -> (action, state)`; the
    run's newest checkpoint, or with `best=True` its agent of the best evaluation so far."""
    from reverie.run.policy import load as _load

    return _load(path, device=device, best=best)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory mapped (faster training; see reverie/allocator.py). The
    `reverie` command does this itself; call it once when using reverie as a library."""
    from reverie.allocator import keep_freed_memory as _keep

    return _keep()


__all__ = ["load", "keep_freed_memory", "__version__"]
