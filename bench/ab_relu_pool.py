"""Side by side: a student's training epoch with ReLU + 2x2 average pooling as today (stock
modules) against two rewrites whose backward is one pass (the performance issue's item 4). Run by
hand, never in CI:

    python bench/ab_relu_pool.py [--ipcs 10 50] [--rounds 4] [--threads 1]

Why try: in the autograd graph of ConvNet, average pooling's backward fills and writes a
full-size gradient and ReLU's backward reads it again, two passes over the largest activations
(128 x 32 x 32 per image) where one would do: the gradient of relu-then-pool is
threshold_backward(g / 4 broadcast over each 2x2 window, relu output). Variants, each swapped into
ConvNet.embed (the fused first block kept):
- current: ddcore.models as it is;
- mean: relu on a (N, C, H/2, 2, W/2, 2) view, then mean over the window dims (plain autograd;
  vmap and double backward work unchanged);
- function: an autograd.Function with avg_pool2d's forward and the one-pass backward above.
Each round trains a fresh width-128 ConvNet (same seeds) for 1 warm-up and 2 timed epochs
(TrainConfig() defaults, DSA) on ipc real mnist5k images per class, per variant in turn, so load
from other processes hits all alike. Prints the median seconds per epoch, the speed-up over
current, and each variant's last loss (equal within float rounding: same function).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ddcore.augment import dsa_for
from ddcore.data import load_dataset
from ddcore.distill.common import Run, fresh_net, init_synthetic
from ddcore.models import ConvNet, ModelConfig, conv_instance_norm
from ddcore.train import TrainConfig, train_network


def relu_pool_mean(y: torch.Tensor) -> torch.Tensor:
    n, c, h, w = y.shape
    return F.relu(y.view(n, c, h // 2, 2, w // 2, 2)).mean((3, 5))


class _ReluAvgPool(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(y):
        r = F.relu(y)
        return F.avg_pool2d(r, 2), r

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, g, _):
        (r,) = ctx.saved_tensors
        h, w = r.shape[-2:]
        window = (*g.shape[:-2], h // 2, 2, w // 2, 2)
        g6 = (g * 0.25).unsqueeze(-1).unsqueeze(-3).expand(window)
        return torch.ops.aten.threshold_backward(g6, r.view(window), 0.0).view(r.shape)


def relu_pool_function(y: torch.Tensor) -> torch.Tensor:
    return _ReluAvgPool.apply(y)[0]


def embed_with(relu_pool):
    """ConvNet.embed (fused first block, ReLU, average pooling) with relu_pool for act + pool."""

    def embed(self, x):
        self._check(x)
        conv, norm = self.features[:2]
        y = relu_pool(conv_instance_norm(x, conv, norm).view(len(x), -1, *self._first_size))
        blocks = list(self.features[4:])
        for i in range(0, len(blocks), 4):
            y = relu_pool(blocks[i + 1](blocks[i](y)))
        return y.flatten(1)

    return embed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "current": ConvNet.embed,
        "mean": embed_with(relu_pool_mean),
        "function": embed_with(relu_pool_function),
    }
    data = load_dataset("mnist5k")
    for ipc in args.ipcs:
        run = Run(dataset=data, ipc=ipc, seed=0, device=torch.device("cpu"), progress=False)
        images, labels = init_synthetic(run, "real", torch.Generator().manual_seed(0))
        times, last = {k: [] for k in variants}, {}
        for _ in range(args.rounds):
            for name, embed in variants.items():
                ConvNet.embed = embed
                net = fresh_net(run, ModelConfig(width=128), torch.Generator().manual_seed(1))
                gen = torch.Generator().manual_seed(2)
                train_network(net, images, labels, TrainConfig(epochs=1), dsa_for(data.name), gen)
                start = time.perf_counter()
                losses = train_network(net, images, labels, TrainConfig(epochs=2), dsa_for(data.name), gen)
                times[name].append((time.perf_counter() - start) / 2)
                last[name] = float(losses[-1])
        ConvNet.embed = variants["current"]
        base = statistics.median(times["current"])
        medians = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{k} {m:.3f} s/epoch ({base / m:.2f}x)" for k, m in medians.items()]
        print(f"ipc {ipc}: " + "; ".join(cells) + f"; last loss {last}", flush=True)


if __name__ == "__main__":
    main()
