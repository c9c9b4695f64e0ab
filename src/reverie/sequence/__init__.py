"""The backbone zoo: GRU, Transformer, Mamba-1, Mamba-2 and FFM behind one contract.

    m = make_backbone("mamba2", d_model=512, n_layers=2)
    state = m.initial_state(batch_size)
    y, state = m(x, state, reset)      # x: [B, T, D], reset: [B, T] bool or None
    y1, state = m.step(x1, state)      # x1: [B, D], O(1) per token
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from reverie.errors import suggest
from reverie.sequence.base import (
    Backbone,
    Block,
    SequenceModel,
    State,
    cat_states,
    contiguous_state,
    detach_state,
    index_state,
    positive_int,
)

BACKBONES: tuple[str, ...] = ("gru", "transformer", "mamba1", "mamba2", "ffm")

_MODULES = {name: f"reverie.sequence.{name}" for name in BACKBONES}


def make_backbone(name: str, d_model: int = 256, n_layers: int = 2, *,
                  options_key: str | None = None, **kwargs: Any) -> Backbone:
    """Build a backbone by name; extra keyword arguments go to that backbone.

    options_key: the config key those options come from (e.g. "rppo.backbone_kwargs"), named
    in the error when the backbone refuses an option or its value (its default included).
    """
    if name not in _MODULES:
        hint = suggest(name, BACKBONES)
        raise ValueError(
            f"unknown backbone {str(name)!r}{hint}; choose one of: {', '.join(BACKBONES)}"
        )
    if not positive_int(d_model):
        raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
    if not positive_int(n_layers):
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    try:
        return _build(name, d_model, n_layers, kwargs)
    except ValueError as e:
        if options_key is None:
            raise
        raise ValueError(f"{e} (backbone options live in {options_key})") from None


def _build(name: str, d_model: int, n_layers: int, kwargs: dict[str, Any]) -> Backbone:
    module = importlib.import_module(_MODULES[name])
    params = inspect.signature(module.build).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):  # gru names its own refusal
        options = [k for k, p in params.items() if k not in ("d_model", "n_layers")
                   and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for key in kwargs:
            if key not in options:
                raise ValueError(f"backbone '{name}' has no option '{key}'"
                                 f"{suggest(key, options)}; its options: "
                                 f"{', '.join(options) or 'none'}")
    try:
        return module.build(d_model=d_model, n_layers=n_layers, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad option for backbone '{name}': {e}") from None


__all__ = [
    "BACKBONES",
    "Backbone",
    "Block",
    "SequenceModel",
    "State",
    "make_backbone",
    "detach_state",
    "index_state",
    "cat_states",
    "contiguous_state",
]
