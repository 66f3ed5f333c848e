"""ddcore.conv: the 3x3 convolution whose backward is made of first-order convolutions gives the
stock convolution's first and second derivatives, and runs exactly where it claims to."""

import pytest
import torch
import torch.nn as nn
from torch.func import grad, vmap

import ddcore.conv
from ddcore.conv import Conv2d, conv3x3
from ddcore.distill.dc import batched_class_gradients, gradient_distance
from ddcore.experts import flat_params
from ddcore.models import ConvNet


def _pair(padding=1, bias=True, dtype=torch.float64):
    """A ddcore Conv2d and a stock nn.Conv2d with the same weights."""
    torch.manual_seed(0)
    ours = Conv2d(3, 4, 3, padding=padding, bias=bias).to(dtype)
    stock = nn.Conv2d(3, 4, 3, padding=padding, bias=bias).to(dtype)
    stock.load_state_dict(ours.state_dict())
    return ours, stock


def _second_derivatives(conv, x):
    """What matching differentiates: the parameter gradient (create_graph=True) of a loss, then
    the gradient of a function of it w.r.t. the input and every parameter."""
    params = list(conv.parameters())
    first = torch.autograd.grad(conv(x).tanh().pow(2).sum(), [x, *params], create_graph=True)
    outer = sum((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum() ** 2 for g in first)
    return torch.autograd.grad(outer, [x, *params])


def test_gradcheck_and_gradgradcheck_in_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    for padding in (0, 1, 2):
        assert torch.autograd.gradcheck(lambda x, w, b, p=padding: conv3x3(x, w, b, p), (x, w, b))
        assert torch.autograd.gradgradcheck(lambda x, w, b, p=padding: conv3x3(x, w, b, p), (x, w, b))


@pytest.mark.parametrize("padding,bias", [(1, True), (3, True), (1, False)])
def test_second_derivatives_equal_stock(padding, bias):
    ours, stock = _pair(padding, bias)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    for a, b in zip(_second_derivatives(ours, x), _second_derivatives(stock, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _runs_conv3x3(y: torch.Tensor) -> bool:
    return y.grad_fn is not None and "_Conv3x3" in type(y.grad_fn).__name__


def test_runs_where_it_claims_and_stock_elsewhere(monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    assert _runs_conv3x3(Conv2d(3, 4, 3, padding=1)(x))
    assert not _runs_conv3x3(Conv2d(3, 4, 3, stride=2, padding=1)(x))
    assert not _runs_conv3x3(Conv2d(3, 4, 5, padding=2)(x))
    assert not _runs_conv3x3(Conv2d(3, 4, 3, padding=1, padding_mode="reflect")(x))
    with torch.no_grad():
        assert Conv2d(3, 4, 3, padding=1)(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Conv2d(3, 4, 3, padding=1)(x)
    assert not _runs_conv3x3(y) and y.dtype == torch.bfloat16
    monkeypatch.setattr(ddcore.conv, "TWICE_DIFFERENTIABLE", False)
    assert not _runs_conv3x3(Conv2d(3, 4, 3, padding=1)(x))


def test_convnet_uses_it_for_blocks_after_the_first():
    net = ConvNet(3, 10, (16, 16), width=8)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(isinstance(c, Conv2d) for c in convs)


def test_under_vmap_of_grad_as_dc_batches_classes(monkeypatch):
    """DC's batch_classes path differentiates vmap(grad(loss)) once more w.r.t. the images: equal
    to the stock convolution's result."""
    torch.manual_seed(0)
    net = ConvNet(1, 3, (8, 8), width=8, depth=2).double()
    images = torch.randn(3, 4, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(3)[:, None].expand(-1, 4)
    targets = [torch.randn(3, *p.shape, dtype=torch.float64) for p in net.parameters()]

    def image_grad(on: bool) -> torch.Tensor:
        monkeypatch.setattr(ddcore.conv, "TWICE_DIFFERENTIABLE", on)
        x = images.clone().requires_grad_(True)
        grads = batched_class_gradients(net, x, labels, create_graph=True)
        loss = sum(gradient_distance([g[c] for g in grads], [t[c] for t in targets]) for c in range(3))
        return torch.autograd.grad(loss, x)[0]

    torch.testing.assert_close(image_grad(True), image_grad(False), rtol=1e-9, atol=1e-12)
    # and vmap really ran the batched rule: a per-sample gradient through conv3x3 alone
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    per_sample = vmap(grad(lambda x: conv3x3(x[None], w, None, 1).pow(2).sum()))(images[0])
    stock = vmap(grad(lambda x: torch.nn.functional.conv2d(x[None], w, padding=1).pow(2).sum()))(images[0])
    torch.testing.assert_close(per_sample, stock, rtol=1e-10, atol=1e-12)


def test_mtt_step_image_gradient_equals_stock(monkeypatch):
    """Two unrolled student steps (create_graph=True), as MTT takes them, then the image gradient
    of the parameter distance: equal under both convolutions (float32, rounding only)."""
    from ddcore.distill.mtt import student_step

    torch.manual_seed(0)
    net = ConvNet(3, 4, (16, 16), width=16)
    start = flat_params(net).detach()
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    lr = torch.tensor(0.05)

    def image_grad(on: bool) -> torch.Tensor:
        monkeypatch.setattr(ddcore.conv, "TWICE_DIFFERENTIABLE", on)
        x, theta = images.clone().requires_grad_(True), start.clone().requires_grad_(True)
        for _ in range(2):
            theta = student_step(net, theta, x, labels, lr, None, None)
        return torch.autograd.grad(((theta - start) ** 2).sum(), x)[0]

    ours, stock = image_grad(True), image_grad(False)
    assert stock.abs().max() > 0
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))


def test_first_order_backward_is_torchs_own():
    """Without create_graph the backward is torch's fused call: bit-for-bit the stock gradients."""
    ours, stock = _pair(dtype=torch.float32)
    x = torch.randn(4, 3, 8, 8)
    grads = [torch.autograd.grad(conv(x).tanh().sum(), list(conv.parameters())) for conv in (ours, stock)]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
