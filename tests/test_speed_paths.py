"""The CPU speed paths change no result beyond float rounding (issue #7).

- ConvNet's fused first block (conv + instance norm as one per-image matmul of the patches)
  against the stock modules: exact in float64, and short float32 runs of every method that
  trains through a ConvNet stay within a stated tolerance of the stock run;
- ConvNet's 2x2 average pool as a matmul (models.avg_pool_2x2) against torch's avg_pool2d;
- the allocator setting made at import (runtime.keep_freed_memory).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddcore import models
from ddcore.distill import distill
from ddcore.evaluate import EvalConfig, evaluate_synthetic
from ddcore.experts import ExpertConfig
from ddcore.models import ConvNet, ModelConfig, count_flops
from ddcore.train import TrainConfig

SHAPES = [(1, (28, 28)), (3, (32, 32)), (1, (16, 16))]


def affine_net(channels, im_size, dtype=torch.float64, width=16) -> ConvNet:
    """A ConvNet whose norm affine parameters are not the identity (as after training)."""
    torch.manual_seed(0)
    net = ConvNet(channels, 10, im_size, width=width).to(dtype)
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net


def loss_and_grads(net, x, y, fuse: bool):
    net.fuse_first_block = fuse
    x = x.detach().clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach(), x.grad, {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("channels,im_size", SHAPES)
def test_fused_first_block_is_exact_in_float64(channels, im_size):
    net = affine_net(channels, im_size)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, channels, *im_size, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=gen)
    loss_f, dx_f, g_f = loss_and_grads(net, x, y, fuse=True)
    loss_s, dx_s, g_s = loss_and_grads(net, x, y, fuse=False)
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_f, dx_s, rtol=1e-10, atol=1e-12)
    for name in g_s:
        torch.testing.assert_close(g_f[name], g_s[name], rtol=1e-9, atol=1e-12, msg=name)


def test_the_fused_first_conv_bias_gets_an_exact_zero_gradient():
    """Instance norm cancels the conv bias; the bias stays in the graph (autograd.grad over all
    parameters, as DC takes it, needs that) with the gradient the norm gives it: zero."""
    net = affine_net(1, (28, 28), dtype=torch.float32)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    bias_grad = grads[1]
    assert bias_grad.shape == net.features[0].bias.shape and torch.count_nonzero(bias_grad) == 0
    assert grads[0].abs().sum() > 0


def test_fusion_is_used_on_the_cpu_and_can_be_switched_off(monkeypatch):
    calls = []
    real = models.conv_instance_norm
    monkeypatch.setattr(models, "conv_instance_norm", lambda *a: calls.append(1) or real(*a))
    ConvNet(1, 10, (28, 28), width=8)(torch.randn(2, 1, 28, 28))
    assert calls == [1]
    monkeypatch.setattr(models, "FUSE_FIRST_BLOCK", False)
    net = ConvNet(1, 10, (28, 28), width=8)
    net(torch.randn(2, 1, 28, 28))
    assert calls == [1] and not net.fuse_first_block
    assert not ConvNet(1, 10, (28, 28), width=8, norm="batch").fuse_first_block  # instance norm only


def test_count_flops_sees_the_first_conv_of_a_fused_net():
    net = ConvNet(1, 10, (28, 28), width=8)
    stock = ConvNet(1, 10, (28, 28), width=8)
    stock.fuse_first_block = False
    x = torch.zeros(1, 1, 28, 28)
    assert count_flops(net, x) == count_flops(stock, x) > 2 * 9 * 8 * 32 * 32
    assert net.fuse_first_block  # restored


def run_both(monkeypatch, fn):
    """fn() with networks built fused, then with stock modules."""
    fused = fn()
    monkeypatch.setattr(models, "FUSE_FIRST_BLOCK", False)
    stock = fn()
    monkeypatch.setattr(models, "FUSE_FIRST_BLOCK", True)
    return fused, stock


# A short deterministic run of each method that trains or differentiates through a ConvNet.
# Float32 rounding differs between the two paths (~1e-7 per op). Measured: the relative L2 size
# of (fused - stock) against the images' change from their initialisation is 2.7e-6 for dc and
# 1.4e-6 for mtt; for dm it is 1.7e-6 after one iteration and 3.4e-3 after three: at the second
# iteration the two runs' images, 2.4e-7 apart, get gradients that differ by more than rounding
# (a point where the loss is not smooth, most likely a ReLU of the width-8 net switching), while
# evaluated at one state the two paths' DM gradients agree to 1e-7 of their size. Bound: 1%.
METHOD_RUNS = {
    "dm": dict(iterations=3, batch_real=8),
    "dc": dict(iterations=2, batch_real=8, outer_loop=2, inner_loop=2),
    "mtt": dict(
        iterations=2,
        syn_steps=2,
        expert_epochs=1,
        max_start_epoch=0,
        experts=ExpertConfig(num_experts=1, epochs=1, model=ModelConfig(width=8)),
    ),
}


@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
def test_a_short_run_gives_the_same_set_with_and_without_fusion(method, small, tiny_model, monkeypatch):
    options = dict(METHOD_RUNS[method])
    if method != "mtt":
        options["model"] = tiny_model
    start = distill(method, small, ipc=2, seed=0, progress=False, **{**options, "iterations": 0}).images
    fused, stock = run_both(monkeypatch, lambda: distill(method, small, ipc=2, seed=0, progress=False, **options))
    change = (stock.images - start).norm()
    assert change > 0  # the images moved
    assert (fused.images - stock.images).norm() / change < 0.01


def test_evaluation_is_unchanged_by_fusion(small, tiny_model, monkeypatch):
    syn = distill("random", small, ipc=5, seed=0)
    cfg = EvalConfig(model=tiny_model, train=TrainConfig(epochs=20), num_nets=1)
    fused, stock = run_both(monkeypatch, lambda: evaluate_synthetic(syn, small, cfg, seed=0))
    # 20 epochs of SGD from the same seed: predictions agree except where rounding tips an argmax
    assert abs(fused.accuracy[0] - stock.accuracy[0]) <= 0.01


# --- 2x2 average pool as a matmul ---
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4, 32, 32), (2, 5, 8, 6), (1, 1, 2, 2), (2, 3, 7, 9)])
def test_pool_as_matmul_matches_avg_pool2d_to_second_order(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)
    out_grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen, dtype=dtype)
    results = []
    for pool in (models.avg_pool_2x2, lambda v: F.avg_pool2d(v, 2)):
        y = pool(x)
        (dx,) = torch.autograd.grad(y, x, out_grad, create_graph=True)
        (ddx,) = torch.autograd.grad((dx * x).sum(), x)  # a double backward, as MTT takes through the net
        results.append((y, dx, ddx))
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    for ours, stock in zip(*results):
        torch.testing.assert_close(ours, stock, **tol)


def test_pool_as_matmul_is_used_where_it_applies_and_can_be_switched_off(monkeypatch):
    calls = []
    real = F.avg_pool2d
    monkeypatch.setattr(F, "avg_pool2d", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    pool = models.AvgPool2x2()
    assert isinstance(pool, nn.AvgPool2d)  # fastpath and other code check the type
    pool(torch.randn(2, 3, 8, 8))
    assert calls == []  # the matmul
    pool(torch.randn(2, 3, 7, 8))  # odd height
    pool(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    pool(torch.randn(3, 8, 8))  # unbatched
    assert len(calls) == 3
    monkeypatch.setattr(models, "POOL_AS_MATMUL", False)
    pool(torch.randn(2, 3, 8, 8))
    assert len(calls) == 4
    net = ConvNet(1, 10, (28, 28), width=8)
    assert [type(m) for m in net.features[3::4]] == [models.AvgPool2x2] * 3
    assert list(net.state_dict()) == list(ConvNet(1, 10, (28, 28), width=8, pool="max").state_dict())


def test_pool_matrix_made_under_inference_mode_still_trains():
    """The matrix is cached; one first made inside torch.inference_mode must not be an inference
    tensor, or autograd could not save it for a later training step."""
    models._pool_matrix.cache_clear()
    with torch.inference_mode():
        models.avg_pool_2x2(torch.randn(1, 2, 6, 6))
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    models.avg_pool_2x2(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))


def test_a_convnet_trains_alike_with_either_pool(monkeypatch):
    net = affine_net(1, (28, 28))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=gen)
    loss_m, dx_m, g_m = loss_and_grads(net, x, y, fuse=True)
    monkeypatch.setattr(models, "POOL_AS_MATMUL", False)
    loss_s, dx_s, g_s = loss_and_grads(net, x, y, fuse=True)
    torch.testing.assert_close(loss_m, loss_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_m, dx_s, rtol=1e-10, atol=1e-12)
    for name in g_s:
        torch.testing.assert_close(g_m[name], g_s[name], rtol=1e-9, atol=1e-12, msg=name)


def test_the_allocator_setting_is_made_at_import_and_can_be_declined():
    code = "import ddcore; print(ddcore.MALLOC_TUNED)"
    env = {k: v for k, v in os.environ.items() if k != "DDCORE_MALLOC"}
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    declined = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "DDCORE_MALLOC": "default"},
    )
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    assert tuned.stdout.strip() == str(glibc)
    assert declined.stdout.strip() == "False"


# --- chunked backward: bounded memory, the same step ---
def _one_step(chunk_size, risk=None, soft=False, norm="instance"):
    from ddcore.train import train_network

    torch.manual_seed(0)
    net = ConvNet(1, 10, (16, 16), width=8, norm=norm).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (40,), generator=gen)
    if soft:
        y = torch.softmax(torch.randn(40, 10, generator=gen, dtype=torch.float64), 1)
    cfg = TrainConfig(
        epochs=1, batch_size=40, momentum=0.0, weight_decay=0.0, decay_at_half=False, chunk_size=chunk_size
    )
    losses = train_network(net, x, y, cfg, None, gen, risk=risk)
    return losses, torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("soft", [False, True])
def test_chunked_backward_takes_the_same_step_for_the_mean_loss(soft):
    (loss_whole,), whole = _one_step(None, soft=soft)
    (loss_chunked,), chunked = _one_step(7, soft=soft)
    assert loss_chunked == pytest.approx(loss_whole, rel=1e-12)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)


def test_chunked_backward_takes_the_same_step_for_the_robust_risk():
    from ddcore.robust import robust_risk

    ids = torch.arange(40) % 3

    def risk(losses, idx):
        return robust_risk(losses, ids[idx], alpha=0.3, max_weight=1.0)

    (loss_whole,), whole = _one_step(None, risk=risk)
    (loss_chunked,), chunked = _one_step(9, risk=risk)
    (_,), mean_step = _one_step(None)
    assert loss_chunked == pytest.approx(loss_whole, rel=1e-12)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(mean_step, whole)  # the risk really changed the step


def test_chunks_refuse_batch_norm_and_bad_sizes():
    with pytest.raises(ValueError, match="batch norm"):
        _one_step(7, norm="batch")
    with pytest.raises(ValueError, match="chunk_size=0"):
        TrainConfig(chunk_size=0)


def test_dc_robust_with_chunks_gives_the_same_set(small, tiny_model):
    from ddcore.robust import RobustConfig

    options = dict(iterations=2, batch_real=8, outer_loop=2, inner_loop=1, model=tiny_model)
    # dc_risk='network': chunk_size acts on the network step, which the default ('target') skips
    whole = distill("dc", small, ipc=1, seed=0, progress=False, robust=RobustConfig(dc_risk="network"), **options)
    chunked = distill(
        "dc", small, ipc=1, seed=0, progress=False, robust=RobustConfig(chunk_size=16, dc_risk="network"), **options
    )
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-5)


# --- DC's classes in one batched pass ---
def test_dc_with_batched_classes_gives_the_loop_s_set(small, tiny_model):
    options = dict(iterations=2, batch_real=8, outer_loop=2, inner_loop=2, model=tiny_model, progress=False)
    loop = distill("dc", small, ipc=2, seed=0, **options)
    batched = distill("dc", small, ipc=2, seed=0, batch_classes=True, **options)
    start = distill("dc", small, ipc=2, seed=0, **{**options, "iterations": 0})
    assert (loop.images - start.images).abs().max() > 1e-3  # the images moved
    # same draws and loss; float32 rounding only (measured 4.8e-7)
    torch.testing.assert_close(batched.images, loop.images, rtol=0, atol=1e-5)


def test_batched_class_gradients_match_one_class_at_a_time():
    from ddcore.distill.dc import batched_class_gradients, class_gradients

    net = affine_net(1, (16, 16), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 1, 16, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.arange(3)[:, None].expand(-1, 4)
    batched = batched_class_gradients(net, x, y, create_graph=True)
    for c in range(3):
        one = class_gradients(net, x[c], y[c], create_graph=True)
        for b, o in zip(batched, one):
            torch.testing.assert_close(b[c], o, rtol=1e-10, atol=1e-12)
    # differentiable w.r.t. the images, as DC's synthetic side needs
    (g_batched,) = torch.autograd.grad(sum(g.square().sum() for g in batched), x)
    (g_loop,) = torch.autograd.grad(
        sum(g.square().sum() for c in range(3) for g in class_gradients(net, x[c], y[c], create_graph=True)), x
    )
    torch.testing.assert_close(g_batched, g_loop, rtol=1e-9, atol=1e-12)


def test_batched_classes_need_equal_real_batches(mnist5k, tiny_model):
    from ddcore.data import subset_per_class

    uneven = subset_per_class(mnist5k, 6, seed=0)
    keep = torch.ones(len(uneven.labels_train), dtype=torch.bool)
    keep[(uneven.labels_train == 3).nonzero()[:2]] = False  # class 3 has 4 images, the others 6
    import dataclasses

    uneven = dataclasses.replace(uneven, images_train=uneven.images_train[keep], labels_train=uneven.labels_train[keep])
    with pytest.raises(ValueError, match="batch_classes=True needs batch_real=6"):
        distill("dc", uneven, ipc=1, iterations=1, batch_real=6, batch_classes=True, model=tiny_model, progress=False)
