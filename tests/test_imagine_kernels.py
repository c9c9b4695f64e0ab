"""Imagination's kernels (run.compile=on): the one-pass categorical sampler
(reverie.nets.categorical_kernel) against inverse-CDF sampling in float64, Mamba-2's step
kernels (reverie.sequence.ssd_kernel: the state's, for the machine's vector ISA and AVX2,
and the conv's) against the torch step and the paper's recurrence, and their use by the
world model and imagination."""

from __future__ import annotations

import copy

import pytest
import torch

from kernel_isa import built_for, torch_threads
from reverie.nets import categorical_kernel
from reverie.sequence import ssd_kernel
from reverie.sequence.base import causal_conv_step
from reverie.sequence.ssd import ssd_step
from reverie.world.latent import WorldModelConfig
from test_imagine_agent import SPACES, FakeReplay, make_agent
from test_mamba2 import make_block, reference_block


@pytest.fixture(scope="module")
def kernel():
    """Built (or loaded from the inductor cache) once; a build that fails here fails the
    test (CI has the C++ compiler torch.compile needs)."""
    categorical_kernel.load()
    return categorical_kernel


@pytest.fixture(params=["machine", "avx2"])
def isa_kernel(request, kernel, monkeypatch):
    """categorical_kernel with its kernel built for the machine's vector ISA, then for AVX2
    (8 rows a block instead of AVX-512's 16)."""
    if request.param == "avx2":
        monkeypatch.setattr(kernel, "_kernel", built_for(256, kernel.ARGTYPES, kernel.SOURCE))
    return kernel


def _reference(logits: torch.Tensor, u: torch.Tensor, mix: float):
    """Inverse-CDF sampling of (1 − mix)·softmax + mix/K in float64, and how close each
    row's target came to a boundary between two classes."""
    K = logits.shape[-1]
    q = (1 - mix) * torch.softmax(logits.double(), -1) + mix / K
    run = q.cumsum(-1)
    target = u.double()[:, None] * q.sum(-1, keepdim=True)
    index = (run < target).sum(-1).clamp(max=K - 1)
    margin = (run - target).abs().min(-1).values
    return index, margin


@pytest.mark.parametrize("rows,classes,mix,threads", [
    (1000, 32, 0.01, 2),   # rows a multiple of the lanes (one row each; AVX-512: 16)
    (333, 5, 0.01, 3),     # and not: a last block of 13 rows; few classes
    (64, 20, 0.0, 2),      # no unimix
    (17, 48, 0.3, 4),      # a tail block of one row
    (3, 16, 0.01, 8),      # fewer rows than threads
    (0, 16, 0.01, 2),      # no rows
])
def test_the_kernel_draws_the_inverse_cdf_sample(isa_kernel, rows, classes, mix,
                                                 threads):
    """The class whose running probability first reaches u times the total, as
    `WorldModel.sample_index` picks it; rounding may move a draw within 1e-5 of a boundary
    to the neighbour only. Its one-hot row has a single one there; the same bits on any
    thread count. With the machine's vector ISA and AVX2."""
    kernel = isa_kernel
    g = torch.Generator().manual_seed(rows + classes)
    logits = torch.randn(rows, classes, generator=g) * 3
    u = torch.rand(rows, generator=g)
    with torch_threads(threads):
        index, onehot = kernel.unimix_sample(logits, u, mix)
    ref, margin = _reference(logits, u, mix)
    assert index.dtype == torch.int64 and index.shape == (rows,)
    differ = index != ref
    assert not differ.any() or bool((margin[differ] < 1e-5).all())
    assert int(differ.sum()) <= max(1, rows // 1000)
    assert torch.equal(onehot, torch.nn.functional.one_hot(index, classes).float())
    assert torch.equal(kernel.unimix_sample(logits, u, mix)[0], index)


def test_the_kernel_samples_the_mixed_distribution(kernel):
    """Frequencies over 200k draws from one row: (1 − mix)·softmax + mix/K, including the
    classes that only the mixture reaches."""
    logits = torch.tensor([4.0, 2.0, 0.0, -30.0, 1.0, -30.0, 3.0])
    n, mix = 200_000, 0.05
    g = torch.Generator().manual_seed(0)
    index, _ = kernel.unimix_sample(logits.expand(n, -1).contiguous(), torch.rand(n, generator=g),
                                    mix)
    freq = torch.bincount(index, minlength=7).double() / n
    q = (1 - mix) * torch.softmax(logits.double(), -1) + mix / 7
    assert torch.allclose(freq, q, atol=4 * (q * (1 - q) / n).sqrt().max().item())


def test_the_kernel_refuses_what_it_cannot_read(kernel):
    with pytest.raises(ValueError, match=r"logits \[N, K\] and u \[N\], float32 on the CPU"):
        kernel.unimix_sample(torch.zeros(4, 3), torch.zeros(3), 0.01)
    with pytest.raises(ValueError, match="float32"):
        kernel.unimix_sample(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4), 0.01)
    with pytest.raises(ValueError, match=r"unimix must be in \[0, 1\)"):
        kernel.unimix_sample(torch.zeros(4, 3), torch.zeros(4), 1.0)


