"""The sequence-backbone contract, checked for every backbone of the zoo.

Per-backbone numerics (slow Python-loop references) live in test_<backbone>.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reverie.sequence import BACKBONES, make_backbone

# Small chunk sizes and contexts make the chunk/cache boundaries show up at short T.
SMALL = {
    "gru": {},
    "transformer": {"n_heads": 2, "context": 64},
    "mamba1": {"d_state": 4},
    "mamba2": {"d_state": 8, "head_dim": 8, "chunk_size": 4},
    "ffm": {"memory_size": 8, "context_size": 4, "chunk_size": 4},
}

HYP = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def build(name: str, d: int = 16, layers: int = 2, seed: int = 0, **over):
    torch.manual_seed(seed)
    kw = dict(SMALL[name])
    kw.update(over)
    m = make_backbone(name, d_model=d, n_layers=layers, **kw)
    return m.eval()


def run_steps(m, x, reset=None, state=None):
    B, T, _ = x.shape
    state = m.initial_state(B) if state is None else state
    ys = []
    for t in range(T):
        if reset is not None:
            state = m.reset_state(state, reset[:, t])
        y, state = m.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def random_reset(B, T, p, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, generator=g) < p


@pytest.mark.parametrize("name", BACKBONES)
@HYP
@given(B=st.integers(1, 3), T=st.integers(1, 23), p=st.sampled_from([0.0, 0.15]),
       seed=st.integers(0, 10_000))
def test_forward_equals_steps(name, B, T, p, seed):
    m = build(name, seed=seed % 7)
    x = torch.randn(B, T, m.d_model, generator=torch.Generator().manual_seed(seed))
    reset = random_reset(B, T, p, seed) if p > 0 else None
    with torch.no_grad():
        y_par, s_par = m(x, None, reset)
        y_seq, s_seq = run_steps(m, x, reset)
    assert (y_par - y_seq).abs().max().item() <= 1e-4
    # the final states agree too: one more step from each gives the same output
    x1 = torch.randn(B, m.d_model)
    with torch.no_grad():
        a, _ = m.step(x1, s_par)
        b, _ = m.step(x1, s_seq)
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", BACKBONES)
@HYP
@given(T=st.integers(2, 30), cut=st.integers(1, 29), p=st.sampled_from([0.0, 0.2]),
       seed=st.integers(0, 10_000))
def test_state_handoff(name, T, cut, p, seed):
    cut = min(cut, T - 1)
    m = build(name, seed=seed % 5)
    B = 2
    x = torch.randn(B, T, m.d_model, generator=torch.Generator().manual_seed(seed))
    reset = random_reset(B, T, p, seed) if p > 0 else None
    with torch.no_grad():
        y_full, _ = m(x, None, reset)
        y1, s = m(x[:, :cut], None, None if reset is None else reset[:, :cut])
        y2, _ = m(x[:, cut:], s, None if reset is None else reset[:, cut:])
    y_split = torch.cat([y1, y2], 1)
    assert (y_full - y_split).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", BACKBONES)
@HYP
@given(T=st.integers(3, 25), t0=st.integers(1, 24), seed=st.integers(0, 10_000))
def test_reset_blocks_information(name, T, t0, seed):
    t0 = min(t0, T - 1)
    m = build(name, seed=seed % 5)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, m.d_model, generator=g)
    x2 = x.clone()
    x2[:, :t0] = torch.randn(2, t0, m.d_model, generator=g) * 3
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[:, t0] = True
    # a non-zero incoming state must be forgotten at the reset too
    with torch.no_grad():
        _, s = m(torch.randn(2, 5, m.d_model, generator=g))
        y_a, _ = m(x, s, reset)
        y_b, _ = m(x2, None, reset)
        y_fresh, _ = m(x[:, t0:])
    assert (y_a[:, t0:] - y_b[:, t0:]).abs().max().item() <= 1e-5
    assert (y_a[:, t0:] - y_fresh).abs().max().item() <= 1e-4
    # and the inputs before the reset did change earlier outputs (the test can fail)
    assert (y_a[:, :t0] - y_b[:, :t0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_every_parameter_long_sequence(name):
    m = build(name, d=16, **({"context": 1024} if name == "transformer" else {})).train()
    x = torch.randn(2, 1024, 16, requires_grad=True)
    reset = torch.zeros(2, 1024, dtype=torch.bool)
    reset[0, 500] = True
    y, _ = m(x, None, reset)
    y.pow(2).mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
    assert torch.isfinite(x.grad).all()
    # the first step's gradient must be influenced by a late output (long memory path)
    assert x.grad[1, 0].abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_num_params_counts_every_parameter(name):
    m = build(name)
    assert m.num_params() == sum(p.numel() for p in m.parameters()) > 0
    bigger = build(name, layers=3)
    assert bigger.num_params() > m.num_params()


@pytest.mark.parametrize("name", BACKBONES)
def test_bad_input_messages(name):
    m = build(name)
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        m(torch.randn(4, 16))
    with pytest.raises(ValueError, match="d_model=16"):
        m(torch.randn(2, 3, 15))
    with pytest.raises(ValueError, match="initial_state"):
        m(torch.randn(2, 3, 16), m.initial_state(3))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        m.step(torch.randn(2, 3, 16), m.initial_state(2))


@pytest.mark.parametrize("name, option", [
    ("mamba2", "head_dim"), ("mamba2", "d_state"), ("mamba1", "d_state"),
    ("transformer", "n_heads"), ("transformer", "context"), ("ffm", "memory_size")])
def test_true_is_not_a_count(name, option):
    """YAML's `true` for a size (`--set ...head_dim=true`) built mamba2 with head_dim=1 and
    the transformer with one head, silently."""
    with pytest.raises(ValueError, match=rf"{option}.* must be a positive (integer|divisor)"):
        make_backbone(name, d_model=32, n_layers=1, **{option: True})
    with pytest.raises(ValueError, match="d_model must be a positive integer"):
        make_backbone(name, d_model=True, n_layers=1)


def test_transformer_dropout_of_the_wrong_type_is_said_as_such():
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 'abc'"):
        make_backbone("transformer", d_model=32, n_layers=1, dropout="abc")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="mamba2") as e:
        make_backbone("mamba3")
    assert "gru, transformer, mamba1, mamba2, ffm" in str(e.value)


@pytest.mark.parametrize("name", BACKBONES)
def test_reset_state_returns_rows_to_initial(name):
    m = build(name)
    with torch.no_grad():
        _, s = m(torch.randn(3, 6, 16))
        s = m.reset_state(s, torch.tensor([True, False, True]))
        y_reset, _ = m.step(torch.ones(3, 16), s)
        y_init, _ = m.step(torch.ones(3, 16), m.initial_state(3))
    assert torch.allclose(y_reset[0], y_init[0], atol=1e-6)
    assert torch.allclose(y_reset[2], y_init[2], atol=1e-6)
    assert not torch.allclose(y_reset[1], y_init[1], atol=1e-4)


def test_the_readme_backbone_snippet_runs_as_written():
    """A user pastes it: it must run as it stands (its x and reset defined)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python")]
    (snippet,) = [b for b in blocks if "make_backbone(" in b]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["y"].shape == (16, 64, 512) and scope["y1"].shape == (16, 512)


