"""LaProp against its closed-form first step and a slow per-element reference; the fused
Adam every agent uses against torch's per-parameter loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reverie.nets.optim import LaProp, adam, make_optimizer


def reference_laprop(grads, lr, b1, b2, eps, p0):
    """Plain-Python LaProp on one scalar parameter, step by step (Ziyin et al. 2020)."""
    p, m, v = p0, 0.0, 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        v = b2 * v + (1 - b2) * g * g
        m = b1 * m + (1 - b1) * g / (math.sqrt(v / (1 - b2**t)) + eps)
        p = p - lr * m / (1 - b1**t)
        out.append(p)
    return out


def test_first_step_is_lr_times_sign():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    opt = LaProp([p], lr=0.1, eps=1e-20)
    p.grad = torch.tensor([3.0, -0.001, 250.0, 0.0])
    opt.step()
    # θ − lr · g / (|g| + ε): the gradient's sign times lr, whatever its size; 0 stays 0
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 0.4, 0.0]),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-20), ((0.5, 0.9), 1e-3)])
def test_matches_slow_reference(betas, eps):
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(25, 6, generator=gen, dtype=torch.float64)
    p0 = torch.randn(6, generator=gen, dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = LaProp([p], lr=0.01, betas=betas, eps=eps)
    got = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        got.append(p.detach().clone())
    got = torch.stack(got)
    for i in range(6):
        want = reference_laprop(grads[:, i].tolist(), 0.01, *betas, eps, float(p0[i]))
        torch.testing.assert_close(got[:, i], torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def test_state_round_trips_with_weights_only(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = LaProp([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = LaProp([q], lr=0.1)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for o, x in ((opt, p), (opt2, q)):
        x.grad = torch.full((3,), -2.0)
        o.step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="lr must be positive"):
        LaProp([torch.nn.Parameter(torch.ones(1))], lr=0.0)
    with pytest.raises(ValueError, match="choose one of adam, laprop"):
        make_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 1e-3, 1e-8)


def _params(gen, dtype=torch.float32):
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_matches_the_per_parameter_loop(dtype):
    gen = torch.Generator().manual_seed(3)
    a = _params(gen, dtype)
    start = [p.detach().clone() for p in a]
    b = [torch.nn.Parameter(p.clone()) for p in start]
    grads = [[torch.randn(p.shape, generator=gen, dtype=dtype) for p in a] for _ in range(30)]
    fused = adam(a, lr=0.01, eps=1e-5)
    assert fused.param_groups[0]["fused"] is True  # parameters on the CPU: one kernel
    loop = torch.optim.Adam(b, lr=0.01, eps=1e-5, foreach=False)
    _run(fused, a, grads)
    _run(loop, b, grads)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for x, y, x0 in zip(a, b, start):
        assert (x - x0).abs().min() > 0  # every value moved
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_old_per_parameter_adam_state_resumes_as_it_ran():
    """A checkpoint saved before Adam was fused loads into `adam` and goes on with the
    per-parameter loop it ran with (the flag is part of the saved state), so an old run's
    resume stays bit-exact."""
    gen = torch.Generator().manual_seed(4)
    a = _params(gen)
    grads = [[torch.randn(p.shape, generator=gen) for p in a] for _ in range(6)]
    old = torch.optim.Adam(a, lr=0.01)
    _run(old, a, grads[:3])
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    resumed = adam(b, lr=0.01)
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))  # as through a checkpoint file
    assert not resumed.param_groups[0]["fused"]
    _run(old, a, grads[3:])
    _run(resumed, b, grads[3:])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
