"""The image encoder and decoder at the atari100k preset's sizes: encoder passes without
autograd in chunks, the decoder's memory layout, its transposed convs' bias gradient and the
group norm in bf16.

    python bench/cnn.py                        # 2 threads, 7 rounds, ~15 min
    python bench/cnn.py --rounds 3 --chunks 0 512
    python bench/cnn.py --parts bias           # one measurement; the others' JSON kept

The measurements, each alternating its arms (A B C ..., the order reversed every other
round) in one process, `--rounds` rounds after one warm-up round:

- `encode`: the encoder (reverie/nets/cnn.py, depth 24, 64x64x3) under no_grad on the
  1024 x 8 context frames that Drama's imagination encodes every update, in one pass
  (chunk 0) or `NO_GRAD_CHUNK`-image chunks;
- `decode`: the decoder's forward + backward on a world-model batch of 16 x 128 latents with
  the squared-error reconstruction loss, its feature maps NCHW (as before 2026-12-06) or
  channels-last (today's code);
- `bias`: the decoder's forward + backward as in `decode` (channels-last), its transposed
  convs' bias gradient from oneDNN's convolution backward (plain nn.ConvTranspose2d, before
  2026-12-07) or summed from the output gradient (`BiasSumConvTranspose2d`, today's code),
  in float32 and under run.precision=bf16's autocast;
- `update`: the same two bias gradients in a whole update of the atari100k preset's agent
  (runlib.prefilled_agent: 300 prefilled Pong steps), float32 and bf16;
- `norm` (bf16 only): GroupNorm(1, C) as ATen's group norm (nn.GroupNorm, before 2026-12-07)
  or as a layer norm over each image (`ImageNorm`, today's code, for C not a multiple of
  16), in the no-grad encoding of `encode` (256-image chunks) and in a whole update as above;
- `recon`: a whole update as above with the image reconstruction loss as before 2026-12-07
  (a copy of it here: the target scaled in new tensors) or today's (in place on a copy),
  float32 and bf16.

Reported per arm: median and min-max seconds, and the ratio to the first arm per round
(`bias`: oneDNN's over the summed one's, per precision). Writes bench/results/cnn.json (a
measurement not run keeps what the JSON had; `measured` says how each one was taken).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import alternate, matmul_gflops, prefilled_agent, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE, DEPTH, EMBED = (64, 64, 3), 24, 64  # the atari100k preset's image and cnn sizes
CONTEXT_IMAGES, BATCH_IMAGES, LATENT = 1024 * 8, 16 * 128, 1024
PARTS = ("encode", "decode", "bias", "update", "norm", "recon")


def ratios(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Per round: the base arm's seconds over each other arm's (> 1: the arm is faster)."""
    return {name: spread([b / t for b, t in zip(times[base], ts)], 3)
            for name, ts in times.items() if name != base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunks", nargs="+", type=int, default=[0, 128, 256, 512, 1024],
                   help="encoder chunk sizes without autograd; 0 = one pass")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="which measurements to run")
    args = p.parse_args()
    import torch

    from reverie.allocator import keep_freed_memory
    from reverie.nets import cnn
    from reverie.precision import autocast

    keep_freed_memory()  # as the `reverie` command does
    torch.set_num_threads(args.threads)
    load0, gflops = os.getloadavg()[0], matmul_gflops(args.threads)
    torch.manual_seed(0)
    enc = cnn.ConvEncoder(SHAPE, DEPTH, EMBED)
    dec = cnn.ConvDecoder(LATENT, SHAPE, DEPTH, EMBED)
    frames = torch.randint(0, 256, (CONTEXT_IMAGES, *SHAPE), dtype=torch.uint8)

    def encode(chunk: int):
        def arm() -> None:
            before = cnn.NO_GRAD_CHUNK
            cnn.NO_GRAD_CHUNK = chunk or CONTEXT_IMAGES
            try:
                with torch.no_grad():
                    enc(frames)
            finally:
                cnn.NO_GRAD_CHUNK = before
        return arm

    z = torch.randn(BATCH_IMAGES, LATENT)
    target = frames[:BATCH_IMAGES].float() / 255.0 - 0.5

    def route(cls, base, own: bool, precision: str, fn, name: str = "forward"):
        """fn() under `precision`'s autocast with today's `cls.<name>` (own) or `base`'s (the
        code before it: the base class's, or a copy of the old code here)."""
        own_method = getattr(cls, name)

        def arm() -> None:
            if not own:
                setattr(cls, name, getattr(base, name))
            try:
                with autocast(torch.device("cpu"), precision):
                    fn()
            finally:
                setattr(cls, name, own_method)
        return arm

    def decode(channels_last: bool) -> None:
        x = dec.stem(z).reshape(-1, EMBED, *(s // 16 for s in SHAPE[:2]))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = dec.net(x).permute(0, 2, 3, 1).reshape(BATCH_IMAGES, *SHAPE)
        (out.float() - target).pow(2).sum(dim=(-3, -2, -1)).mean().backward()
        dec.zero_grad(set_to_none=True)

    def bias_arms(fn) -> dict:
        return {f"{how} {prec}": route(cnn.BiasSumConvTranspose2d, torch.nn.ConvTranspose2d,
                                       how == "summed", prec, fn)
                for prec in ("fp32", "bf16") for how in ("onednn", "summed")}

    def bias_result(times: dict, key: str) -> dict:
        return {f"{key}_s": {k: spread(v, 4) for k, v in times.items()},
                f"{key}_speedup_of_summed": {prec: spread([a / b for a, b in zip(
                    times[f"onednn {prec}"], times[f"summed {prec}"])], 3)
                    for prec in ("fp32", "bf16")}}

    path = RESULTS / "cnn.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update({
        "benchmark": "cnn", "cores": os.cpu_count(),
        "sizes": {"image": list(SHAPE), "cnn_depth": DEPTH, "embed_channels": EMBED,
                  "context_images": CONTEXT_IMAGES, "batch_images": BATCH_IMAGES}})
    if "encode" in args.parts:
        # chunked and one pass agree (oneDNN may order its sums differently)
        with torch.no_grad():
            before = cnn.NO_GRAD_CHUNK
            try:
                cnn.NO_GRAD_CHUNK = CONTEXT_IMAGES  # one pass
                whole = enc(frames[:1024])
                cnn.NO_GRAD_CHUNK = 256
                diff_encode = float((enc(frames[:1024]) - whole).abs().max())
            finally:
                cnn.NO_GRAD_CHUNK = before
        times = alternate({f"chunk {c}" if c else "one pass": encode(c) for c in args.chunks},
                          args.rounds, warmup=1, flip=True)
        result.update({"encode_no_grad_s": {k: spread(v, 4) for k, v in times.items()},
                       "encode_speedup_over_one_pass": ratios(times, next(iter(times))),
                       "encode_max_abs_difference_chunked": diff_encode})
    if "decode" in args.parts:
        times = alternate({"nchw": lambda: decode(False), "channels-last": lambda: decode(True)},
                          args.rounds, warmup=1, flip=True)
        result.update({"decode_fwd_bwd_s": {k: spread(v, 4) for k, v in times.items()},
                       "decode_speedup_over_nchw": ratios(times, "nchw")})
    if "bias" in args.parts:
        times = alternate(bias_arms(lambda: decode(True)), args.rounds, warmup=1, flip=True)
        result.update(bias_result(times, "bias_fwd_bwd"))
    if "update" in args.parts:
        with prefilled_agent("atari100k", [], 300, args.threads) as (agent, replay):
            times = alternate(bias_arms(lambda: agent.update(replay)), args.rounds, warmup=1,
                              flip=True)
        result.update(bias_result(times, "update"))
    if "recon" in args.parts:
        from reverie.world.latent import WorldModel

        def recon_before(world, z, obs):  # WorldModel._recon_loss's images before 2026-12-07
            raw = world._decode_raw(z)
            loss = torch.zeros(z.shape[:-1], device=z.device)
            for k in world.image_keys:
                target = obs[k].float() / 255.0 - 0.5
                loss = loss + (raw[k] - target).pow(2).sum(dim=(-3, -2, -1))
            return loss

        before = type("Before", (), {"_recon_loss": recon_before})
        arms = {f"{how} {prec}": route(WorldModel, before, how == "today", prec,
                                       lambda: agent.update(replay), "_recon_loss")
                for prec in ("fp32", "bf16") for how in ("before", "today")}
        with prefilled_agent("atari100k", [], 300, args.threads) as (agent, replay):
            times = alternate(arms, args.rounds, warmup=1, flip=True)
        result.update({"recon_update_s": {k: spread(v, 4) for k, v in times.items()},
                       "recon_update_speedup": {prec: spread([a / b for a, b in zip(
                           times[f"before {prec}"], times[f"today {prec}"])], 3)
                           for prec in ("fp32", "bf16")}})
    if "norm" in args.parts:
        norm = {f"{how} bf16": route(cnn.ImageNorm, torch.nn.GroupNorm, how == "layer_norm",
                                     "bf16", lambda: enc(frames)) for how in ("group_norm",
                                                                           "layer_norm")}
        with torch.no_grad():
            times = alternate(norm, args.rounds, warmup=1, flip=True)
        with prefilled_agent("atari100k", [], 300, args.threads) as (agent, replay):
            times.update({f"update {k}": v for k, v in alternate(
                {f"{how} bf16": route(cnn.ImageNorm, torch.nn.GroupNorm, how == "layer_norm",
                                      "bf16", lambda: agent.update(replay))
                 for how in ("group_norm", "layer_norm")},
                args.rounds, warmup=1, flip=True).items()})
        result.update({"norm_bf16_s": {k: spread(v, 4) for k, v in times.items()},
                       "norm_bf16_speedup_of_layer_norm": {what: spread([a / b for a, b in zip(
                           times[f"{pre}group_norm bf16"], times[f"{pre}layer_norm bf16"])], 3)
                           for what, pre in (("encode_no_grad", ""), ("update", "update "))}})
    # how each measurement was taken (the JSON keeps the other measurements' own)
    load = [round(load0, 2), round(os.getloadavg()[0], 2)]
    for part in args.parts:
        result.setdefault("measured", {})[part] = {
            "rounds": args.rounds, "torch_threads": args.threads, "matmul_gflops": gflops,
            "loadavg_1min": load, "loaded": max(load) > (os.cpu_count() or 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    for key in ("encode_speedup_over_one_pass", "decode_speedup_over_nchw",
                "bias_fwd_bwd_speedup_of_summed", "update_speedup_of_summed",
                "norm_bf16_speedup_of_layer_norm", "recon_update_speedup"):
        if key in result:
            print(key, {k: v["median"] for k, v in result[key].items()})


if __name__ == "__main__":
    main()
