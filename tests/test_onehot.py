"""One-hot first layers (reverie.nets.onehot) against the dense products they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reverie.nets.mlp import MLP
from reverie.nets.onehot import onehot_linear, onehot_rows
from test_imagine_agent import SPACES, FakeReplay, make_agent

S, K, R, O = 6, 5, 7, 11  # categoricals, classes, dense width, outputs


def _latent(lead: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(K, (*lead, S), generator=g)
    return F.one_hot(idx, K).flatten(-2).float(), onehot_rows(idx, K)


def test_onehot_rows_are_the_columns_of_the_ones():
    z, index = _latent((4, 3))
    assert index.shape == (4, 3, S)
    assert torch.equal(z.nonzero()[:, -1].view(4, 3, S), index)


def test_onehot_linear_matches_the_dense_layer_forward_and_backward():
    """Values to float rounding; the gradients of the weight, the bias, the dense part and
    the one-hot part (the straight-through gradient) are the dense layer's."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(S * K + R, O)
    z, index = _latent((3, 4))
    probs = torch.rand(3, 4, S * K, requires_grad=True)
    z_st = z + (probs - probs.detach())  # a straight-through sample, as the world model's
    rest = torch.randn(3, 4, R, requires_grad=True)
    dy = torch.randn(3, 4, O)

    y = onehot_linear(lin, z_st, rest, index)
    y.backward(dy)
    grads = [p.grad.clone() for p in (lin.weight, lin.bias, rest, probs)]
    for p in (lin.weight, lin.bias, rest, probs):
        p.grad = None
    ref = lin(torch.cat([z_st, rest], -1))
    ref.backward(dy)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    for got, p in zip(grads, (lin.weight, lin.bias, rest, probs)):
        torch.testing.assert_close(got, p.grad, rtol=1e-6, atol=1e-6)