def test_the_world_model_samples_with_the_kernel_only_without_autograd(kernel, monkeypatch):
    """prior_sample and posterior_sample with `sample_kernel`: the same z and index as
    sample_index(prior(h)) / sample_index(encode(obs)) from the same random state; with
    autograd on, the torch ops (their straight-through gradient)."""
    world = make_agent("discrete").world
    h = torch.randn(64, world.deter_dim)
    obs = {k: v[:, 0] for k, v in FakeReplay(SPACES["discrete"], seed=2).sample(64, 1).items()
           if k in world.obs_shapes}
    calls = []
    real = kernel.unimix_sample
    monkeypatch.setattr(kernel, "unimix_sample", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        torch.manual_seed(5)
        ref = world.sample_index(world.prior(h)), world.sample_index(world.encode(obs))
        world.sample_kernel = True
        torch.manual_seed(5)
        got = world.prior_sample(h), world.posterior_sample(obs)
    assert len(calls) == 2
    for (z, index), (z_ref, index_ref) in zip(got, ref):
        assert torch.equal(z, z_ref) and torch.equal(index, index_ref)
    calls.clear()
    z, _ = world.prior_sample(h)
    assert not calls and z.requires_grad  # the straight-through sample


@pytest.fixture(scope="module")
def stepper():
    ssd_kernel.load()
    return ssd_kernel


@pytest.fixture(params=["machine", "avx2"])
def isa_stepper(request, stepper, monkeypatch):
    """ssd_kernel with its kernel built for the machine's vector ISA, then for AVX2 (the
    lane sums have a form for each)."""
    if request.param == "avx2":
        monkeypatch.setattr(ssd_kernel, "_kernel",
                            built_for(256, ssd_kernel.ARGTYPES, ssd_kernel.SOURCE))
    return ssd_kernel


def _ssd_operands(rows: int, H: int, P: int, N: int, seed: int = 0, layout: str = "own"):
    """layout "own": x, B and C contiguous tensors; "split": views into one [rows, H·P + 2N]
    tensor, as a Mamba-2 block splits its conv output (rows at a stride); "transposed": x,
    B and C transposed copies (their rows not contiguous)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "split":
        xs, B, C = torch.randn(rows, H * P + 2 * N, generator=g).split([H * P, N, N], -1)
        x = xs.reshape(rows, H, P)
        assert rows == 1 or (x.stride(0) == H * P + 2 * N and not B.is_contiguous())
    else:
        x = torch.randn(rows, H, P, generator=g)
        B, C = torch.randn(rows, N, generator=g), torch.randn(rows, N, generator=g)
        if layout == "transposed":
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
            B, C = B.t().contiguous().t(), C.t().contiguous().t()
            assert B.stride(1) != 1 or rows == 1
    dt = torch.rand(rows, H, generator=g) * 0.2
    A = -torch.rand(H, generator=g) * 4
    D = torch.randn(H, generator=g)
    h = torch.randn(rows, H, P, N, generator=g)
    return x, dt, A, B, C, D, h


@pytest.mark.parametrize("rows,H,P,N,threads,layout", [
    (37, 3, 8, 16, 2, "own"),   # N a multiple of the vector width (AVX-512: 16, AVX2: 8)
    (5, 2, 3, 20, 3, "own"),    # and not: a scalar tail
    (4, 1, 2, 5, 8, "own"),     # N under one vector; fewer row-heads than threads
    (0, 2, 4, 16, 2, "own"),    # no rows
    (37, 3, 8, 16, 2, "split"),  # x, B, C read in place at their row stride
    (5, 2, 3, 20, 3, "split"),
    (6, 2, 3, 16, 2, "transposed"),  # x's, B's and C's rows not contiguous: copied first
    (1, 1, 1, 16, 2, "split"),  # one row, one head, one value per head: size-1 dims
    (5, 2, 40, 16, 2, "own"),   # P: whole blocks of lane sums and a tail of rows
    (3, 2, 32, 32, 2, "split"),  # N of two vectors (AVX-512) in the lane sums' blocks
    (2, 3, 16, 8, 2, "own"),    # N = 8: blocks with AVX2, under a vector with AVX-512
])
def test_the_step_kernel_is_the_torch_step_written_over_the_state(isa_stepper, rows, H, P, N,
                                                                  threads, layout):
    """ssd_step_ = ssd_step + D·x to float rounding, its new state in the old one's memory;
    the same bits on any thread count; with the machine's vector ISA and with AVX2."""
    stepper = isa_stepper
    x, dt, A, B, C, D, h = _ssd_operands(rows, H, P, N, layout=layout)
    y_ref, h_ref = ssd_step(x, dt, A, B, C, h)
    y_ref = y_ref + x * D[:, None]
    got = {}
    for t in (threads, 1):
        state = h.clone()
        with torch_threads(t):
            got[t] = stepper.ssd_step_(x, dt, A, B, C, D, state), state
    y, state = got[threads]
    if layout == "split":  # read where they are: no copy of x, B or C
        fresh = h.clone()
        with torch.profiler.profile() as prof:
            stepper.ssd_step_(x, dt, A, B, C, D, fresh)
        assert not [e.name for e in prof.events() if e.name in ("aten::clone", "aten::copy_")]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, h_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1][0], y) and torch.equal(got[1][1], state)


