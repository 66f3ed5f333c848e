"""ddcore.fastpath.embed must give what net.embed gives: features and gradients w.r.t. the images."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ddcore import fastpath
from ddcore.models import MLP, ConvNet

SHAPES = [(1, (28, 28)), (3, (32, 32)), (1, (16, 16))]


def make_net(channels, im_size, norm="instance", width=32, dtype=torch.float32, **kwargs) -> ConvNet:
    """A frozen ConvNet whose norm affine parameters are not the identity (as after training)."""
    torch.manual_seed(0)
    net = ConvNet(channels, 10, im_size, width=width, norm=norm, **kwargs).to(dtype)
    for m in net.modules():
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net.requires_grad_(False)


def images(n, channels, im_size, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, channels, *im_size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def forward_calls(monkeypatch):
    """Sizes of the chunks that went through the fast (no-autograd) path, in any order."""
    calls = []
    real = fastpath._forward
    monkeypatch.setattr(fastpath, "_forward", lambda blocks, x: calls.append(len(x)) or real(blocks, x))
    return calls


@pytest.mark.parametrize("channels,im_size", SHAPES)
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("width", [32, 128])  # 128 takes the Winograd convs, 32 oneDNN's
def test_features_match_without_grad(channels, im_size, norm, width, forward_calls):
    net, x = make_net(channels, im_size, norm, width), images(10, channels, im_size)
    with torch.no_grad():
        ref, out = net.embed(x), fastpath.embed(net, x, chunk=4)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4  # Winograd in float32: ~1e-5
    # batch norm in train mode needs the whole batch; the others go the fast way in chunks
    assert sorted(forward_calls) == ([] if norm == "batch" else [2, 4, 4])


@pytest.mark.parametrize("channels,im_size", SHAPES)
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_input_gradients_match(channels, im_size, norm):
    net, x = make_net(channels, im_size, norm, width=128), images(6, channels, im_size)
    weights = torch.randn(6, net.feature_dim, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (net.embed, lambda x_: fastpath.embed(net, x_, chunk=4)):
        x_ = x.clone().requires_grad_(True)
        out = fn(x_)
        (out * weights).sum().backward()
        grads.append((out.detach(), x_.grad))
    (ref, grad_ref), (out, grad) = grads
    assert rel_err(out, ref) < 1e-5 and rel_err(grad, grad_ref) < 1e-4


@pytest.mark.parametrize("channels,im_size", SHAPES + [(3, (20, 20)), (1, (30, 30))])
@pytest.mark.parametrize("norm", ["instance", "none"])
@pytest.mark.parametrize("act,pool", [("relu", "avg"), ("leakyrelu", "max"), ("sigmoid", "none")])
def test_fast_path_is_exact_in_float64(channels, im_size, norm, act, pool, forward_calls):
    # float64 removes rounding, so any slip in the algebra (tiles, padding, crops) shows up;
    # 20x20 and 30x30 give feature maps that are not a multiple of the 4x4 Winograd tiles
    depth = 2 if pool == "none" else 3
    net = make_net(channels, im_size, norm, 128, torch.float64, act=act, pool=pool, depth=depth)
    x = images(5, channels, im_size, torch.float64)
    with torch.no_grad():
        assert rel_err(fastpath.embed(net, x, chunk=3), net.embed(x)) < 1e-10
    assert sorted(forward_calls) == [2, 3]


def test_grad_w_r_t_weights_when_the_net_is_not_frozen():
    net, x = make_net(1, (28, 28)).requires_grad_(True), images(4, 1, (28, 28))
    fastpath.embed(net, x, chunk=3).sum().backward()
    grad_fast = net.features[0].weight.grad.clone()
    net.zero_grad()
    net.embed(x).sum().backward()
    assert rel_err(grad_fast, net.features[0].weight.grad) < 1e-4


def test_batch_norm_in_eval_mode_is_chunked():
    net, x = make_net(1, (28, 28), "batch").eval(), images(10, 1, (28, 28))
    with torch.no_grad():
        assert rel_err(fastpath.embed(net, x, chunk=4), net.embed(x)) < 1e-5


def test_other_networks_fall_back_to_their_embed():
    net, x = MLP(1, 10, (28, 28)), images(7, 1, (28, 28))
    with torch.no_grad():
        assert torch.allclose(fastpath.embed(net, x, chunk=3), net.embed(x), atol=1e-6)


def test_wrong_input_raises_like_embed():
    with pytest.raises(ValueError, match="channels"):
        with torch.no_grad():
            fastpath.embed(make_net(1, (28, 28)), images(2, 3, (28, 28)))


def test_worker_threads_give_the_same_and_restore_the_thread_count():
    net, x = make_net(1, (28, 28), width=128), images(9, 1, (28, 28))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # embed then runs chunks on 2 threads of one core each
    try:
        with torch.no_grad():
            assert rel_err(fastpath.embed(net, x, chunk=2), net.embed(x)) < 1e-4
        x_ = x.clone().requires_grad_(True)
        fastpath.embed(net, x_, chunk=2).sum().backward()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    x_ref = x.clone().requires_grad_(True)
    net.embed(x_ref).sum().backward()
    assert rel_err(x_.grad, x_ref.grad) < 1e-4
