"""The image encoder and decoder at the atari100k preset's sizes: encoder passes without
autograd in chunks, and the decoder's memory layout.

    python bench/cnn.py                        # 2 threads, 7 rounds, ~3 min
    python bench/cnn.py --rounds 3 --chunks 0 512

Two measurements, each alternating its arms (A B C ..., the order reversed every other
round) in one process, `--rounds` rounds after one warm-up round:

- `encode`: the encoder (reverie/nets/cnn.py, depth 24, 64x64x3) under no_grad on the
  1024 x 8 context frames that Drama's imagination encodes every update, in one pass
  (chunk 0) or `NO_GRAD_CHUNK`-image chunks;
- `decode`: the decoder's forward + backward on a world-model batch of 16 x 128 latents with
  the squared-error reconstruction loss, its feature maps NCHW (as before 2026-12-06) or
  channels-last (today's code).

Reported per arm: median and min-max seconds, and the ratio to the first arm per round.
Writes bench/results/cnn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runlib import alternate, matmul_gflops, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE, DEPTH, EMBED = (64, 64, 3), 24, 64  # the atari100k preset's image and cnn sizes
CONTEXT_IMAGES, BATCH_IMAGES, LATENT = 1024 * 8, 16 * 128, 1024


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
    args = p.parse_args()
    import torch

    from reverie.allocator import keep_freed_memory
    from reverie.nets import cnn

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

    def decode(channels_last: bool):
        def arm() -> None:
            x = dec.stem(z).reshape(-1, EMBED, *(s // 16 for s in SHAPE[:2]))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = dec.net(x).permute(0, 2, 3, 1).reshape(BATCH_IMAGES, *SHAPE)
            (out - target).pow(2).sum(dim=(-3, -2, -1)).mean().backward()
            dec.zero_grad(set_to_none=True)
        return arm

    # the two layouts agree (oneDNN may order its sums differently)
    with torch.no_grad():
        cnn.NO_GRAD_CHUNK, whole = CONTEXT_IMAGES, enc(frames[:1024])
        cnn.NO_GRAD_CHUNK = 256
        diff_encode = float((enc(frames[:1024]) - whole).abs().max())
    enc_times = alternate({f"chunk {c}" if c else "one pass": encode(c) for c in args.chunks},
                          args.rounds, warmup=1, flip=True)
    dec_times = alternate({"nchw": decode(False), "channels-last": decode(True)},
                          args.rounds, warmup=1, flip=True)
    result = {
        "benchmark": "cnn", "torch_threads": args.threads, "rounds": args.rounds,
        "cores": os.cpu_count(), "matmul_gflops": gflops,
        "loadavg_1min_before": round(load0, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "sizes": {"image": list(SHAPE), "cnn_depth": DEPTH, "embed_channels": EMBED,
                  "context_images": CONTEXT_IMAGES, "batch_images": BATCH_IMAGES},
        "encode_no_grad_s": {k: spread(v, 4) for k, v in enc_times.items()},
        "encode_speedup_over_one_pass": ratios(enc_times, next(iter(enc_times))),
        "encode_max_abs_difference_chunked": diff_encode,
        "decode_fwd_bwd_s": {k: spread(v, 4) for k, v in dec_times.items()},
        "decode_speedup_over_nchw": ratios(dec_times, "nchw"),
    }
    result["loaded"] = max(result["loadavg_1min_before"], result["loadavg_1min_after"]) > (
        os.cpu_count() or 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cnn.json").write_text(json.dumps(result, indent=1) + "\n")
    for key in ("encode_speedup_over_one_pass", "decode_speedup_over_nchw"):
        print(key, {k: v["median"] for k, v in result[key].items()})


if __name__ == "__main__":
    main()