@pytest.mark.parametrize("simdlen", [None, 256])
def test_the_lane_sums_give_the_bits_of_one_sum_per_row(stepper, simdlen):
    """V rows' dot products summed by the shuffle tree (`lane_sums`) are the bits of one
    horizontal sum per row (ATen's, the same tree of adds), for the machine's vector ISA and
    for AVX2: the per-row source is the kernel's with the lane sums compiled out."""
    per_row = ssd_kernel.SOURCE.replace("#define REVERIE_LANE_SUMS 1",
                                        "#define REVERIE_LANE_SUMS 0")
    assert per_row.count("#define REVERIE_LANE_SUMS 0") == 3
    kernels = [built_for(simdlen, ssd_kernel.ARGTYPES, source)
               for source in (ssd_kernel.SOURCE, per_row)]
    for rows, H, P, N in ((9, 3, 40, 16), (4, 2, 32, 32), (5, 2, 24, 8)):
        x, dt, A, B, C, D, h = _ssd_operands(rows, H, P, N, layout="split")
        out = []
        for kernel in kernels:
            state, y = h.clone(), torch.empty(rows, H, P)
            kernel(x, dt, A, B, C, D, state, y, state, rows, H, P, N, x.stride(0),
                   B.stride(0), C.stride(0), 2)
            out.append((y, state))
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_the_step_kernel_refuses_what_it_cannot_read(stepper):
    x, dt, A, B, C, D, h = _ssd_operands(3, 2, 4, 16)
    with pytest.raises(ValueError, match="mismatched x, B"):
        stepper.ssd_step_(x[:2], dt, A, B[:2], C, D, h)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        stepper.ssd_step_(x, dt, A, B, C, D, h.double())
    with pytest.raises(ValueError, match="contiguous state"):
        stepper.ssd_step_(x, dt, A, B, C, D, h.transpose(0, 1).contiguous().transpose(0, 1))
    assert not stepper.serves(x, dt, A, B, C, D, h.transpose(2, 3))