def test_mlp_with_index_matches_the_dense_mlp_and_autocast_stays_dense():
    torch.manual_seed(1)
    mlp = MLP(S * K + R, O, 16, 2, onehot_width=S * K)
    z, index = _latent((9,), seed=2)
    x = torch.cat([z, torch.randn(9, R)], -1)
    torch.testing.assert_close(mlp(x, index), mlp(x), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: the dense product, exactly
        assert torch.equal(mlp(x, index), mlp(x))
    with pytest.raises(ValueError, match="onehot_width=0"):
        MLP(S * K + R, O, 16, 2)(x, index)
    with pytest.raises(ValueError, match="onehot_width"):
        MLP(4, O, 16, 2, onehot_width=5)


def test_sample_index_is_the_sample_and_where_its_ones_are():
    agent = make_agent("discrete")
    world = agent.world
    logits = torch.randn(10, world.stoch, world.classes)
    torch.manual_seed(3)
    z, index = world.sample_index(logits)
    torch.manual_seed(3)
    assert torch.equal(world.sample(logits), z)  # same draws
    assert torch.equal(z.nonzero()[:, -1].view(10, world.stoch), index)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_imagined_trajectory_carries_the_index_of_its_latents(kind):
    """traj["index"] locates the ones of every feat's z, and the actor-critic's losses
    with it equal the dense ones to float rounding."""
    agent = make_agent(kind)
    ctx = FakeReplay(SPACES[kind], seed=4).sample(8, 4)
    torch.manual_seed(0)
    traj = agent.imagine(ctx)
    world, index = agent.world, traj["index"]
    assert index.shape == (*traj["feat"].shape[:2], world.stoch)
    z = traj["feat"][..., : world.stoch_dim]
    assert torch.equal(z.nonzero()[:, -1].view(index.shape), index)
    behavior = agent.behavior
    state = {k: v.clone() for k, v in behavior.return_norm.state_dict().items()}
    sparse = behavior.loss(**traj)
    behavior.return_norm.load_state_dict(state)
    dense = behavior.loss(**{k: v for k, v in traj.items() if k != "index"})
    torch.testing.assert_close(sparse[0], dense[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse[1], dense[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="index must be"):
        behavior.loss(**{**traj, "index": index[1:]})


@pytest.mark.parametrize("start", ["posterior", "prior"])
@pytest.mark.parametrize("planner", [False, True])
def test_imagination_takes_the_one_hot_layers_and_matches_the_dense_one(monkeypatch, start,
                                                                         planner):
    """The same imagination with the one-hot layers and with the dense products: the same
    draws and values to float rounding (an index out of step with z would change h), and
    the one-hot path is really taken (actor and backbone input at every step)."""
    from reverie.nets import mlp, onehot
    from reverie.world import latent
    from test_imagine_coplanner import make_agent as make_planning_agent

    if planner:
        agent = make_planning_agent("discrete", mode="conservative", candidates=2, horizon=2)
        agent.cfg.imag_start = start
    else:
        agent = make_agent("discrete", imag_start=start)
    ctx = FakeReplay(SPACES["discrete"], seed=6).sample(8, 4)
    calls = []
    monkeypatch.setattr(mlp, "onehot_linear",
                        lambda *a: calls.append("mlp") or onehot.onehot_linear(*a))
    monkeypatch.setattr(latent, "onehot_linear",
                        lambda *a: calls.append("input") or onehot.onehot_linear(*a))
    torch.manual_seed(1)
    fast = agent.imagine(ctx)
    H = agent.cfg.horizon
    assert calls.count("input") >= H + 1  # the context warm-up and every imagined step
    assert calls.count("mlp") >= H  # the actor at every imagined step
    calls.clear()
    monkeypatch.setattr(mlp, "use_onehot", lambda index, x: False)
    monkeypatch.setattr(latent, "use_onehot", lambda index, x: False)
    torch.manual_seed(1)
    dense = agent.imagine(ctx)
    assert not calls
    assert torch.equal(fast["action"], dense["action"])
    assert torch.equal(fast["index"], dense["index"])
    for k in ("feat", "reward", "cont"):
        torch.testing.assert_close(fast[k], dense[k], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def kernel():
    """The row-scatter kernel, built (or loaded from the inductor cache) once; a build that
    fails here fails the test (CI has the C++ compiler torch.compile needs)."""
    from reverie.nets import onehot_kernel

    onehot_kernel.load()
    return onehot_kernel


@pytest.mark.parametrize("rows,ones,classes,outs,threads", [
    (300, 6, 5, 40, 2),   # outs a multiple of the vector width (AVX-512: 16)
    (257, 7, 3, 21, 3),   # and not: the scalar tail
    (2, 4, 4, 9, 4),      # fewer rows than threads
    (0, 3, 2, 5, 2),      # no rows: a zero gradient
])
def test_the_scatter_kernel_is_the_dense_weight_gradient(kernel, rows, ones, classes, outs,
                                                         threads):
    """Row k of onehot_weight_grad is the sum of the gradient's rows whose ones hold k, i.e.
    (gradᵀ @ onehot)ᵀ; the same thread count gives the same bits again."""
    g = torch.Generator().manual_seed(rows)
    index = onehot_rows(torch.randint(classes, (rows, ones), generator=g), classes)
    grad = torch.randn(rows, outs, generator=g)
    onehot = torch.zeros(rows, ones * classes).scatter_(1, index, 1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernel.onehot_weight_grad(grad, index, ones * classes)
        again = kernel.onehot_weight_grad(grad, index, ones * classes)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, (grad.t() @ onehot).t(), rtol=1e-5, atol=1e-5)
    assert torch.equal(got, again)


def test_the_scatter_kernel_refuses_a_column_outside_the_layer(kernel):
    index = torch.tensor([[0, 3], [1, 4]])
    with pytest.raises(ValueError, match=r"must be in \[0, 4\); index holds 0..4"):
        kernel.onehot_weight_grad(torch.ones(2, 3), index, 4)
    with pytest.raises(ValueError, match=r"grad \[N, O\] float32 on the CPU and index \[N, S\]"):
        kernel.onehot_weight_grad(torch.ones(3, 3), index, 5)  # 3 rows of grad, 2 of index
    with pytest.raises(ValueError, match="float32"):
        kernel.onehot_weight_grad(torch.ones(2, 3, dtype=torch.float64), index, 5)
    # an int32 index is read as int64 (the kernel's type), not past its buffer
    got = kernel.onehot_weight_grad(torch.ones(2, 3), index.int(), 5)
    assert torch.equal(got.sum(1), torch.tensor([3.0, 3.0, 0.0, 3.0, 3.0]))


def test_onehot_linear_with_the_kernel_has_the_dense_layer_s_gradients(kernel, monkeypatch):
    torch.manual_seed(4)
    lin = torch.nn.Linear(S * K + R, O)
    z, index = _latent((5, 6), seed=5)
    rest = torch.randn(5, 6, R)
    dy = torch.randn(5, 6, O)
    calls = []
    scatter = kernel.onehot_weight_grad
    monkeypatch.setattr(kernel, "onehot_weight_grad", lambda *a: calls.append(1) or scatter(*a))
    onehot_linear(lin, z, rest, index, kernel=True).backward(dy)
    assert calls  # the kernel made the weight's gradient
    got = lin.weight.grad.clone(), lin.bias.grad.clone()
    lin.weight.grad = lin.bias.grad = None
    lin(torch.cat([z, rest], -1)).backward(dy)
    torch.testing.assert_close(got[0], lin.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], lin.bias.grad, rtol=1e-5, atol=1e-6)


def test_compile_on_gives_the_actor_critic_the_kernel_or_says_why_not(kernel, monkeypatch):
    """run.compile=on: the actor's and critic's one-hot first layers take the kernel; where
    it cannot be built, one note, and they keep the dense product."""
    import torch._dynamo

    from reverie.compiler import Compiler

    # the suite's switch off, as tests/test_compile.py does it (monkeypatch's undo of a
    # dynamo config entry left `disable` hidden for the tests after it in the process)
    with torch._dynamo.config.patch(disable=False):
        mlps = lambda agent: [m for m in agent.behavior.modules()  # noqa: E731
                              if isinstance(m, MLP) and m.onehot_width]
        agent, notes = make_agent("discrete"), []
        agent.compile(Compiler(notes.append))
        assert len(mlps(agent)) >= 2 and all(m.onehot_kernel for m in mlps(agent))
        assert not any("not built" in n for n in notes)

        def broken():
            raise RuntimeError("no C++ compiler\nmore lines")

        monkeypatch.setattr(kernel, "load", broken)
        agent, notes = make_agent("discrete"), []
        agent.compile(Compiler(notes.append))
        assert not any(m.onehot_kernel for m in mlps(agent))
        assert [n for n in notes if "not built" in n] == [
            "note: run.compile=on: the one-hot weight-gradient kernel was not built (RuntimeError: "
            "no C++ compiler); the dense product runs instead"]
        agent, notes = make_agent("discrete"), []
        agent.compile(Compiler(notes.append, "auto"))  # auto: no actor-critic compile, no kernel
        assert not any(m.onehot_kernel for m in mlps(agent)) and not notes
