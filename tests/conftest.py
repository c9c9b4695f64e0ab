"""Test-suite settings: one intra-op thread (tiny tensors run fastest that way, and results do
not depend on how many cores CI has)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