def _conv_operands(rows: int, C: int, K: int, dtype: torch.dtype, seed: int = 0):
    """x as a split view of a wider row (in_proj's output: rows at a stride), the conv's
    weight [C, K] column-major as Mamba-2 keeps it, bias [C], prefix [rows, K−1, C]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, C + 9, generator=g).to(dtype)[:, 5:5 + C]
    weight = torch.randn(K, C, generator=g).t()
    bias, prefix = torch.randn(C, generator=g), torch.randn(rows, K - 1, C, generator=g)
    return x, weight, bias, prefix


@pytest.mark.parametrize("rows,C,K,dtype,threads", [
    (37, 40, 4, torch.float32, 2),   # C: whole vectors and a scalar tail (AVX-512: 16)
    (5, 48, 4, torch.bfloat16, 3),   # autocast's bf16 input; more threads than share rows
    (4, 7, 1, torch.float32, 2),     # K = 1: no prefix; C under one vector
    (3, 20, 2, torch.bfloat16, 8),   # one slot; fewer rows than threads
    (0, 16, 4, torch.float32, 2),    # no rows
])
def test_the_conv_step_kernel_is_the_conv_step_written_over_the_prefix(stepper, rows, C, K,
                                                                       dtype, threads):
    """conv_step_ = causal_conv_step: y to float rounding (the same products and order as
    the compiled form; ATen's eager addcmul may fuse them), the new prefix the same bits and
    in the old one's memory; the same bits on any thread count."""
    x, weight, bias, prefix = _conv_operands(rows, C, K, dtype)
    y_ref, p_ref = causal_conv_step(x, weight, bias, prefix)
    window = torch.cat([prefix.double(), x.double()[:, None]], 1)
    y64 = bias.double() + (window * weight.double().t()).sum(1)
    got = {}
    for t in (threads, 1):
        state = prefix.clone()
        with torch_threads(t):
            got[t] = stepper.conv_step_(x, weight, bias, state), state
    y, state = got[threads]
    assert y.dtype == torch.float32 and torch.equal(state, p_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=1e-5)
    assert torch.equal(got[1][0], y) and torch.equal(got[1][1], state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_conv_step_kernel_is_the_compiled_conv_step_bit_for_bit(stepper, request,
                                                                    monkeypatch, dtype):
    """What the kernel replaces under run.compile=on is inductor's form of causal_conv_step:
    the same products added in the same order give the same bits. Both are built here, under
    the same inductor settings (other tests of a worker process may change its vector ISA):
    the kernel afresh, the compiled form from this test's own function (no frame another
    test compiled; a compile of ~5 s, cached in .pytest_cache as tests/test_compile.py's)."""
    import torch._dynamo

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(request.config.cache.mkdir("inductor")))
    monkeypatch.setattr(stepper, "_conv",
                        built_for(None, stepper.CONV_ARGTYPES, stepper.CONV_SOURCE))
    x, weight, bias, prefix = _conv_operands(37, 40, 4, dtype)
    with torch._dynamo.config.patch(disable=False):
        compiled = torch.compile(lambda *args: causal_conv_step(*args), dynamic=False)
        y_ref, p_ref = compiled(x, weight, bias, prefix)
    state = prefix.clone()
    assert torch.equal(stepper.conv_step_(x, weight, bias, state), y_ref)
    assert torch.equal(state, p_ref)


def test_the_conv_step_kernel_refuses_what_it_cannot_read(stepper):
    x, weight, bias, prefix = _conv_operands(3, 16, 4, torch.float32)
    assert stepper.conv_serves(x, weight, bias, prefix)
    for bad in ((x.double(), weight, bias, prefix), (x, weight, bias, prefix.double()),
                (x, weight, bias, prefix.bfloat16()), (x, weight.bfloat16(), bias, prefix),
                (x, weight, bias[:8], prefix), (x[None], weight, bias, prefix),
                (x, weight[:8], bias, prefix), (x, weight, bias, prefix[:, :2]),
                (x, weight, bias, prefix.transpose(1, 2).contiguous().transpose(1, 2)),
                (x.t().contiguous().t(), weight, bias, prefix)):
        assert not stepper.conv_serves(*bad)
        with pytest.raises(ValueError, match="conv_step_ takes"):
            stepper.conv_step_(*bad)


def test_a_mamba2_block_steps_over_its_state_only_when_told(stepper):
    """With `step_kernel` and without autograd: `overwrite=True` writes the new state (SSM
    and conv prefix) over the old one's tensors (values of the paper's recurrence to float32
    rounding); without
    `overwrite`, or with autograd on, the old state is left as it was."""
    blk64 = make_block(4)  # float64, for the reference
    blk = copy.deepcopy(blk64).float()
    blk.step_kernel = True
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 12, generator=g)
    start = {k: torch.randn(v.shape, generator=g) for k, v in
             blk.initial_state(3, x.device, x.dtype).items()}
    with torch.no_grad():
        y_ref, s_ref = reference_block(blk64, x.double(),
                                       {k: v.double() for k, v in start.items()}, None)
        s = {k: v.clone() for k, v in start.items()}
        ys = []
        for t in range(5):
            ssm, conv = s["ssm"], s["conv"]
            y, s = blk.step(x[:, t], s, overwrite=True)
            assert s["ssm"] is ssm and s["conv"] is conv  # written over
            ys.append(y)
        torch.testing.assert_close(torch.stack(ys, 1).double(), y_ref, rtol=1e-4, atol=1e-5)
        for k in ("ssm", "conv"):
            torch.testing.assert_close(s[k].double(), s_ref[k], rtol=1e-4, atol=1e-5)
        kept = {k: v.clone() for k, v in start.items()}
        _, s = blk.step(x[:, 0], kept)
        for k in ("ssm", "conv"):
            assert torch.equal(kept[k], start[k]) and s[k] is not kept[k]
    _, s = blk.step(x[:, 0], kept, overwrite=True)  # autograd on: the torch step
    assert all(torch.equal(kept[k], start[k]) for k in ("ssm", "conv"))


