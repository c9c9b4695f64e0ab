"""The conv nets' kernels (reverie.nets.image_kernel, run.compile=on): the encoder's pixel
scaling against torch's ops bit for bit; GroupNorm(1, C) + SiLU over channels-last maps,
forward and backward, against the float64 composition of torch's ops; the per-channel sums
of the decoder's bias gradients against float64 sums; their use by the conv encoder and
decoder and by an image agent's compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_isa import built_for, torch_threads
from reverie.nets import cnn, image_kernel
from reverie.nets.cnn import ConvDecoder, ConvEncoder, ImageNorm, run_layers


@pytest.fixture(scope="module")
def kernels():
    """Built (or loaded from the inductor cache) once; a build that fails here fails the
    test (CI has the C++ compiler torch.compile needs)."""
    image_kernel.load()
    return image_kernel


@pytest.fixture(params=["machine", "avx2"])
def isa_kernels(request, kernels, monkeypatch):
    """image_kernel with its kernels built for the machine's vector ISA, then for AVX2 (8
    lanes: other per-channel patterns and tails than AVX-512's 16)."""
    if request.param == "avx2":
        names = ("_pixels", "_forward", "_backward", "_sums")
        built = [built_for(256, getattr(kernels, n).argtypes, getattr(kernels, n).source)
                 for n in names]
        for name, kernel in zip(names, built):
            monkeypatch.setattr(kernels, name, kernel)
        monkeypatch.setattr(kernels, "_KERNELS", tuple(built))
    return kernels


@pytest.mark.parametrize("shape", [(3, 16, 16, 3), (5, 7, 3), (40000,), (0, 4, 4, 3)])
def test_pixels_are_torch_s_scaling_bit_for_bit(isa_kernels, shape):
    """x / 255 − 0.5 in float32, and that rounded to bfloat16 as torch's cast rounds it (what
    autocast feeds the first conv): the same bits, for any count of values (a vector tail,
    several blocks, none); with the machine's vector ISA and AVX2."""
    kernels = isa_kernels
    g = torch.Generator().manual_seed(len(shape))
    image = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    ref = image.to(torch.float32, copy=True).div_(255.0).sub_(0.5)
    for dtype in (torch.float32, torch.bfloat16):
        out = kernels.pixels(image, dtype)
        assert out.dtype == dtype and out.shape == image.shape
        assert torch.equal(out, ref.to(dtype))
    assert not kernels.pixels_serve(image.float())
    if image.dim() > 1 and image.shape[0] > 1:
        assert not kernels.pixels_serve(image.transpose(0, 1))
    with pytest.raises(ValueError, match="uint8"):
        kernels.pixels(image.float(), torch.float32)


def _map(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3 + 1.5  # the mean and scale an image may have
    return x.to(dtype).contiguous(memory_format=torch.channels_last), g


def _reference(x, weight, bias, eps, grad):
    """silu(group_norm(x, 1)) in float64 and its gradients (x, weight, bias)."""
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y = F.silu(F.group_norm(x64, 1, w64, b64, eps))
    y.backward(grad.double())
    return y.detach(), x64.grad, w64.grad, b64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,threads", [
    ((6, 24, 8, 8), 2),   # 24 channels: the affine's pattern spans several vectors
    ((5, 48, 4, 4), 3),   # more threads than share the images evenly
    ((3, 7, 3, 3), 2),    # H·W not a multiple of the vector width: the scalar tail
    ((3, 24, 3, 3), 2),   # whole patterns and then a scalar tail
    ((2, 7, 4, 5), 3),    # the same with an odd channel count
    ((1, 64, 1, 1), 4),   # one image, fewer than the threads
    ((0, 8, 4, 4), 2),    # no image
])
def test_the_kernels_are_groupnorm_then_silu_and_their_gradients(isa_kernels, dtype, shape,
                                                                  threads):
    """Values and all three gradients against float64: float32 to float32 rounding;
    bfloat16 to its own rounding of the output (the sums run in float32). The output keeps
    the map's dtype and channels-last layout; the weights' gradients are float32. With the
    machine's vector ISA and AVX2."""
    kernels = isa_kernels
    x, g = _map(shape, dtype, sum(shape))
    weight = torch.randn(shape[1], generator=g).requires_grad_()
    bias = torch.randn(shape[1], generator=g).requires_grad_()
    grad = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with torch_threads(threads):
        y = kernels.norm_silu(x, weight, bias, 1e-5)
        y.backward(grad)
    ref, gx, gw, gb = _reference(x, weight, bias, 1e-5, grad)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.dtype == dtype and weight.grad.dtype == torch.float32
    tol = (dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32
           else dict(rtol=1e-2, atol=1e-2))
    torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(x.grad.double(), gx, **tol)
    # the weights' gradients are float32 sums in either dtype (the reference reads the
    # same bfloat16 values): float32 rounding only
    scale = max(1.0, float(gw.abs().max()), float(gb.abs().max()))
    assert float((weight.grad.double() - gw).abs().max()) <= 1e-4 * scale
    assert float((bias.grad.double() - gb).abs().max()) <= 1e-4 * scale


