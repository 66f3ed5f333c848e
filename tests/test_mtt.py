"""Trajectory matching's memory options: recomputed student steps give the same loss and gradients
as kept ones, and the default configs recompute where keeping every step would not fit (issue #17)."""

import weakref

import pytest
import torch

from ddcore.augment import dsa_for
from ddcore.distill import distill, method_config
from ddcore.distill import mtt as mtt_module
from ddcore.distill.mtt import RECOMPUTE_ABOVE, recomputes, trajectory_matching_loss
from ddcore.experts import ExpertConfig, flat_params
from ddcore.models import ModelConfig, create_model

TINY = ModelConfig(width=8)
TRAJECTORY = dict(
    syn_steps=3, expert_epochs=1, max_start_epoch=1, experts=ExpertConfig(num_experts=1, epochs=2, model=TINY)
)


def _problem(n: int = 30, channels: int = 3, side: int = 16, dtype=torch.float32):
    """A width-8 ConvNet, one made-up trajectory of 3 epochs, n images of `side` x `side`, 10 classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model("convnet", channels, 10, (side, side), width=8).to(dtype)
    start = flat_params(net)
    gen = torch.Generator().manual_seed(0)
    trajectory = torch.stack(
        [start + 0.01 * k * torch.randn(start.shape, generator=gen, dtype=dtype) for k in range(3)]
    )
    images = torch.randn(n, channels, side, side, generator=gen, dtype=dtype)
    return net, [trajectory], images, torch.arange(10).repeat(n // 10 + 1)[:n]


def _loss_and_grads(cfg, problem):
    """The trajectory loss (DSA on) and its gradients with respect to the images and the step size."""
    net, trajectories, images, labels = problem
    images = images.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, dtype=images.dtype, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    loss = trajectory_matching_loss(net, trajectories, images, labels, syn_lr, cfg, dsa_for("cifar10"), gen)
    loss.backward()
    return loss.detach(), images.grad, syn_lr.grad


@pytest.mark.parametrize("batch_syn,chunk", [(None, 8), (7, 3), (None, 128)])  # 8: 30 images in 4 chunks
def test_recomputed_steps_give_the_loss_and_gradients_of_kept_steps(batch_syn, chunk):
    problem = _problem(dtype=torch.float64)  # float64: equal up to rounding, whatever the chunks' sums
    options = dict(batch_syn=batch_syn, recompute_chunk=chunk, **TRAJECTORY)
    kept = _loss_and_grads(method_config("mtt", recompute_steps=False, **options), problem)
    redone = _loss_and_grads(method_config("mtt", recompute_steps=True, **options), problem)
    assert kept[1].abs().sum() > 0 and kept[2].abs() > 0  # the images and the step size get gradients
    for a, b in zip(kept, redone):
        assert torch.allclose(a, b, rtol=1e-10, atol=0)


def test_recomputed_steps_in_float32_match_within_float32_rounding():
    kept = _loss_and_grads(method_config("mtt", recompute_steps=False, **TRAJECTORY), _problem())
    redone = _loss_and_grads(method_config("mtt", recompute_steps=True, **TRAJECTORY), _problem())
    for a, b in zip(kept, redone):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def _bytes_kept_for_backward(cfg, problem) -> int:
    """Bytes of the tensors autograd still keeps for the backward once the loss is computed (a
    deterministic stand-in for the peak: each of them lives until loss.backward())."""
    net, trajectories, images, labels = problem
    images = images.clone().requires_grad_(True)
    saved = []  # weak references: a tensor saved by a graph that is already freed is gone

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = trajectory_matching_loss(
            net, trajectories, images, labels, torch.tensor(0.01, requires_grad=True), cfg, None, torch.Generator()
        )
    alive = {t.data_ptr(): t.numel() * t.element_size() for t in (r() for r in saved) if t is not None}
    del loss
    return sum(alive.values())


def test_recomputed_steps_keep_no_step_activations():
    problem = _problem(n=20)
    one_step = _bytes_kept_for_backward(
        method_config("mtt", recompute_steps=False, **{**TRAJECTORY, "syn_steps": 1}), problem
    )
    kept = _bytes_kept_for_backward(method_config("mtt", recompute_steps=False, **TRAJECTORY), problem)
    redone = _bytes_kept_for_backward(method_config("mtt", recompute_steps=True, **TRAJECTORY), problem)
    assert kept > 2.5 * one_step  # three steps' graphs
    assert redone < one_step / 5  # each step's inputs only (its 20 images and the parameters), no activations


def test_default_configs_recompute_at_ipc_50_and_keep_graphs_at_ipc_1_and_10():
    mtt, d3 = method_config("mtt"), method_config("d3")
    assert (mtt.batch_syn, mtt.recompute_steps, d3.batch_syn, d3.recompute_steps) == (None, None, None, None)
    # MTT's batch: every synthetic image (10 classes x IPC); D3's: the means and one draw per prior
    assert recomputes(mtt, 500) and not recomputes(mtt, 100) and not recomputes(mtt, 10)
    assert recomputes(d3, 1000) and recomputes(d3, 200)
    assert mtt.syn_steps * 100 == RECOMPUTE_ABOVE  # IPC 10 at 10 steps: the largest graph kept by default
    assert not recomputes(method_config("mtt", recompute_steps=False), 500)  # keeping every step, on request
    assert recomputes(method_config("mtt", recompute_steps=True), 10)


def test_the_default_mtt_config_at_ipc_50_on_the_cifar10_shape_recomputes_every_step(monkeypatch):
    calls = []  # a stand-in for the recomputed step that only counts (the student does not move)
    monkeypatch.setattr(mtt_module.RecomputedStep, "apply", lambda theta, *a: calls.append(1) or theta)
    net, trajectories, images, labels = _problem(n=500, side=32)  # IPC 50 x 10 classes, 3 x 32 x 32
    cfg = method_config("mtt", **{**TRAJECTORY, "syn_steps": 10})
    loss = trajectory_matching_loss(net, trajectories, images, labels, torch.tensor(0.01), cfg, None, torch.Generator())
    assert len(calls) == cfg.syn_steps and loss.item() == pytest.approx(1.0)


def test_distill_with_recomputed_steps_is_deterministic_and_matches_kept_steps(small):
    kwargs = dict(ipc=2, seed=0, progress=False, iterations=2, **{**TRAJECTORY, "syn_steps": 2})
    redone = distill("mtt", small, recompute_steps=True, **kwargs)
    again = distill("mtt", small, recompute_steps=True, **kwargs)
    kept = distill("mtt", small, recompute_steps=False, **kwargs)
    assert torch.equal(redone.images, again.images)
    assert torch.allclose(redone.images, kept.images, rtol=0, atol=1e-5)  # float32 rounding x lr_img 100: ~3e-6


def test_memory_options_are_checked():
    with pytest.raises(TypeError, match="recompute_steps"):
        method_config("mtt", recompute_steps="yes")
    with pytest.raises(TypeError, match="recompute_steps"):
        method_config("d3", recompute_steps=1)
    with pytest.raises(ValueError, match="batch_syn"):
        method_config("d3", batch_syn=0)
    with pytest.raises(ValueError, match="recompute_chunk"):
        method_config("mtt", recompute_chunk=0)
