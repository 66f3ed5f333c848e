"""GPU speed options (ddcore.accel): off changes nothing; channels_last and bf16 stay close to fp32.

bf16 autocast runs on the CPU too, which is how these tests exercise it. Tolerances are what
was measured here (2-core CPU, one thread), with a margin; each is stated next to its assert.
"""

import shutil

import pytest
import torch
import torch.nn.functional as F

from ddcore.accel import AccelConfig, autocast, maybe_compile, to_memory_format
from ddcore.decoder import DecoderConfig
from ddcore.distill import distill
from ddcore.evaluate import EvalConfig, evaluate_synthetic, train_student
from ddcore.experts import ExpertConfig
from ddcore.models import ModelConfig, create_model
from ddcore.synthetic import SyntheticSet
from ddcore.train import TrainConfig

TINY = ModelConfig(width=8)
# ReLU's gradient jumps at 0: a rounding difference (~1e-7) in a pre-activation that sits near 0
# can switch a unit on, and then the sets differ by ~1e-2 (measured once, DM seed 0 with DSA).
# A smooth activation keeps layout-only differences at rounding level for the allclose tests.
SMOOTH = ModelConfig(width=8, act="sigmoid")
TRAJECTORY = {
    "syn_steps": 2,
    "expert_epochs": 1,
    "max_start_epoch": 1,
    "experts": ExpertConfig(num_experts=1, epochs=2, model=TINY),
}
FAST = {
    "dm": {"iterations": 3, "batch_real": 8, "model": TINY},
    "dc": {"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "model": TINY},
    "mtt": {"iterations": 2, **TRAJECTORY},
    "d3": {
        "iterations": 2,
        "batch_real": 8,
        "decoder": DecoderConfig(latent_dim=4, width=4),
        "soft_labels": False,
        **TRAJECTORY,
    },
}
BF16 = AccelConfig(amp="bf16")


def change(syn: SyntheticSet, start: SyntheticSet) -> torch.Tensor:
    return syn.images - start.images


# --- the config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("amp", ["fp16", 1, "BF16"])
def test_unknown_amp_is_refused_with_its_name_and_the_choices(amp):
    with pytest.raises(ValueError, match=r"amp=.* is not allowed; choose one of \['off', 'bf16'\]"):
        AccelConfig(amp=amp)


def test_flags_must_be_booleans_and_distill_wants_a_config(small):
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        AccelConfig(channels_last="yes")
    with pytest.raises(TypeError, match="accel must be a ddcore.accel.AccelConfig"):
        distill("dm", small, ipc=2, progress=False, accel="bf16", **FAST["dm"])
    with pytest.raises(TypeError, match="accel must be a ddcore.accel.AccelConfig"):
        EvalConfig(accel="bf16")


def test_helpers_are_no_ops_by_default_and_act_when_asked():
    net, x = create_model("convnet", 1, 10, (28, 28), width=8), torch.randn(2, 1, 28, 28)
    off = AccelConfig()
    assert to_memory_format(x, off) is x and to_memory_format(net, off) is net and maybe_compile(net, off) is net
    on = AccelConfig(channels_last=True)
    assert to_memory_format(x, on).is_contiguous(memory_format=torch.channels_last)
    assert net.features[0].weight.is_contiguous()
    to_memory_format(net, on)
    assert net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    with autocast("cpu", off):
        assert net(x).dtype == torch.float32
    with autocast(torch.device("cpu"), BF16):
        assert net(x).dtype == torch.bfloat16


# --- distillation -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(FAST))
def test_default_accel_changes_nothing(small, method):
    plain = distill(method, small, ipc=2, seed=0, progress=False, **FAST[method])
    given = distill(method, small, ipc=2, seed=0, progress=False, accel=AccelConfig(), **FAST[method])
    assert torch.equal(plain.images, given.images) and torch.equal(plain.labels, given.labels)
    assert plain.meta == given.meta and "accel" not in plain.meta
    for k in plain.extras:
        assert torch.equal(plain.extras[k], given.extras[k])


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_channels_last_matches_the_default_layout(small, method, tmp_path):
    opts = dict(FAST[method], model=SMOOTH)
    plain = distill(method, small, ipc=2, seed=0, progress=False, **opts)
    last = distill(method, small, ipc=2, seed=0, progress=False, accel=AccelConfig(channels_last=True), **opts)
    # measured max |difference| over seeds 0-2: dm 2.4e-7, dc 1.7e-6 (rounding of another kernel order)
    torch.testing.assert_close(last.images, plain.images, atol=1e-5, rtol=1e-5)
    assert last.meta["accel"]["channels_last"] is True
    last.save(tmp_path / "set.safetensors")  # stored contiguous: safetensors refuses other layouts


def test_channels_last_d3_set_can_be_saved(small, tmp_path):
    syn = distill("d3", small, ipc=2, seed=0, progress=False, accel=AccelConfig(channels_last=True), **FAST["d3"])
    syn.save(tmp_path / "d3.safetensors")
    assert torch.isfinite(syn.images).all()


def test_bf16_dm_stays_close_to_fp32_but_really_runs(small):
    start = distill("dm", small, ipc=2, seed=0, progress=False, **dict(FAST["dm"], iterations=0))
    fp32 = distill("dm", small, ipc=2, seed=0, progress=False, **FAST["dm"])
    bf16 = distill("dm", small, ipc=2, seed=0, progress=False, accel=BF16, **FAST["dm"])
    assert bf16.images.dtype == torch.float32 and torch.isfinite(bf16.images).all()
    assert (bf16.images - fp32.images).abs().max() > 1e-3  # bf16 did run (measured 0.05)
    moved = change(fp32, start)
    rel = (change(bf16, start) - moved).norm() / moved.norm()
    # relative L2 difference of the change from the initial images, measured 0.060-0.087 over seeds
    # 0-2 at width 8 and 32: bf16's 8-bit mantissa gives ~0.4% feature error and ~7% gradient error
    # (the DM gradient is a difference of nearly equal means)
    assert rel < 0.15


def test_bf16_methods_with_unrolled_or_double_backward_run(small):
    for method in ("dc", "mtt", "d3"):
        fp32 = distill(method, small, ipc=2, seed=0, progress=False, **FAST[method])
        bf16 = distill(method, small, ipc=2, seed=0, progress=False, accel=BF16, **FAST[method])
        assert torch.isfinite(bf16.images).all() and bf16.images.dtype == torch.float32
        assert not torch.equal(bf16.images, fp32.images), method


# --- evaluation ---------------------------------------------------------------------------------
def test_bf16_evaluation_learns_like_fp32(small):
    syn = distill("random", small, ipc=5, seed=0, progress=False)
    cfg = EvalConfig(model=TINY, train=TrainConfig(epochs=20), num_nets=3)
    fp32 = evaluate_synthetic(syn, small, cfg, seed=0).accuracy
    bf16 = evaluate_synthetic(
        syn, small, EvalConfig(model=TINY, train=cfg.train, num_nets=3, accel=BF16), seed=0
    ).accuracy
    assert fp32.mean() > 0.25  # measured 0.36; chance is 0.1
    # measured per-network |difference| <= 0.002. With autocast's weight cache on, every forward
    # of the loop used the first step's weights and students stayed at 0.10-0.23.
    assert (bf16 - fp32).abs().max() < 0.02


def test_bf16_student_really_differs(small):
    images, labels = small.images_train[:40], small.labels_train[:40]
    cfg = EvalConfig(model=TINY, train=TrainConfig(epochs=2), dsa=False)
    a = train_student(images, labels, small, cfg, 0, "cpu")
    b = train_student(images, labels, small, EvalConfig(model=TINY, train=cfg.train, dsa=False, accel=BF16), 0, "cpu")
    diffs = [float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())]
    assert max(diffs) > 0 and max(diffs) < 1e-2  # measured max 1.4e-4 after 2 steps


# --- torch.compile ------------------------------------------------------------------------------
def _compile_unavailable() -> str | None:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile's CPU backend needs a C++ compiler (g++), and none is on PATH"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_compile_unavailable() is not None, reason=str(_compile_unavailable()))
def test_compiled_student_step_matches_eager(small, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)  # no pool of compile workers
    x, y = small.images_train[:16], small.labels_train[:16]

    def one_step(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    torch.manual_seed(0)
    eager = create_model("convnet", 1, 10, (28, 28), width=8)
    torch.manual_seed(0)
    plain = create_model("convnet", 1, 10, (28, 28), width=8)
    compiled = maybe_compile(plain, AccelConfig(compile=True))
    assert compiled is not plain
    assert abs(one_step(compiled) - one_step(eager)) < 1e-5
    for p, q in zip(plain.parameters(), eager.parameters()):  # the compiled module trained `plain`
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
