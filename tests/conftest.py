"""Test-suite settings: one intra-op thread (tiny tensors run fastest that way, results do not
depend on how many cores CI has, and `make test` runs one test process per core), and
torch.compile off (TORCH_COMPILE_DISABLE, torch's own switch, inherited by the CLI
subprocesses): the default run.compile=auto would compile each test's tiny model once more;
tests/test_compile.py turns it back on for its own tests."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