def test_a_gradient_in_another_layout_and_dtype_is_read_as_the_map(kernels):
    """A float32 NCHW-contiguous gradient for a bfloat16 channels-last map (what the
    encoder's final reshape sends back): the same result as that gradient cast and laid
    out as the map."""
    x, g = _map((3, 24, 4, 4), torch.bfloat16, 9)
    weight, bias = torch.randn(24, generator=g), torch.randn(24, generator=g)
    grad = torch.randn(x.shape, generator=g)  # float32, NCHW-contiguous
    assert not grad.is_contiguous(memory_format=torch.channels_last)
    grads = []
    for gr in (grad, grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)):
        xi = x.clone().requires_grad_()
        kernels.norm_silu(xi, weight, bias, 1e-5).backward(gr)
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
    with pytest.raises(ValueError, match="24 channels"):
        kernels.norm_silu(x, weight[:8], bias, 1e-5)


def test_the_kernels_give_the_same_bits_on_any_thread_count_but_the_weight_sums(kernels):
    """Each image is one thread's work: its output and input gradient are the same bits on
    1, 2 or 3 threads; the weights' gradients, summed per thread and then over threads in
    order, are the same bits run after run on one thread count."""
    x, g = _map((7, 24, 8, 8), torch.float32, 0)
    weight, bias = torch.randn(24, generator=g), torch.randn(24, generator=g)
    grad = torch.randn(x.shape, generator=g).contiguous(memory_format=torch.channels_last)
    out = {}
    for threads in (1, 2, 3, 2):
        with torch_threads(threads):
            xi, w, b = (t.clone().requires_grad_() for t in (x, weight, bias))
            y = kernels.norm_silu(xi, w, b, 1e-5)
            y.backward(grad)
        out.setdefault(threads, []).append((y, xi.grad, w.grad, b.grad))
    for threads, runs in out.items():
        for a, b in zip(runs[0][:2], out[1][0][:2]):
            assert torch.equal(a, b), threads
    for a, b in zip(*out[2]):
        assert torch.equal(a, b)


def test_the_kernels_refuse_what_they_cannot_read(kernels):
    x, _ = _map((2, 8, 4, 4), torch.float32, 1)
    w, b = torch.ones(8), torch.zeros(8)
    for bad in (x.contiguous(), x.half(), x[0], x.double()):
        assert not kernels.serves(bad)
        with pytest.raises(ValueError, match="channels-last"):
            kernels.norm_silu(bad, w, b, 1e-5)
    assert kernels.serves(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [
    (7, 24, 8, 8),   # the decoder's 24 channels: a pattern of several vectors
    (3, 3, 16, 16),  # its 3 output channels
    (5, 7, 3, 5),    # fewer values per image than one pattern: the scalar tail only
    (4, 24, 3, 3),   # whole patterns, then a tail
    (1, 48, 2, 2),   # one image
    (0, 3, 4, 4),    # none
])
def test_channel_sums_are_each_channel_s_sum_on_any_thread_count(isa_kernels, dtype, shape):
    """Each channel's sum over N, H and W in float32 against float64 sums of the same values,
    the same bits on 1, 2 or 3 threads (each image is one thread's work, the images then
    summed in order); with the machine's vector ISA and AVX2."""
    kernels = isa_kernels
    g, _ = _map(shape, dtype, 5)
    ref = g.double().sum((0, 2, 3))
    out = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            out.append(kernels.channel_sums(g))
    assert out[0].dtype == torch.float32 and out[0].shape == (shape[1],)
    torch.testing.assert_close(out[0].double(), ref, rtol=1e-6, atol=1e-5)
    assert all(torch.equal(o, out[0]) for o in out)
    refused = [g.half(), g.double()]
    if not g.contiguous().is_contiguous(memory_format=torch.channels_last):
        refused.append(g.contiguous())  # NCHW (a map of one pixel is both layouts)
    for bad in refused:
        with pytest.raises(ValueError, match="channels-last"):
            kernels.channel_sums(bad)


