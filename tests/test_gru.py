"""GRU backbone numerics: the fused and the step paths are the textbook GRU."""

from __future__ import annotations

import pytest
import torch

from reverie.sequence import make_backbone
from reverie.sequence.gru import pack_segments


def gru_reference(block, x, h):
    """Slow loop of the GRU equations (Cho et al. 2014, PyTorch gate order r, z, n).

    x: [B, T, D] block input, h: [B, D] -> block output x + h_t: [B, T, D] and final h.
    """
    g = block.gru
    w_ir, w_iz, w_in = g.weight_ih_l0.chunk(3)
    w_hr, w_hz, w_hn = g.weight_hh_l0.chunk(3)
    b_ir, b_iz, b_in = g.bias_ih_l0.chunk(3)
    b_hr, b_hz, b_hn = g.bias_hh_l0.chunk(3)
    u = block.norm(x)
    ys = []
    for t in range(x.shape[1]):
        ut = u[:, t]
        r = torch.sigmoid(ut @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(ut @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        n = torch.tanh(ut @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
        h = (1 - z) * n + z * h
        ys.append(x[:, t] + h)
    return torch.stack(ys, 1), h


def test_step_and_forward_equal_textbook_gru_on_same_weights():
    torch.manual_seed(0)
    m = make_backbone("gru", d_model=12, n_layers=1).eval()
    block = m.blocks[0]
    x = torch.randn(3, 9, 12)
    h0 = torch.randn(3, 12) * 0.5  # a non-zero carried state
    with torch.no_grad():
        y_ref, h_ref = gru_reference(block, x, h0)
        # the step path
        s, ys = {"h": h0}, []
        for t in range(9):
            y, s = block.step(x[:, t], s)
            ys.append(y)
        y_step = torch.stack(ys, 1)
        # the fused path
        y_par, s_par = block(x, {"h": h0}, None)
        # and torch.nn.GRU itself on the same weights
        out_nn, _ = block.gru(block.norm(x), h0.unsqueeze(0))
    assert (y_step - y_ref).abs().max() < 1e-5
    assert (y_par - y_ref).abs().max() < 1e-5
    assert (s["h"] - h_ref).abs().max() < 1e-5
    assert (s_par["h"] - h_ref).abs().max() < 1e-5
    assert (x + out_nn - y_ref).abs().max() < 1e-5
    # the carried state matters (the comparison above can fail)
    with torch.no_grad():
        y_zero, _ = gru_reference(block, x, torch.zeros(3, 12))
    assert (y_zero - y_ref).abs().max() > 1e-2


def test_resets_equal_separate_runs_per_segment():
    torch.manual_seed(1)
    m = make_backbone("gru", d_model=8, n_layers=2).eval()
    B, T = 3, 17
    x = torch.randn(B, T, 8)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 5] = reset[0, 6] = reset[0, 12] = True  # includes a length-1 segment
    reset[1, 0] = reset[1, 16] = True  # reset at the first and the last step
    # row 2: no reset, continues its carried state
    with torch.no_grad():
        _, s0 = m(torch.randn(B, 4, 8))  # non-zero incoming state
        y, s = m(x, s0, reset)
        for b in range(B):
            bounds = [0] + [t for t in range(1, T) if reset[b, t]] + [T]
            for i, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
                carried = i == 0 and not reset[b, 0]
                state = tuple({"h": ls["h"][b : b + 1]} for ls in s0) if carried else None
                y_seg, s_seg = m(x[b : b + 1, a:e], state)
                assert (y[b, a:e] - y_seg[0]).abs().max() < 1e-5, (b, a, e)
            for ls, lseg in zip(s, s_seg):
                assert (ls["h"][b] - lseg["h"][0]).abs().max() < 1e-5
        # the reset does cut information: without it row 0 differs after step 5
        y_nores, _ = m(x, s0, None)
    assert (y_nores[0, 5:] - y[0, 5:]).abs().max() > 1e-3
    assert (y_nores[2] - y[2]).abs().max() < 1e-6


def test_pack_segments_hand_computed():
    reset = torch.tensor([[False, False, True, False], [True, True, False, False]])
    seg, pos, n, length = pack_segments(reset)
    assert seg.tolist() == [[0, 0, 1, 1], [2, 3, 3, 3]]
    assert pos.tolist() == [[0, 1, 0, 1], [0, 0, 1, 2]]
    assert (n, length) == (4, 3)


def test_gradients_through_reset_path_are_finite_and_cut_at_reset():
    torch.manual_seed(2)
    m = make_backbone("gru", d_model=8, n_layers=2)
    x = torch.randn(2, 20, 8, requires_grad=True)
    reset = torch.zeros(2, 20, dtype=torch.bool)
    reset[0, 10] = True
    y, _ = m(x, None, reset)
    y[0, 10:].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, :10].abs().max() == 0  # nothing after the reset depends on before
    assert x.grad[0, 10:].abs().max() > 0


def test_rejects_options():
    with pytest.raises(ValueError, match="no options"):
        make_backbone("gru", d_model=8, n_layers=1, n_heads=2)
