"""Time `net.embed` against `ddcore.fastpath.embed` on the two batches of one DM iteration.

    python bench/embed_speed.py [--repeats 7] [--threads 2] [--chunk 16]

- real: 2,560 images (10 classes x 256) under no_grad;
- syn: 100 images (10 classes x 10) forward + backward to the images, net frozen as in DM.
Each repeat times the two functions back to back, so load from other processes hits both alike;
the table gives medians (and minima), their ratio and the conv GFLOP/s achieved, counting
2 * 9 * cin * cout * Hout * Wout per image for each conv (twice that for forward + backward).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from ddcore import fastpath
from ddcore.models import ConvNet


def conv_flops(net: ConvNet, x: torch.Tensor) -> int:
    """FLOPs of the convolutions of one forward of x (2 per multiply-add)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += 2 * module.weight[0].numel() * output.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net.embed(x)
    for h in handles:
        h.remove()
    return total


def real_pass(fn, net, images):
    with torch.no_grad():
        return fn(net, images)


def syn_pass(fn, net, images):
    images = images.detach().requires_grad_(True)
    fn(net, images).square().sum().backward()
    return images.grad


def time_pair(task, net, images, repeats: int) -> list[list[float]]:
    """Seconds per call of [net.embed, fastpath.embed], interleaved, after one warm-up each."""
    fns = [lambda n, x: n.embed(x), fastpath.embed]
    times = [[], []]
    for r in range(repeats + 1):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            task(fn, net, images)
            if r > 0:
                times[i].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--chunk", type=int, default=None, help="fastpath chunk (default: its own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.chunk:
        fastpath.CHUNK = args.chunk
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, chunk {fastpath.CHUNK}, median (min) of {args.repeats}")
    print(
        f"{'input':>9} {'batch':>14} {'embed s':>14} {'fastpath s':>14} {'ratio':>6} "
        f"{'GF/s embed':>10} {'GF/s fast':>9} {'max|diff|/max|ref|':>18}"
    )
    for channels, size in [(1, 28), (3, 32)]:
        torch.manual_seed(0)
        net = ConvNet(channels, 10, (size, size)).requires_grad_(False)
        for name, n, task, passes in [("real no-grad", 2560, real_pass, 1), ("syn fwd+bwd", 100, syn_pass, 2)]:
            images = torch.randn(n, channels, size, size, generator=gen)
            ref, fast = task(lambda n_, x: n_.embed(x), net, images), task(fastpath.embed, net, images)
            err = ((ref - fast).abs().max() / ref.abs().max()).item()
            base, new = time_pair(task, net, images, args.repeats)
            gflop = passes * conv_flops(net, images) / 1e9
            mb, mn = statistics.median(base), statistics.median(new)
            print(
                f"{channels}x{size}x{size} {name:>14} {mb:7.3f} ({min(base):.3f}) "
                f"{mn:7.3f} ({min(new):.3f}) {mb / mn:6.2f} {gflop / mb:10.0f} {gflop / mn:9.0f} "
                f"{err:18.1e}"
            )


if __name__ == "__main__":
    main()