def test_the_decoder_takes_its_bias_gradients_from_the_sums_kernel_only_when_on(kernels,
                                                                             monkeypatch):
    """With `kernels` on, each transposed conv's bias gradient comes from `channel_sums`
    (four in this decoder, the output's first); off, from the torch sums."""
    calls = []
    real = kernels.channel_sums
    monkeypatch.setattr(kernels, "channel_sums",
                        lambda g: calls.append(tuple(g.shape)) or real(g))
    dec = ConvDecoder(20, (32, 32, 3), 8, 16)
    z = torch.randn(2, 20)
    for on in (False, True):
        dec.kernels = on
        dec(z).square().mean().backward()
        assert len(calls) == 4 * on
    assert calls[0] == (2, 3, 32, 32)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_conv_nets_with_the_kernels_are_the_conv_nets(kernels, precision, monkeypatch):
    """Encoder and decoder with `kernels` on (the pixels, each ImageNorm + SiLU and the
    decoder's bias sums by the kernels) against the same nets with torch's ops: outputs and
    every parameter's gradient agree to rounding, under autocast too; the encoder's no-grad
    chunks as well."""
    torch.manual_seed(0)
    nets = {"enc": ConvEncoder((32, 32, 3), 8, 16), "dec": ConvDecoder(20, (32, 32, 3), 8, 16)}
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (2, 3, 32, 32, 3), generator=g, dtype=torch.uint8)
    z = torch.randn(2, 3, 20, generator=g)
    tol = (dict(rtol=1e-4, atol=1e-4) if precision == "fp32"
           else dict(rtol=0.05, atol=0.05))

    def run(on: bool):
        grads = {}
        for name, net in nets.items():
            net.kernels = on
            net.zero_grad()
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                out = net(image) if name == "enc" else net(z)
            out.float().square().mean().backward()
            grads[name] = (out.detach().float(),
                           {k: p.grad.clone() for k, p in net.named_parameters()})
        return grads

    plain, fused = run(False), run(True)
    for name in nets:
        torch.testing.assert_close(fused[name][0], plain[name][0], **tol)
        for k, grad in plain[name][1].items():
            scale = max(1.0, float(grad.abs().max()))
            err = float((fused[name][1][k] - grad).abs().max())
            assert err <= tol["atol"] * scale, (name, k, err)
    monkeypatch.setattr(cnn, "NO_GRAD_CHUNK", 16)  # three chunks, the last of 5 images
    many = torch.randint(0, 256, (2 * 16 + 5, 32, 32, 3), generator=g, dtype=torch.uint8)
    enc = nets["enc"]
    with torch.no_grad():
        enc.kernels = False
        ref = enc(many)
        enc.kernels = True
        torch.testing.assert_close(enc(many), ref, rtol=1e-4, atol=1e-4)


def test_the_nets_call_the_kernels_only_when_on_and_served(kernels, monkeypatch):
    """`kernels` off: ImageNorm and SiLU as modules; on: one kernel call per
    ImageNorm + SiLU pair (five in the encoder: four stages and the 1x1 conv's);
    a map the kernels do not serve (float64) runs the modules."""
    calls = []
    real = kernels.norm_silu
    monkeypatch.setattr(kernels, "norm_silu",
                        lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    enc = ConvEncoder((32, 32, 3), 8, 16)
    image = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    enc(image)
    assert calls == []
    enc.kernels = True
    enc(image)
    assert len(calls) == 5 and calls[0] == (2, 8, 16, 16)
    calls.clear()
    x64 = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    run_layers(enc.double().net, x64, True)
    assert calls == []
    assert isinstance(enc.net[1], ImageNorm)  # the state dict is the nets' own


def test_compile_on_gives_an_image_agent_the_image_kernels(kernels):
    """run.compile=on builds the kernels for an agent with image observations and turns
    them on in its conv nets; a fall-back to eager turns them off; auto builds nothing."""
    import torch._dynamo
    from gymnasium import spaces

    from reverie.agents.imagine import ImagineAgent
    from reverie.compiler import Compiler
    from test_imagine_agent import tiny_config

    spec = {"image": ((16, 16, 3), "uint8")}
    with torch._dynamo.config.patch(disable=False):
        agent = ImagineAgent(spec, spaces.Discrete(3), tiny_config(), torch.device("cpu"), 0)
        compiler = Compiler(lambda note: None)
        agent.compile(compiler)
        assert [n.kernels for n in agent.world.image_nets()] == [True, True]
        compiler.fall_back(RuntimeError("gone"))
        assert [n.kernels for n in agent.world.image_nets()] == [False, False]
        agent = ImagineAgent(spec, spaces.Discrete(3), tiny_config(), torch.device("cpu"), 0)
        agent.compile(Compiler(lambda note: None, "auto"))
        assert [n.kernels for n in agent.world.image_nets()] == [False, False]


def test_a_failed_build_leaves_none_of_the_kernels_built(kernels, monkeypatch):
    """`load()` is all or none: where one kernel fails to build, those built before it are
    forgotten too (a rebuild under another vector ISA then rebuilds them all), and the nets
    keep the torch ops."""
    def broken():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels._backward, "load", broken)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        kernels.load()
    assert not kernels.built()
    assert not kernels.pixels_serve(torch.zeros(2, 3, dtype=torch.uint8))
    assert not kernels.serves(torch.zeros(1, 4, 2, 2).contiguous(
        memory_format=torch.channels_last))
    monkeypatch.undo()
    kernels.load()  # for the tests after this one
    assert kernels.built()
