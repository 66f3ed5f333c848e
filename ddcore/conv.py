"""A 3x3 convolution whose second derivative runs as first-order convolutions (CPU speed).

Gradient matching (DC), trajectory matching (MTT, D3) and their robust variants differentiate a
network's parameter gradient once more (create_graph=True). For a stock convolution torch's
double backward computes the weight-gradient term of a layer whose input gradient is used (every
layer but the first) as a convolution of two transposed, non-contiguous views (batch and channel
swapped), which oneDNN ran 2.2x slower than a weight gradient of the same size (78 against 36 ms at
(100, 128, 16, 16), 2 threads).

Here the backward is written with differentiable first-order ops, so autograd builds the second
derivative from them:

    y = conv(x, w) + b
    dL/dx = conv_transpose(g, w)               g = dL/dy
    dL/dw = weight_grad(g, x)                  (torch.nn.grad.conv2d_weight)
    dL/db = sum of g over (N, H, W)

and weight_grad's own backward, for an upstream gradient G on dL/dw, is

    d/dg = conv(x, G),    d/dx = conv_transpose(g, G),

the same maps with G in place of w. Every term is a plain convolution or its transpose on
contiguous tensors. The same numbers as the stock path up to float rounding (tests/test_conv.py
compares first and second derivatives, and gradgradcheck in float64).

Conv2d (an nn.Conv2d) uses it on the CPU for 3x3, stride-1, dilation-1, ungrouped convolutions
with integer padding when autograd records and autocast is off; the stock path elsewhere (CUDA's
cuDNN, bf16 autocast, inference). A backward without create_graph runs torch's own fused call, so
first-order training costs the same. TWICE_DIFFERENTIABLE = False turns it off everywhere (read at
each call, for benchmarks). bench/ab_conv_double_backward.py --rounds 3 (2 threads, alternating):
the op's second derivative x1.14 / 1.09 at 16 / 8, an eval epoch x1.02 / 1.00 at IPC 10 / 50, a DC
iteration x1.08, an MTT iteration x1.15 and a D3 iteration x1.08 at IPC 10.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

TWICE_DIFFERENTIABLE = True


class _WeightGrad(torch.autograd.Function):
    """dL/dw of y = conv(x, w) from g = dL/dy and x, differentiable in g and x."""

    generate_vmap_rule = True  # DC's batch_classes path runs under torch.func.vmap

    @staticmethod
    def forward(g, x, weight_shape, padding):
        return torch.nn.grad.conv2d_weight(x, weight_shape, g, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, x, _, ctx.padding = inputs
        ctx.save_for_backward(g, x)

    @staticmethod
    def backward(ctx, grad_w):
        g, x = ctx.saved_tensors
        grad_g = F.conv2d(x, grad_w, padding=ctx.padding) if ctx.needs_input_grad[0] else None
        grad_x = F.conv_transpose2d(g, grad_w, padding=ctx.padding) if ctx.needs_input_grad[1] else None
        return grad_g, grad_x, None, None


class _Conv3x3(torch.autograd.Function):
    """conv2d(x, w, b, padding) with a backward made of differentiable first-order convolutions."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.padding = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        if not torch.is_grad_enabled():  # first order only (no create_graph): torch's one fused call,
            # 10-15% faster than the two below at (100, 128, 16, 16) (bench/ab_conv_double_backward.py)
            return (
                *torch.ops.aten.convolution_backward(
                    g, x, weight, [weight.shape[0]], [1, 1], [p, p], [1, 1], False, [0, 0], 1, ctx.needs_input_grad[:3]
                ),
                None,
            )
        grad_x = F.conv_transpose2d(g, weight, padding=p) if ctx.needs_input_grad[0] else None
        grad_w = _WeightGrad.apply(g, x, weight.shape, p) if ctx.needs_input_grad[1] else None
        grad_b = g.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=padding) for (cout, cin, 3, 3) weights, stride 1, whose
    second derivative runs as first-order convolutions (see the module's docstring)."""
    return _Conv3x3.apply(x, weight, bias, padding)


class Conv2d(nn.Conv2d):
    """nn.Conv2d whose 3x3 stride-1 case runs conv3x3 on the CPU while autograd records."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            TWICE_DIFFERENTIABLE
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and self.padding[0] == self.padding[1]
        ):
            return conv3x3(x, weight, bias, self.padding[0])
        return super()._conv_forward(x, weight, bias)