@pytest.mark.parametrize("name", BACKBONES)
def test_last_only_is_the_last_position_of_the_full_output(name):
    """forward(last_only=True) (imagination's context warm-up): [B, 1, D], the full output's
    last position to float rounding (Mamba-2 projects that row alone), the same state."""
    m = build(name)
    x = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(1))
    reset = random_reset(3, 9, 0.2, 1)
    with torch.no_grad():
        _, start = m(torch.randn(3, 5, 16))
        y, s = m(x, start, reset)
        y1, s1 = m(x, start, reset, last_only=True)
    assert y1.shape == (3, 1, 16)
    torch.testing.assert_close(y1, y[:, -1:], rtol=1e-6, atol=1e-6)
    for a, b in zip(s, s1):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", BACKBONES)
def test_an_empty_sequence_gives_no_output_and_keeps_the_state(name):
    """T=0 failed with each backbone's own error (nn.GRU's, a division by zero, a conv
    kernel larger than its input); ffm alone returned an empty result."""
    m = build(name)
    with torch.no_grad():
        _, s = m(torch.randn(2, 5, 16))
        y, s2 = m(torch.randn(2, 0, 16), s, torch.zeros(2, 0, dtype=torch.bool))
    assert y.shape == (2, 0, 16)
    for a, b in zip(s, s2):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_bfloat16_model_runs_and_follows_its_float32_twin(name, monkeypatch):
    """`.to(torch.bfloat16)` failed for mamba1 and mamba2 (their float32 dt met bfloat16
    operands in a matmul): they scan in float32 and return bf16 outputs and states."""
    import importlib

    scans = {"mamba1": "selective_scan", "mamba2": "ssd_chunked"}
    seen: list[torch.dtype] = []
    if name in scans:  # the scan itself gets float32 operands only
        module = importlib.import_module(f"reverie.sequence.{name}")
        scan = getattr(module, scans[name])

        def spy(*args, **kwargs):
            seen.extend(a.dtype for a in args if isinstance(a, torch.Tensor))
            return scan(*args, **kwargs)

        monkeypatch.setattr(module, scans[name], spy)
    ref = build(name)
    low = build(name).to(torch.bfloat16)
    with torch.no_grad():  # the twin holds the bf16 model's weights, rounded, in float32
        for p, q in zip(ref.parameters(), low.parameters()):
            p.copy_(q.float())
    x = torch.randn(2, 9, 16)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[1, 4] = True
    y, s = low(x.bfloat16(), None, reset)
    y_ref, _ = ref(x, None, reset)
    assert y.dtype == torch.bfloat16
    assert all(v.dtype == low.initial_state(2)[0][k].dtype for layer in s
               for k, v in layer.items())
    assert (y.float() - y_ref).abs().max().item() < 0.1 * y_ref.abs().max().item()
    y1, _ = low.step(x[:, 0].bfloat16(), low.initial_state(2))
    y1_ref, _ = ref.step(x[:, 0], ref.initial_state(2))
    assert y1.dtype == torch.bfloat16
    assert (y1.float() - y1_ref).abs().max().item() < 0.1 * y1_ref.abs().max().item()
    y.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in low.parameters())
    if name in scans:
        assert seen and set(seen) <= {torch.float32, torch.bool}


@pytest.mark.parametrize("name", BACKBONES)
def test_under_autocast_the_residual_stream_keeps_its_dtype(name):
    """mamba2's fused out-projection ran its residual add under autocast in bf16, so
    every later block of a stack read a bf16 stream; the others keep float32."""
    m = build(name)
    x = torch.randn(2, 7, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        block = m.blocks[0]
        y, _ = block(x, m.initial_state(2)[0], None)
        y1, _ = block.step(x[:, 0], m.initial_state(2)[0])
    assert y.dtype == y1.dtype == torch.float32


@pytest.mark.parametrize("name", BACKBONES)
def test_input_of_another_dtype_is_a_one_line_error(name):
    m = build(name)
    with pytest.raises(ValueError, match=r"torch.float32 parameters but x is torch.float64"):
        m(torch.randn(2, 3, 16, dtype=torch.float64))
