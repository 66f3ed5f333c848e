"""Students side by side (EvalConfig.side_by_side, ddcore/students.py): the same students as
training them one after the other, up to float rounding."""

import pytest
import torch

from ddcore.accel import AccelConfig
from ddcore.augment import dsa_for
from ddcore.distill import distill
from ddcore.evaluate import EvalConfig, evaluate_synthetic, students
from ddcore.models import ModelConfig, create_model
from ddcore.students import train_side_by_side
from ddcore.train import TrainConfig, predict, train_network

# 4 epochs of 3 batches (ipc 2): momentum and weight decay act (strong enough to show beyond the
# tolerance), and the lr drops at epoch 2
RECIPE = TrainConfig(epochs=4, batch_size=8, weight_decay=0.05)


def _assert_same_students(a, b, images_test):
    """Each state tensor within 1% of its size (L2; integer buffers equal), and the same predictions.

    Why not an elementwise 1e-3: a width-8 student's training can amplify rounding. In the D3 test
    below, nudging student 0's initial weights by 1e-7 (relative) and training both one after the
    other moves its weights by 6e-7 after 2 epochs but by 2.4e-3 (a norm's bias) after 4, the same
    gap as side by side; a wrong seed, batch order, DSA draw or sample moves them by order 1."""
    for k, (net_a, net_b) in enumerate(zip(a, b)):
        for (name, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            if not p.is_floating_point():
                assert torch.equal(p, q), f"student {k}, {name}: {p} != {q}"
                continue
            gap, size = (q - p).norm().item(), p.norm().item()
            assert gap <= 1e-2 * size + 1e-6, f"student {k}, {name}: |a - b| = {gap:.2e}, |a| = {size:.2e}"
        agree = (predict(net_a, images_test) == predict(net_b, images_test)).double().mean()
        assert agree > 0.99, f"student {k}: predictions agree on {agree:.1%}"


def test_side_by_side_trains_each_student_as_one_after_the_other(small):
    syn = distill("random", small, ipc=2, progress=False)
    cfg = EvalConfig(model=ModelConfig(width=8), train=RECIPE, num_nets=3)  # DSA on
    together = EvalConfig(model=cfg.model, train=RECIPE, num_nets=3, side_by_side=True)
    a, b = list(students(syn, small, cfg, 5, "cpu")), list(students(syn, small, together, 5, "cpu"))
    _assert_same_students(a, b, small.images_test[:1000])
    # not vacuous: the students differ from one another (own seed, init, batches and DSA draws)
    assert not torch.allclose(a[0].classifier.weight, a[1].classifier.weight, rtol=0.1)
    with pytest.raises(AssertionError, match="student 0"):  # and the check tells another seed's student apart
        _assert_same_students(a[:1], b[1:2], small.images_test[:1000])
    rows_a, rows_b = evaluate_synthetic(syn, small, cfg, seed=5), evaluate_synthetic(syn, small, together, seed=5)
    assert rows_b.seed.tolist() == rows_a.seed.tolist() == [5, 6, 7]
    assert (rows_a.accuracy - rows_b.accuracy).abs().max() < 0.005


def _resample(seed: int, n: int = 20):
    """Fresh images and soft labels at every call, from the hook's own generator."""
    gen = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(n, 1, 28, 28, generator=gen), torch.softmax(3 * torch.randn(n, 10, generator=gen), 1))


@pytest.mark.parametrize(
    "model",
    [ModelConfig(width=8), ModelConfig(width=8, norm="batch"), ModelConfig("mlp", width=8)],
    ids=["instance", "batch", "mlp"],
)
def test_soft_labels_resampling_and_running_statistics_match_too(small, model):
    from ddcore.models import build_model

    def nets():
        torch.manual_seed(0)
        return [build_model(model, 1, 10, (28, 28)) for _ in range(2)]

    first = [_resample(10 + k)() for k in range(2)]  # placeholders; training resamples at epoch 0
    seq, sbs = nets(), nets()
    for k, net in enumerate(seq):
        train_network(
            net, *first[k], RECIPE, dsa_for("mnist5k"), torch.Generator().manual_seed(k), resample=_resample(10 + k)
        )
    losses = train_side_by_side(
        sbs,
        first,
        RECIPE,
        dsa_for("mnist5k"),
        [torch.Generator().manual_seed(k) for k in range(2)],
        [_resample(10 + k) for k in range(2)],
    )
    assert len(losses) == 2 and len(losses[0]) == RECIPE.epochs
    _assert_same_students(seq, sbs, small.images_test[:500])


def test_a_d3_set_with_soft_labels_gives_each_student_its_own_fresh_samples(small):
    from ddcore.decoder import DecoderConfig
    from ddcore.experts import ExpertConfig
    from ddcore.synthetic import SyntheticSet

    tiny = ModelConfig(width=8)
    syn = distill(
        "d3",
        small,
        ipc=2,
        seed=0,
        progress=False,
        soft_labels=False,
        iterations=1,
        batch_real=8,
        decoder=DecoderConfig(latent_dim=4, width=4),
        syn_steps=2,
        expert_epochs=1,
        max_start_epoch=1,
        experts=ExpertConfig(num_experts=1, epochs=2, model=tiny),
    )
    soft = torch.softmax(3 * torch.nn.functional.one_hot(syn.labels, 10).float(), 1)  # (20, 10) soft targets
    syn = SyntheticSet(syn.images, soft, syn.meta, syn.extras)
    cfg = EvalConfig(model=tiny, train=RECIPE, num_nets=2)
    together = EvalConfig(model=tiny, train=RECIPE, num_nets=2, side_by_side=True)
    _assert_same_students(
        list(students(syn, small, cfg, 0, "cpu")),
        list(students(syn, small, together, 0, "cpu")),
        small.images_test[:500],
    )


def test_lr_drops_tenfold_at_half_the_epochs_side_by_side(small, monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    syn = distill("random", small, ipc=1, progress=False)
    evaluate_synthetic(
        syn, small, EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=4), num_nets=2, side_by_side=True)
    )
    assert seen == pytest.approx([0.01, 0.01, 0.001, 0.001])  # one optimizer step for both students


def test_side_by_side_is_deterministic(small):
    syn = distill("random", small, ipc=1, progress=False)
    cfg = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=2, side_by_side=True)
    assert evaluate_synthetic(syn, small, cfg, seed=1).equals(evaluate_synthetic(syn, small, cfg, seed=1))


def test_unsupported_settings_raise_and_name_the_option(small):
    for accel in (AccelConfig(channels_last=True), AccelConfig(compile=True)):
        with pytest.raises(NotImplementedError, match="side_by_side=True.*accel"):
            EvalConfig(side_by_side=True, accel=accel)
    with pytest.raises(TypeError, match="side_by_side must be True or False"):
        EvalConfig(side_by_side="auto")
    syn = distill("random", small, ipc=2, progress=False)
    chunked = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=1, chunk_size=4), side_by_side=True)
    with pytest.raises(NotImplementedError, match="side_by_side does not support TrainConfig.chunk_size=4"):
        evaluate_synthetic(syn, small, chunked)
    net = create_model("convnet", 1, 10, (28, 28), width=8)
    with pytest.raises(ValueError, match="2 nets need as many"):
        train_side_by_side([net, net], [(syn.images, syn.labels)], RECIPE, None, [torch.Generator()] * 2)
