"""Seconds per DM iteration on mnist5k: ddcore's batched step vs a per-class loop in the style of
the field's reference code, measured side by side in one run (medians of --repeats iterations).

    python bench/dm_speed.py [--ipc 10] [--batch-real 256] [--width 128] [--repeats 7] [--threads 2]

Run it on an otherwise idle machine: two torch processes on two cores slow each other many-fold.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddcore.augment import apply_dsa, dsa_for, sample_dsa
from ddcore.data import load_dataset
from ddcore.distill.common import Run, class_indices, fresh_net, init_synthetic, sample_real
from ddcore.distill.dm import dm_loss
from ddcore.models import ModelConfig, count_flops


def batched_step(run, model, images_syn, labels_syn, per_class, dsa, gen, opt, batch_real):
    """What ddcore.distill.dm does each iteration."""
    net = fresh_net(run, model, gen).requires_grad_(False)
    images_real, groups_real = sample_real(run, per_class, batch_real, gen)
    draw = sample_dsa(dsa, run.num_classes, run.dataset.im_size, gen)
    loss = dm_loss(net, images_real, groups_real, images_syn, labels_syn, run.num_classes, draw)
    opt.zero_grad()
    loss.backward()
    opt.step()


def per_class_step(run, model, images_syn, labels_syn, per_class, dsa, gen, opt, batch_real):
    """The reference's structure: one forward of real and one of synthetic images per class."""
    net = fresh_net(run, model, gen).requires_grad_(False)
    loss = images_syn.new_zeros(())
    for c in range(run.num_classes):
        real, _ = sample_real(run, per_class, batch_real, gen, classes=[c])
        syn = images_syn[labels_syn == c]
        draw = sample_dsa(dsa, 1, run.dataset.im_size, gen)
        emb_real = net.embed(apply_dsa(real, draw)).detach()
        emb_syn = net.embed(apply_dsa(syn, draw))
        loss = loss + ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    run = Run(dataset=data, ipc=args.ipc, seed=0, device=torch.device("cpu"), progress=False)
    model, dsa = ModelConfig(width=args.width), dsa_for("mnist5k")
    net = fresh_net(run, model, torch.Generator().manual_seed(0))
    flops_image = count_flops(net, data.images_train[:1])
    flops = flops_image * (10 * args.batch_real + 3 * 10 * args.ipc)  # real forward; syn fwd + 2x bwd
    times = {"per-class loop (reference style)": [], "ddcore batched": []}
    steps = {"per-class loop (reference style)": per_class_step, "ddcore batched": batched_step}
    state = {}
    for name in times:
        gen = torch.Generator().manual_seed(0)
        syn, labels = init_synthetic(run, "real", gen)
        syn.requires_grad_(True)
        state[name] = (syn, labels, gen, torch.optim.SGD([syn], lr=1.0, momentum=0.5))
    for r in range(args.repeats + 1):  # alternate the variants; the first round is warm-up
        for name, step in steps.items():
            syn, labels, gen, opt = state[name]
            start = time.perf_counter()
            step(run, model, syn, labels, class_indices(run), dsa, gen, opt, args.batch_real)
            if r:
                times[name].append(time.perf_counter() - start)
    print(
        f"DM iteration, mnist5k, ipc {args.ipc}, {args.batch_real} real/class, ConvNet-3 width {args.width}, "
        f"DSA on, {args.threads} threads, median of {args.repeats}"
    )
    print(f"conv+linear work per iteration: {flops / 1e9:.0f} GFLOP")
    base = statistics.median(times["per-class loop (reference style)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:34s} {med:6.2f} s/it  {flops / med / 1e9:6.0f} GFLOP/s  speed-up x{base / med:.2f}")


if __name__ == "__main__":
    main()
