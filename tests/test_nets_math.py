"""Closed-form checks of reverie.nets (symlog, two-hot, categorical KL, unimix, MLP, CNN) and of
reverie.sequence.base.matvec."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.nets.cnn import ConvDecoder, ConvEncoder
from reverie.nets.math import (
    categorical_entropy,
    categorical_kl,
    symexp,
    symlog,
    symlog_bins,
    two_hot,
    two_hot_loss,
    two_hot_mean,
    unimix,
)
from reverie.nets.mlp import MLP


def test_symlog_closed_form_and_inverse():
    e = math.e
    x = torch.tensor([0.0, e - 1, -(e**2 - 1), 1e-6])
    assert torch.allclose(symlog(x), torch.tensor([0.0, 1.0, -2.0, 1e-6]), atol=1e-6)
    xs = torch.cat([torch.linspace(-1e4, 1e4, 1001), torch.linspace(-3, 3, 101)]).double()
    assert torch.allclose(symexp(symlog(xs)), xs, rtol=1e-10, atol=1e-10)
    assert torch.allclose(symlog(symexp(xs.clamp(-20, 20))), xs.clamp(-20, 20), atol=1e-10)


def test_bins_are_exactly_symmetric_and_uniform():
    b = symlog_bins(255)
    assert b.shape == (255,)
    assert b[127].item() == 0.0 and b[0].item() == -20.0 and b[-1].item() == 20.0
    assert torch.equal(b, -b.flip(0))
    assert torch.allclose(b.diff(), torch.full((254,), 40 / 254), atol=1e-5)
    with pytest.raises(ValueError, match="255"):
        symlog_bins(1)


def test_two_hot_on_a_bin_and_between_bins():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    on = two_hot(torch.tensor([1.0, -2.0, 3.0]), bins)
    assert torch.equal(on, torch.eye(5)[[3, 0, 4]])
    between = two_hot(torch.tensor([1.5, -0.25]), bins)
    # 1.5 lies a quarter of the way from 1 to 3; -0.25 three quarters from -1 to 0
    expect = torch.tensor([[0, 0, 0, 0.75, 0.25], [0, 0.25, 0.75, 0, 0]])
    assert torch.allclose(between, expect, atol=1e-7)
    clipped = two_hot(torch.tensor([100.0, -100.0]), bins)
    assert torch.equal(clipped, torch.eye(5)[[4, 0]])


def test_two_hot_decode_of_encode_is_identity():
    bins = symlog_bins(255)
    x = torch.linspace(-19.9, 19.9, 777)
    w = two_hot(x, bins)
    assert torch.allclose(w.sum(-1), torch.ones(777), atol=1e-6)
    assert torch.allclose((w * bins).sum(-1), x, atol=1e-5)
    # softmax of log-weights gives back the weights, so the expected value is x again
    assert torch.allclose(two_hot_mean(torch.log(w), bins), x, atol=1e-5)


def test_two_hot_mean_of_uniform_is_exactly_zero():
    bins = symlog_bins(255)
    assert two_hot_mean(torch.zeros(3, 255), bins).abs().max().item() == 0.0
    # and a skewed distribution decodes to its hand-computed mean
    logits = torch.full((255,), -1e9)
    logits[[10, 200]] = 0.0
    assert torch.allclose(two_hot_mean(logits, bins), (bins[10] + bins[200]) / 2, atol=1e-5)


def test_two_hot_loss_hand_computed():
    bins = torch.tensor([0.0, 1.0, 2.0])
    logits = torch.tensor([1.0, 2.0, 0.5])
    logp = torch.log_softmax(logits, -1)
    # target 1.2 -> 0.8 on bin 1, 0.2 on bin 2
    expect = -(0.8 * logp[1] + 0.2 * logp[2])
    assert torch.allclose(two_hot_loss(logits, torch.tensor(1.2), bins), expect, atol=1e-6)
    # uniform logits: cross-entropy is log(n) whatever the target
    out = two_hot_loss(torch.zeros(4, 255), torch.tensor([0.0, 3.3, -7.0, 50.0]), symlog_bins(255))
    assert torch.allclose(out, torch.full((4,), math.log(255)), atol=1e-5)


def test_categorical_kl_zero_and_hand_computed():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, 5, generator=g)
    assert categorical_kl(p, p).abs().max().item() < 1e-6
    # two independent binary variables: KL sums over them
    p = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    q = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(categorical_kl(p, q).item() - (kl0 + kl1)) < 1e-6
    # unnormalised logits are normalised first
    assert abs(categorical_kl(p + 3.0, q - 1.0).item() - (kl0 + kl1)) < 1e-6
    assert categorical_kl(q, p).item() != pytest.approx(kl0 + kl1)


def test_entropy_of_uniform():
    assert abs(categorical_entropy(torch.zeros(3, 32, 16))[0].item() - 32 * math.log(16)) < 1e-3


def test_unimix_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1e4, -1e4, -1e4, -1e4]])
    out = unimix(logits, 0.01)
    expect = 0.99 * torch.softmax(logits, -1) + 0.01 / 4
    assert torch.allclose(out.exp(), expect, atol=1e-7)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2), atol=1e-6)
    assert out.exp().min().item() >= 0.01 / 4 - 1e-9
    assert torch.allclose(unimix(logits, 0.0).exp(), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="0.01"):
        unimix(logits, 1.5)


def test_mlp_zero_init_and_shapes():
    torch.manual_seed(0)
    head = MLP(7, 5, hidden=16, layers=2, zero_init=True)
    assert torch.equal(head(torch.randn(3, 4, 7)), torch.zeros(3, 4, 5))
    trunk = MLP(7, None, hidden=16, layers=2)
    y = trunk(torch.randn(3, 7))
    assert y.shape == (3, 16) and trunk.out_dim == 16
    # LayerNorm then SiLU: each hidden row is normalised before the activation
    assert y.abs().sum() > 0
    with pytest.raises(ValueError, match="layers"):
        MLP(7, None, hidden=16, layers=0)


def test_cnn_shapes_and_pixel_convention():
    torch.manual_seed(0)
    enc = ConvEncoder((64, 64, 3), depth=4, embed_channels=8)
    dec = ConvDecoder(10, (64, 64, 3), depth=4, embed_channels=8)
    img = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    e = enc(img)
    assert e.shape == (2, 3, 8 * 4 * 4) == (2, 3, enc.out_dim)
    assert dec(torch.randn(2, 3, 10)).shape == (2, 3, 64, 64, 3)
    # input is x/255 - 0.5: a uint8 frame and the same frame as float give the same embedding
    assert torch.allclose(enc(img.float()), e, atol=1e-6)
    # a single flipped pixel changes the embedding (the encoder looks at every pixel region)
    img2 = img.clone()
    img2[0, 0, 63, 63, 2] = 255 - img2[0, 0, 63, 63, 2]
    assert (enc(img2)[0, 0] - e[0, 0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="64x64"):
        ConvEncoder((60, 60, 3))


def test_cnn_chunked_encoding_and_channels_last_decoder_match_the_plain_layers(monkeypatch):
    """Without autograd the encoder runs NO_GRAD_CHUNK images at a time; with autograd in one
    pass; both equal the layers applied to the whole NCHW batch. The decoder's channels-last
    maps give the NCHW decoder's images and gradients, and its [..., H, W, C] output needs no
    copy."""
    from reverie.nets import cnn

    torch.manual_seed(0)
    enc = ConvEncoder((32, 16, 3), depth=4, embed_channels=8)
    img = torch.randint(0, 256, (2, 5, 32, 16, 3), dtype=torch.uint8)
    x = img.reshape(10, 32, 16, 3).permute(0, 3, 1, 2).contiguous().float() / 255.0 - 0.5
    with torch.no_grad():
        want = enc.net(x).reshape(2, 5, -1)
    calls = []
    embed = enc._embed
    monkeypatch.setattr(enc, "_embed", lambda part: calls.append(len(part)) or embed(part))
    monkeypatch.setattr(cnn, "NO_GRAD_CHUNK", 4)
    with torch.no_grad():
        chunked = enc(img)
    assert calls == [4, 4, 2]
    assert torch.allclose(chunked, want, atol=1e-5)
    calls.clear()
    with_grad = enc(img)
    assert calls == [10] and with_grad.requires_grad
    assert torch.allclose(with_grad, want, atol=1e-5)

    dec = ConvDecoder(6, (32, 16, 3), depth=4, embed_channels=8)
    z = torch.randn(3, 6)
    out = dec(z)
    assert out.shape == (3, 32, 16, 3) and out.is_contiguous()
    out.square().sum().backward()
    grads = [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad()
    plain = dec.net(dec.stem(z).reshape(3, 8, 2, 1).contiguous()).permute(0, 2, 3, 1)
    assert torch.allclose(out, plain, atol=1e-5)
    plain.square().sum().backward()
    for g, p in zip(grads, dec.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conf", [dict(stride=2, padding=1), dict(
    stride=(2, 1), padding=(2, 1), output_padding=(1, 0), groups=2, dilation=(3, 2))])
def test_transposed_conv_with_summed_bias_gradient_equals_nn_conv_transpose(conf):
    """BiasSumConvTranspose2d is nn.ConvTranspose2d (same parameters, state dict, output and
    gradients) with its bias gradient summed from the output's gradient: float64 to
    rounding, float32 (channels-last and NCHW gradients) to float32 sums' order, and under
    bf16 autocast as the plain module there (bf16 output, float32 parameter gradients)."""
    from torch import nn

    from reverie.nets import cnn

    def run(module, x, dtype, bf16=False, channels_last_grad=True):
        x = x.to(dtype).requires_grad_()
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = module(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
        layout = torch.channels_last if channels_last_grad else torch.contiguous_format
        y.backward(g.contiguous(memory_format=layout))
        return [y.detach(), x.grad, module.weight.grad, module.bias.grad]

    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(6, 4, 4, **conf)
    summed = cnn.BiasSumConvTranspose2d(6, 4, 4, **conf)
    summed.load_state_dict(plain.state_dict())
    assert list(summed.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 6, 7, 9).contiguous(memory_format=torch.channels_last)
    for dtype, bf16, rtol in ((torch.float64, False, 1e-12), (torch.float32, False, 1e-5),
                              (torch.float32, True, 1e-2)):
        for layout in (True, False):
            want = run(plain.to(dtype), x, dtype, bf16, layout)
            got = run(summed.to(dtype), x, dtype, bf16, layout)
            for w, g in zip(want, got):
                assert g.dtype == w.dtype and g.shape == w.shape
                assert torch.allclose(g, w, rtol=rtol, atol=rtol * w.abs().max())
    assert got[0].dtype == torch.bfloat16 and got[3].dtype == torch.float32
    # an input without gradient and a frozen bias: only the weight's gradient is taken
    for module in (plain, summed):
        module.float().bias.requires_grad_(False)
        module.zero_grad(set_to_none=True)
        module(x).square().sum().backward()
    assert summed.bias.grad is None
    assert torch.allclose(summed.weight.grad, plain.weight.grad, rtol=1e-5)
    # the bias gradient is the output gradient's sum over N, H, W (closed form)
    g = torch.randn(3, 5, 4, 6).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(cnn.channel_sums(g), g.double().sum((0, 2, 3)).float(), atol=1e-5)
    assert torch.allclose(cnn.channel_sums(g.contiguous()), g.sum((0, 2, 3)), atol=1e-5)
    # a bfloat16 gradient: float32 sums of its values, not rounded to bfloat16
    gb = (torch.randn(4, 3, 8, 8) * 10).bfloat16().contiguous(memory_format=torch.channels_last)
    sums = cnn.channel_sums(gb)
    assert sums.dtype == torch.float32
    assert torch.allclose(sums.double(), gb.double().sum((0, 2, 3)), rtol=1e-6, atol=1e-4)
    # without autograd (acting, evaluation) the plain module runs
    calls = []
    apply = cnn._Conv.apply
    cnn._Conv.apply = lambda *a: calls.append(1) or apply(*a)
    try:
        with torch.no_grad():
            summed.float()(x)
        assert not calls
        summed(x)
        assert calls == [1]
    finally:
        cnn._Conv.apply = apply


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("geometry", [  # (kh, kw), (sh, sw), (ph, pw), (H, W) of the big map
    ((4, 4), (2, 2), (1, 1), (8, 8)), ((3, 3), (1, 1), (1, 1), (4, 4)),
    ((4, 4), (2, 2), (2, 2), (6, 6)), ((2, 2), (2, 2), (0, 0), (8, 8)),
    ((5, 5), (3, 3), (2, 2), (7, 7)),
    ((3, 3), (2, 2), (1, 1), (8, 8)),  # the padded map's last row and column unread
    ((3, 2), (2, 1), (1, 0), (8, 6)),  # each axis its own kernel, stride and padding
    ((4, 2), (2, 2), (1, 0), (7, 6))])
def test_matmul_weight_grad_is_the_conv_weight_gradient(transposed, geometry):
    """`matmul_weight_grad` (im2col + one matmul) against ATen's convolution_backward in
    float64, for convs and transposed convs of several kernels, strides and paddings, per
    axis (channels-last and NCHW maps), and the rules of `matmul_weight_grad_serves`."""
    import torch.nn.functional as F

    from reverie.nets import cnn

    k, st, pad, (H, W) = geometry
    C_big, C_small = 5, 7
    h, w = ((size + 2 * pad[i] - k[i]) // st[i] + 1 for i, size in enumerate((H, W)))
    g = torch.Generator().manual_seed(sum(sum(pair) for pair in geometry))
    weight = torch.randn(C_small, C_big, *k, generator=g, dtype=torch.float64)
    small = torch.randn(3, C_small, h, w, generator=g, dtype=torch.float64)
    if transposed:  # a map from `small` to `big`; big = its output gradient
        out = F.conv_transpose2d(small, weight, None, st, pad)
        if out.shape[-2:] != (H, W):
            pytest.skip("no transposed conv gives this map without output padding")
        big = torch.randn(out.shape, generator=g, dtype=torch.float64)
        want = torch.ops.aten.convolution_backward(big, small, weight, None, st, pad, [1, 1],
                                                   True, [0, 0], 1, [False, True, False])[1]
    else:  # a map from `big` to `small`; small = its output gradient
        big = torch.randn(3, C_big, H, W, generator=g, dtype=torch.float64)
        want = torch.ops.aten.convolution_backward(small, big, weight, None, st, pad, [1, 1],
                                                   False, [0, 0], 1, [False, True, False])[1]
    for layout in (torch.channels_last, torch.contiguous_format):
        got = cnn.matmul_weight_grad(big.contiguous(memory_format=layout),
                                     small.contiguous(memory_format=layout), k, st, pad)
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # serves: bf16 channels-last maps of the conv's geometry, the small one at most 16 pixels
    cl = torch.channels_last

    def serves(big, small, **kw):
        conf = dict(dilation=(1, 1), groups=1) | kw
        return cnn.matmul_weight_grad_serves(big, small, weight, st, pad, **conf)

    bb, sb = (t.bfloat16().contiguous(memory_format=cl) for t in (big, small))
    assert serves(bb, sb) == (h * w <= cnn.MATMUL_WGRAD_PIXELS)
    if h * w <= cnn.MATMUL_WGRAD_PIXELS:
        assert not serves(bb.float(), sb.float())  # float32: oneDNN's was faster
        assert not serves(bb.contiguous(), sb)
        assert not serves(bb, sb.contiguous()) or h * w == 1
        assert not serves(bb, sb, groups=7)
        assert not serves(bb, sb, dilation=(2, 2))
        assert not serves(bb, sb, output_padding=(1, 1))
        assert not serves(bb[:2], sb)
        # a big map of another size (channels-last too): not this conv's geometry, where its
        # size changes the small map's
        for cut in (bb[:, :, st[0]:], bb[:, :, :, st[1]:]):
            cut = cut.contiguous(memory_format=cl)
            assert not serves(cut, sb)
        grown = torch.zeros(3, C_big, H + st[0], W, dtype=torch.bfloat16).contiguous(
            memory_format=cl)
        assert not serves(grown, sb)


def test_matmul_weight_grad_sums_in_float32_over_many_rows():
    """In bf16 the matmul form sums its N·h·w products in float32 (32,768 rows here, as at
    atari100k's 2,048 frames onto 4x4 maps), then rounds once: each value within bf16's
    rounding of the float64 sum; sums kept in bf16 would be off by far more."""
    from reverie.nets import cnn

    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    big = torch.randn(2048, 4, 8, 8, generator=g).contiguous(memory_format=cl)
    small = torch.randn(2048, 6, 4, 4, generator=g).contiguous(memory_format=cl)
    want = cnn.matmul_weight_grad(big.double(), small.double(), (4, 4), (2, 2), (1, 1))
    got = cnn.matmul_weight_grad(big.bfloat16(), small.bfloat16(), (4, 4), (2, 2), (1, 1))
    # the float64 sum of the bf16-rounded inputs: what float32 sums then round
    exact = cnn.matmul_weight_grad(big.bfloat16().double(), small.bfloat16().double(), (4, 4),
                                   (2, 2), (1, 1))
    assert got.dtype == torch.bfloat16
    err = (got.double() - exact).abs()
    assert bool((err <= 2 ** -8 * exact.abs() + 1e-3 * want.abs().mean()).all())


def test_the_conv_nets_take_matmul_weight_gradients_onto_small_maps_in_bf16_only():
    """With `kernels` on, under bf16 autocast, the encoder's last stride-2 conv (onto 4x4 maps)
    and the decoder's first transposed conv (from them) take their weight gradients from
    `matmul_weight_grad`, and the nets' outputs and every gradient agree with the plain
    modules' to bf16 rounding; in float32, with `kernels` off and without autograd the
    plain modules run."""
    from reverie.nets import cnn

    torch.manual_seed(0)
    enc, dec = cnn.ConvEncoder((64, 64, 3), 8, 16), cnn.ConvDecoder(20, (64, 64, 3), 8, 16)
    image = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    z = torch.randn(3, 20)
    calls = []
    real = cnn.matmul_weight_grad

    def counted(big, small, *a):
        calls.append((tuple(big.shape), tuple(small.shape)))
        return real(big, small, *a)

    def run(kernels: bool, bf16: bool):
        grads = []
        for net, inp in ((enc, image), (dec, z)):
            net.zero_grad()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                # run_layers without the image kernels (they may not be built here)
                if net is enc:
                    x = inp.permute(0, 3, 1, 2).float().div(255).sub(0.5)
                    out = cnn.run_layers(net.net, x.contiguous(memory_format=torch.channels_last),
                                         kernels)
                else:
                    x = net.stem(inp).reshape(-1, 16, 4, 4)
                    out = cnn.run_layers(net.net, x.contiguous(memory_format=torch.channels_last),
                                         kernels)
            out.float().square().mean().backward()
            grads += [out.detach().float()] + [q.grad.clone() for q in net.parameters()]
        return grads

    cnn.matmul_weight_grad = counted
    try:
        want = run(False, True)
        assert not calls
        got = run(True, True)
        assert calls == [((3, 32, 8, 8), (3, 64, 4, 4)), ((3, 32, 8, 8), (3, 64, 4, 4))]
        for w, g in zip(want, got):
            assert torch.allclose(g, w, rtol=0.02, atol=0.02 * w.abs().max())
        calls.clear()
        run(True, False)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            enc(image), dec(z)
        assert not calls
    finally:
        cnn.matmul_weight_grad = real


def test_encoder_and_reconstruction_loss_leave_float_images_as_they_are():
    """The pixel scaling runs in place on a copy: float images in [0, 255] (which the encoder
    accepts) come back unchanged, and give what uint8 images of the same values give."""
    from reverie.world.latent import WorldModel

    torch.manual_seed(0)
    enc = ConvEncoder((32, 16, 3), depth=4, embed_channels=8)
    img = torch.randint(0, 256, (3, 32, 16, 3), dtype=torch.uint8)
    as_float = img.float()
    with torch.no_grad():
        assert torch.equal(enc(as_float), enc(img))
    assert torch.equal(as_float, img.float())
    world = object.__new__(WorldModel)  # only what _recon_loss reads
    world.image_keys, world.vector_keys = ["image"], []
    world._decode_raw = lambda z: {"image": torch.zeros(*z.shape[:-1], 32, 16, 3)}
    z = torch.zeros(1, 3, 4)
    loss = world._recon_loss(z, {"image": as_float[None]})
    assert torch.equal(as_float, img.float())
    want = (img.double() / 255 - 0.5).square().sum((-3, -2, -1))[None]
    assert torch.allclose(loss.double(), want, rtol=1e-6)


def test_image_norm_equals_group_norm_with_one_group(monkeypatch):
    """ImageNorm is nn.GroupNorm(1, C) (same state dict): the plain module in float32 and
    where C is a multiple of 16; for a channels-last bf16 map of C = 24 (atari100k's) the
    layer norm over each image, equal to the group norm in float64 and to bf16 rounding
    under autocast (output, input and parameter gradients)."""
    from torch import nn

    from reverie.nets import cnn

    torch.manual_seed(0)
    plain = nn.GroupNorm(1, 24)
    norm = cnn.ImageNorm(24)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.normal_()
    norm.load_state_dict(plain.state_dict())
    assert list(norm.state_dict()) == list(plain.state_dict())
    x = (torch.randn(3, 24, 8, 4) * 2 + 1).contiguous(memory_format=torch.channels_last)

    def run(module, x, bf16=False):
        x = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = module(x.to(torch.bfloat16) if bf16 else x)
        y.float().mul(torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.detach().float(), x.grad, module.weight.grad, module.bias.grad]

    calls = []
    layer_norm = torch.nn.functional.layer_norm
    monkeypatch.setattr(torch.nn.functional, "layer_norm",
                        lambda *a, **k: calls.append(1) or layer_norm(*a, **k))
    for w, g in zip(run(plain, x), run(norm, x)):  # float32: the plain module
        assert torch.equal(w, g)
    assert not calls
    for w, g in zip(run(plain, x, True), run(norm, x, True)):
        assert torch.allclose(g, w, rtol=2e-2, atol=2e-2 * w.abs().max())
    assert calls == [1]
    # the layer-norm form is the group norm (float64)
    x64 = x.double()
    flat = x64.permute(0, 2, 3, 1).reshape(3, -1)
    y = layer_norm(flat, flat.shape[1:], plain.weight.double().repeat(32),
                   plain.bias.double().repeat(32), plain.eps)
    want = torch.nn.functional.group_norm(x64, 1, plain.weight.double(), plain.bias.double(),
                                          plain.eps)
    assert torch.allclose(y.view(3, 8, 4, 24).permute(0, 3, 1, 2), want, atol=1e-12)
    calls.clear()
    x32 = torch.cat([x, x[:, :8]], 1).to(torch.bfloat16)  # C = 32: ATen's group norm
    cnn.ImageNorm(32).to(torch.bfloat16)(x32.contiguous(memory_format=torch.channels_last))
    norm.to(torch.bfloat16)(x.to(torch.bfloat16).contiguous())  # NCHW: ATen's group norm
    assert not calls


def test_matvec_equals_the_column_matmul_and_its_gradients():
    """reverie.sequence.base.matvec (the Mamba steps' state readout and the scan backward's
    products) against m @ v[..., None] on batched shapes, values and gradients."""
    from reverie.sequence.base import matvec

    g = torch.Generator().manual_seed(0)
    for m_shape in [(5, 7), (3, 6, 4), (2, 3, 5, 8)]:
        m = torch.randn(m_shape, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn((*m_shape[:-2], m_shape[-1]), generator=g, dtype=torch.float64,
                        requires_grad=True)
        out = matvec(m, v)
        ref = (m @ v.unsqueeze(-1)).squeeze(-1)
        assert out.shape == m_shape[:-1]
        torch.testing.assert_close(out, ref)
        w = torch.randn(out.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((out * w).sum(), (m, v))
        want = torch.autograd.grad((ref * w).sum(), (m, v))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    # a closed form: [[1, 2], [3, 4]] @ [1, 1] = [3, 7]
    assert matvec(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2)).tolist() == [3.0, 7.0]
    # under bf16 autocast in m's float32 (autocast copied m to bf16 first, and rounded it),
    # also with a bf16 v (a layer's output there)
    m = torch.randn(4, 6, 5, generator=g)
    v = torch.randn(4, 5, generator=g)
    with torch.autocast("cpu", torch.bfloat16):
        out, out_bf16_v = matvec(m, v), matvec(m, v.bfloat16())
    assert out.dtype == out_bf16_v.dtype == torch.float32
    assert torch.equal(out, matvec(m, v))
    assert torch.equal(out_bf16_v, matvec(m, v.bfloat16().float()))
