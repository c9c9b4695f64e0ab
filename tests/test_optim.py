"""LaProp against its closed-form first step and a slow per-element reference."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.nets.optim import LaProp, make_optimizer


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