def _mamba2_agent():
    world = WorldModelConfig(backbone="mamba2", d_model=32, n_layers=2, stoch=4, classes=4,
                             hidden=32, mlp_layers=1, reward_bins=21,
                             backbone_kwargs={"head_dim": 16})
    return make_agent("discrete", world=world)


@pytest.mark.parametrize("start", ["posterior", "prior"])
def test_compile_on_gives_imagination_the_kernels_or_says_why_not(kernel, stepper, monkeypatch,
                                                                  start):
    """run.compile=on builds both kernels, and imagination rolls out the same trajectory
    with them as without (the same random stream; classes and actions equal here, values to
    float rounding); a build that fails leaves the torch ops, with one note each; a
    fall-back to eager turns the kernels off again."""
    import torch._dynamo

    from reverie.compiler import Compiler

    ctx = FakeReplay(SPACES["discrete"], seed=6).sample(8, 4)
    plain = _mamba2_agent()
    plain.cfg.imag_start = start
    torch.manual_seed(1)
    ref = plain.imagine(ctx)
    blocks = plain.world.backbone.step_kernel_blocks()
    assert len(blocks) == 2
    with torch._dynamo.config.patch(disable=False):
        agent, notes = _mamba2_agent(), []
        agent.cfg.imag_start = start
        compiler = Compiler(notes.append)
        agent.compile(compiler)
        blocks = agent.world.backbone.step_kernel_blocks()
        assert agent.world.sample_kernel and all(b.step_kernel for b in blocks)
        assert not any("not built" in n for n in notes)
        agent._imagined_step = agent._observe = None  # eager steps: the kernels, not dynamo
        calls = []
        for module, op in ((kernel, "unimix_sample"), (stepper, "ssd_step_"),
                           (stepper, "conv_step_")):
            real = getattr(module, op)
            monkeypatch.setattr(module, op, lambda *a, real=real, op=op: calls.append(op)
                                or real(*a))
        torch.manual_seed(1)
        got = agent.imagine(ctx)
        H = agent.cfg.horizon
        assert calls.count("ssd_step_") == calls.count("conv_step_") == 2 * H
        assert calls.count("unimix_sample") >= H + 1
        for k in ("action", "index"):
            assert torch.equal(got[k], ref[k])
        for k in ("feat", "reward", "cont"):
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)
        compiler.fall_back(RuntimeError("gone"))
        assert not agent.world.sample_kernel and not any(b.step_kernel for b in blocks)
        agent, notes = _mamba2_agent(), []
        agent.compile(Compiler(notes.append, "auto"))  # auto: no kernel, no build
        assert not agent.world.sample_kernel
        assert not any(b.step_kernel for b in agent.world.backbone.step_kernel_blocks())
        assert not any("kernel" in n for n in notes)

        def broken():
            raise RuntimeError("no C++ compiler\nmore lines")

        monkeypatch.setattr(kernel, "load", broken)
        monkeypatch.setattr(stepper, "load", broken)
        agent, notes = _mamba2_agent(), []
        agent.compile(Compiler(notes.append))
        assert not agent.world.sample_kernel
        assert not any(b.step_kernel for b in agent.world.backbone.step_kernel_blocks())
        # one note for the one reason (the one-hot kernel built: its load is not broken here)
        assert [n for n in notes if "not built" in n] == [
            "note: run.compile=on: the categorical sampling kernel and the Mamba-2 step kernels "
            "were not built (RuntimeError: no C++ compiler); the torch ops run in their place"]


def test_torch_s_opcheck_passes_for_reverie_s_custom_ops(kernel, stepper):
    """The four ops as torch.compile sees them: schema (ssd_step_ and conv_step_ declare
    their writes to h and the prefix),
    fake tensors of the right shapes and strides (a non-contiguous input included), AOT
    dispatch."""
    from torch.library import opcheck

    from reverie.nets import onehot_kernel

    onehot_kernel.load()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 40, generator=g).t()  # [40, 32], transposed: not contiguous
    checks = [
        (torch.ops.reverie.unimix_sample.default, (logits, torch.rand(40, generator=g), 0.01)),
        (torch.ops.reverie.ssd_step_.default, _ssd_operands(5, 2, 3, 16)),
        (torch.ops.reverie.ssd_step_.default, _ssd_operands(5, 2, 3, 16, layout="split")),
        (torch.ops.reverie.conv_step_.default, _conv_operands(5, 20, 4, torch.float32)),
        (torch.ops.reverie.conv_step_.default, _conv_operands(5, 20, 4, torch.bfloat16)),
        (torch.ops.reverie.onehot_weight_grad.default,
         (torch.randn(6, 5, generator=g), torch.randint(4, (6, 3), generator=g)
          + torch.arange(3) * 4, 12)),
    ]
    for op, args in checks:
        result = opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)
