"""Experts, trajectory matching, the decoder, the MMD, D3 sets, soft labels and storage."""

import pytest
import torch

from ddcore.decoder import (
    Decoder,
    DecoderConfig,
    decode,
    decode_with_means,
    epoch_images,
    load_decoder,
    num_parameters,
    sample_latents,
)
from ddcore.distill import distill, method_config
from ddcore.distill.d3 import mmd2_unbiased, mmd_draws
from ddcore.distill.mtt import trajectory_matching_loss
from ddcore.evaluate import EvalConfig, epoch_sampler, evaluate_synthetic
from ddcore.experts import ExpertConfig, expert_dir, flat_params, forward_with, load_or_train_experts, unflatten
from ddcore.labels import (
    LabellerConfig,
    label_mismatch,
    soft_labels,
    train_labeller,
    with_hard_labels,
    with_soft_labels,
)
from ddcore.models import ModelConfig, create_model
from ddcore.storage import d3_ipc_equivalent, storage
from ddcore.synthetic import SyntheticSet
from ddcore.train import TrainConfig

TINY = ModelConfig(width=8)
EXPERTS = ExpertConfig(num_experts=2, epochs=2, model=TINY)
D3_FAST = dict(
    iterations=2,
    batch_real=8,
    mmd_samples=4,
    mmd_real=8,
    decoder=DecoderConfig(latent_dim=4, width=4),
    syn_steps=2,
    expert_epochs=1,
    max_start_epoch=1,
    experts=ExpertConfig(num_experts=1, epochs=2, model=TINY),
)


# --- experts -----------------------------------------------------------------------------------


def test_flat_params_round_trip_and_functional_forward_match_the_module():
    net = create_model("convnet", 1, 10, (28, 28), width=8)
    flat = flat_params(net)
    assert flat.numel() == sum(p.numel() for p in net.parameters())
    for (name, p), v in zip(net.named_parameters(), unflatten(net, flat).values()):
        assert torch.equal(p, v), name
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(forward_with(net, flat, x), net(x), atol=1e-6)
    assert torch.allclose(forward_with(net, flat, x, features=True), net.embed(x), atol=1e-6)
    with pytest.raises(ValueError, match="flat vector has 5 values"):
        unflatten(net, torch.zeros(5))


def test_batch_norm_networks_are_refused_for_trajectory_matching():
    net = create_model("convnet", 1, 10, (28, 28), width=8, norm="batch")
    with pytest.raises(ValueError, match="without buffers"):
        forward_with(net, flat_params(net), torch.randn(2, 1, 28, 28))


def test_experts_are_trained_once_saved_and_reused(small, tmp_path):
    first = load_or_train_experts(small, EXPERTS, seed=0, device="cpu", root=tmp_path)
    assert len(first) == 2 and first[0].shape == (
        3,
        flat_params(create_model("convnet", 1, 10, (28, 28), width=8)).numel(),
    )
    assert not torch.equal(first[0][0], first[0][-1])  # training moved the parameters
    assert not torch.equal(first[0][0], first[1][0])  # experts start from different inits
    files = sorted(expert_dir(tmp_path, small, EXPERTS).glob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = load_or_train_experts(small, EXPERTS, seed=0, device="cpu", root=tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not retrained
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_expert_file_of_another_config_is_refused(small, tmp_path):
    load_or_train_experts(small, EXPERTS, seed=0, device="cpu", root=tmp_path)
    folder = expert_dir(tmp_path, small, EXPERTS)
    other = ExpertConfig(num_experts=2, epochs=3, model=TINY)
    target = expert_dir(tmp_path, small, other)
    target.mkdir()
    (folder / "expert_0_0.safetensors").rename(target / "expert_0_0.safetensors")
    with pytest.raises(ValueError, match="trained with another config"):
        load_or_train_experts(small, other, seed=0, device="cpu", root=tmp_path)


# --- trajectory matching -------------------------------------------------------------------------


class _Steps:
    syn_steps, expert_epochs, max_start_epoch, batch_syn = 3, 1, 1, None
    recompute_steps, recompute_chunk = None, 128  # MTTConfig's memory defaults


def test_trajectory_loss_is_one_when_the_student_does_not_move(small):
    trajectories = load_or_train_experts(small, EXPERTS, seed=0, device="cpu")
    net = create_model("convnet", 1, 10, (28, 28), width=8)
    images = small.images_train[:20].clone().requires_grad_(True)
    labels = small.labels_train[:20]
    gen = torch.Generator().manual_seed(0)
    loss = trajectory_matching_loss(net, trajectories, images, labels, torch.tensor(0.0), _Steps, None, gen)
    assert loss.item() == pytest.approx(1.0)


def test_trajectory_loss_sends_gradients_to_images_and_step_size(small):
    trajectories = load_or_train_experts(small, EXPERTS, seed=0, device="cpu")
    net = create_model("convnet", 1, 10, (28, 28), width=8)
    images = small.images_train[:20].clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    loss = trajectory_matching_loss(
        net, trajectories, images, small.labels_train[:20], syn_lr, _Steps, None, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(loss)
    assert images.grad.abs().sum() > 0 and syn_lr.grad.abs() > 0


def test_mtt_option_checks():
    from ddcore.distill import method_config

    with pytest.raises(ValueError, match="must be <= experts.epochs"):
        method_config("mtt", max_start_epoch=19, expert_epochs=2)
    with pytest.raises(ValueError, match="syn_steps"):
        method_config("mtt", syn_steps=0)


# --- decoder and MMD -----------------------------------------------------------------------------


@pytest.mark.parametrize("channels,im_size", [(1, (28, 28)), (1, (16, 16)), (3, (32, 32)), (1, (8, 8)), (3, (30, 30))])
def test_decoder_makes_images_of_the_data_set_shape(channels, im_size):
    dec = Decoder(DecoderConfig(latent_dim=6, width=8), channels, im_size)
    out = dec(torch.randn(5, 6))
    assert out.shape == (5, channels, *im_size)
    assert out.min() >= -1 and out.max() <= 1


def test_sampling_is_seeded_and_grouped_by_prior():
    mu, logvar = torch.randn(4, 3), torch.full((4, 3), -20.0)  # tiny variance: samples sit on the means
    z = sample_latents(mu, logvar, 2, torch.Generator().manual_seed(0))
    assert z.shape == (8, 3) and torch.allclose(z[::2], mu, atol=1e-3) and torch.allclose(z[1::2], mu, atol=1e-3)
    a = sample_latents(mu, torch.zeros(4, 3), 2, torch.Generator().manual_seed(1))
    b = sample_latents(mu, torch.zeros(4, 3), 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_epoch_images_are_the_means_then_one_fresh_sample_per_prior(small):
    dec = Decoder(DecoderConfig(latent_dim=4, width=4), 1, (28, 28))
    mu, logvar, labels = torch.randn(6, 4), torch.zeros(6, 4), torch.arange(6) % 3
    gen = torch.Generator().manual_seed(0)
    x1, y1 = epoch_images(dec, mu, logvar, labels, small.normalize, gen)
    x2, _ = epoch_images(dec, mu, logvar, labels, small.normalize, gen)
    assert x1.shape == (12, 1, 28, 28) and torch.equal(y1, torch.cat([labels, labels]))
    assert not torch.equal(x1[6:], x2[6:])  # fresh samples each epoch
    unit = small.to_unit(x1)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5  # tanh read as [0, 1] pixels


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 16, generator=gen), torch.randn(200, 16, generator=gen)
    same = mmd2_unbiased(x, y)
    shifted = mmd2_unbiased(x, y + 1.0)
    assert abs(same.item()) < 0.02 and shifted.item() > 10 * abs(same.item())
    assert torch.allclose(mmd2_unbiased(x, y + 1), mmd2_unbiased(y + 1, x), atol=1e-5)


def test_mmd_gradient_pulls_samples_towards_the_real_ones():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(64, 8, generator=gen)
    syn = (torch.randn(16, 8, generator=gen) + 2).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=5.0)
    before = mmd2_unbiased(syn, real).item()
    for _ in range(30):
        opt.zero_grad()
        mmd2_unbiased(syn, real).backward()
        opt.step()
    assert mmd2_unbiased(syn, real).item() < 0.5 * before


# --- D3 sets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("matching", ["mtt", "dm", "none"])
def test_d3_learns_priors_and_decoder_and_saves_them(small, tmp_path, matching):
    syn = distill("d3", small, ipc=2, seed=0, progress=False, matching=matching, soft_labels=False, **D3_FAST)
    assert syn.meta["generative"] == "d3" and syn.meta["lpc"] == 2
    assert syn.extras["mu"].shape == (20, 4) and syn.extras["logvar"].shape == (20, 4)
    assert syn.images.shape == (20, 1, 28, 28)  # the decoded mean images
    path = tmp_path / "d3.safetensors"
    syn.save(path)
    back = SyntheticSet.load(path)
    dec = load_decoder(back, 1, (28, 28))
    with torch.no_grad():  # the stored means were decoded with one draw per prior, seeded with the run's seed
        again, _ = decode_with_means(
            dec, back.extras["mu"], back.extras["logvar"], 1, small.normalize, torch.Generator().manual_seed(0)
        )
    assert torch.allclose(again, syn.images, atol=1e-5)  # everything needed is in the file


def test_d3_training_moves_priors_and_decoder(small):
    start = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **dict(D3_FAST, iterations=0))
    after = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **D3_FAST)
    assert not torch.equal(start.extras["mu"], after.extras["mu"])
    assert not torch.equal(start.extras["decoder.fc.weight"], after.extras["decoder.fc.weight"])


def test_d3_lpc_other_than_ipc_and_mmd_needs_two_per_class(small):
    syn = distill("d3", small, ipc=1, seed=0, progress=False, lpc=3, soft_labels=False, **D3_FAST)
    assert syn.extras["mu"].shape[0] == 30 and syn.meta["ipc"] == 1
    one = distill("d3", small, ipc=1, seed=0, progress=False, soft_labels=False, **D3_FAST)  # 4 MMD draws per prior
    assert one.extras["mu"].shape[0] == 10
    with pytest.raises(ValueError, match="mmd_samples=1 is too small; it must be >= 2"):
        distill("d3", small, ipc=1, seed=0, progress=False, soft_labels=False, **dict(D3_FAST, mmd_samples=1))


def test_d3_soft_labels_come_from_the_labeller_on_mean_images(small, tmp_path):
    labeller_cfg = LabellerConfig(epochs=1, model=TINY)
    syn = distill(
        "d3", small, ipc=2, seed=0, progress=False, labeller=labeller_cfg, experts_dir=str(tmp_path), **D3_FAST
    )
    assert syn.labels.shape == (20, 10) and torch.allclose(syn.labels.sum(1), torch.ones(20))
    labeller = train_labeller(small, labeller_cfg, seed=0, root=tmp_path)  # read back from tmp_path
    assert torch.allclose(syn.labels, soft_labels(labeller, syn.images), atol=1e-5)
    classes = torch.arange(10).repeat_interleave(2)
    assert syn.meta["label_mismatch"] == pytest.approx(float((syn.labels.argmax(1) != classes).double().mean()))


def test_d3_students_see_fresh_samples_each_epoch_and_get_evaluated(small):
    syn = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **D3_FAST)
    sampler = epoch_sampler(syn, small, seed=0, device="cpu")
    (x1, y1), (x2, y2) = sampler(), sampler()
    assert x1.shape == (40, 1, 28, 28) and torch.equal(y1, y2)
    # the stored means were decoded with a draw seeded like this sampler's first epoch (seed 0)
    assert torch.allclose(x1[:20], syn.images, atol=1e-5) and not torch.equal(x1[20:], x2[20:])
    rows = evaluate_synthetic(syn, small, EvalConfig(model=TINY, train=TrainConfig(epochs=2), num_nets=1))
    assert 0.0 <= rows.accuracy.iloc[0] <= 1.0 and rows.method.iloc[0] == "d3"
    assert epoch_sampler(distill("random", small, ipc=2), small, 0, "cpu") is None


# --- labels and storage --------------------------------------------------------------------------


def test_with_soft_labels_keeps_images_and_names_the_method(small):
    labeller = train_labeller(small, LabellerConfig(epochs=1, model=TINY))
    syn = distill("random", small, ipc=2)
    soft = with_soft_labels(syn, labeller)
    assert soft.meta["method"] == "random+soft" and torch.equal(soft.images, syn.images)
    assert soft.labels.shape == (20, 10) and syn.labels.dtype == torch.long  # the original is untouched


def test_storage_of_an_image_set_counts_images_and_labels(small):
    syn = distill("random", small, ipc=3)
    s = storage(syn)
    assert s["images_values"] == 30 * 784 and s["labels_values"] == 30
    assert s["bytes"] == 30 * 784 * 4 + 30 * 8
    assert s["ipc_equivalent"] == pytest.approx((30 * 784 + 30) / (10 * 784))


def test_storage_of_a_d3_set_counts_priors_decoder_and_soft_labels_not_images(small):
    syn = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **D3_FAST)
    syn.labels = torch.full((20, 10), 0.1)
    dec = load_decoder(syn, 1, (28, 28))
    s = storage(syn)
    assert s["images_values"] == 0
    assert s["priors_values"] == 2 * 20 * 4
    assert s["decoder_values"] == num_parameters(dec)
    assert s["labels_values"] == 200
    assert s["values"] == 160 + num_parameters(dec) + 200
    assert s["ipc_equivalent"] == pytest.approx(s["values"] / 7840)


def test_storage_model_matches_a_measured_set_and_the_decoder_pays_off_with_more_classes(small):
    syn = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **D3_FAST)
    syn.labels = torch.full((20, 10), 0.1)
    dec_values = storage(syn)["decoder_values"]
    model = d3_ipc_equivalent(10, 2, 4, dec_values, 784)
    assert model == pytest.approx(storage(syn)["ipc_equivalent"])
    per_class = [d3_ipc_equivalent(c, 2, 4, 50_000, 784) for c in (10, 100)]
    assert per_class[1] < per_class[0]
    with pytest.raises(ValueError, match="lpc"):
        d3_ipc_equivalent(10, 0, 4, 100, 784)


def test_storage_refuses_what_it_cannot_count():
    with pytest.raises(TypeError, match="SyntheticSet"):
        storage(torch.zeros(3))
    with pytest.raises(ValueError, match="num_classes"):
        storage(SyntheticSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), {}))


def test_an_aggregate_of_d3_subtasks_keeps_sampling_and_counts_every_decoder(small):
    from ddcore.federated import aggregate, subset_classes

    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    parts = [
        distill("d3", subset_classes(small, g), ipc=2, seed=i, progress=False, soft_labels=False, **D3_FAST)
        for i, g in enumerate(groups)
    ]
    agg = aggregate(parts, groups, 10)
    s = storage(agg)
    one = storage(parts[0])
    assert s["images_values"] == 0 and s["decoder_values"] == 2 * one["decoder_values"]
    assert s["priors_values"] == 2 * one["priors_values"]
    (x1, y1), (x2, _) = epoch_sampler(agg, small, seed=0, device="cpu")(), epoch_sampler(agg, small, 0, "cpu")()
    assert torch.equal(x1, x2)  # the same seed draws the same epoch
    assert x1.shape == (40, 1, 28, 28) and sorted(y1.unique().tolist()) == list(range(10))
    assert torch.allclose(x1[:10], agg.images[:10], atol=1e-5)  # subtask 0's mean images come first
    rows = evaluate_synthetic(agg, small, EvalConfig(model=TINY, train=TrainConfig(epochs=1), num_nets=1))
    assert len(rows) == 1


@pytest.mark.parametrize("clustering", ["kmeans", "synthetic"])
def test_robust_d3_runs_and_differs_from_plain_d3(small, clustering):
    from ddcore.robust import RobustConfig

    opts = dict(D3_FAST, matching="dm", soft_labels=False)
    plain = distill("d3", small, ipc=2, seed=0, progress=False, **opts)
    robust = distill(
        "d3",
        small,
        ipc=2,
        seed=0,
        progress=False,
        robust=RobustConfig(clustering=clustering, k=2, space="pixels", alpha=0.5),
        **opts,
    )
    assert torch.isfinite(robust.extras["mu"]).all()
    assert not torch.equal(plain.extras["mu"], robust.extras["mu"])


def test_robust_d3_with_one_cluster_and_alpha_one_is_plain_d3(small):
    from ddcore.robust import RobustConfig

    opts = dict(D3_FAST, matching="dm", soft_labels=False)
    plain = distill("d3", small, ipc=2, seed=0, progress=False, **opts)
    one = distill(
        "d3",
        small,
        ipc=2,
        seed=0,
        progress=False,
        robust=RobustConfig(clustering="kmeans", k=1, space="pixels", alpha=1.0),
        **opts,
    )
    assert torch.allclose(plain.extras["mu"], one.extras["mu"], atol=1e-5)


def test_robust_d3_needs_the_mmd_term():
    from ddcore.distill import method_config
    from ddcore.robust import RobustConfig

    with pytest.raises(ValueError, match="needs mmd_weight > 0"):
        method_config("d3", matching="dm", mmd_weight=0.0, robust=RobustConfig())


# --- the authors' objective: two steps, MMD sizes, no DSA, one batch for means and samples ----------


def _record_steps():
    """Every optimizer step taken until the handle is removed: (kind, copy of the first parameter)."""
    steps = []

    def hook(opt, args, kwargs):
        first = opt.param_groups[0]["params"][0]
        steps.append((type(opt).__name__, first.numel(), first.detach().clone()))

    from torch.optim.optimizer import register_optimizer_step_post_hook

    return steps, register_optimizer_step_post_hook(hook)


@pytest.mark.parametrize(
    "matching,mmd_weight,decoder_steps", [("mtt", 1.0, 2), ("dm", 1.0, 2), ("none", 1.0, 1), ("mtt", 0.0, 1)]
)
def test_each_iteration_takes_one_step_per_loss(small, matching, mmd_weight, decoder_steps):
    steps, handle = _record_steps()
    try:
        distill(
            "d3",
            small,
            ipc=2,
            seed=0,
            progress=False,
            soft_labels=False,
            matching=matching,
            mmd_weight=mmd_weight,
            **D3_FAST,
        )
    finally:
        handle.remove()
    adam = [p for kind, _, p in steps if kind == "Adam"]  # the decoder's optimizer
    step_size = [p for kind, n, p in steps if kind == "SGD" and n == 1]  # the student step size (mtt only)
    assert len(adam) == 2 * decoder_steps  # 2 iterations
    assert len(step_size) == (2 if matching == "mtt" else 0)  # moved by the matching step only
    if decoder_steps == 2:  # the matching step moved the decoder, then the MMD step moved it again
        assert not torch.equal(adam[0], adam[1]) and not torch.equal(adam[1], adam[2])


def test_mmd_draws_spread_mmd_samples_over_the_priors():
    assert mmd_draws(3, 24) == 8 and mmd_draws(1, 24) == 24 and mmd_draws(10, 24) == 2
    assert mmd_draws(50, 24) == 1  # at least one per prior
    assert mmd_draws(1, 1) == 2  # at least two per class


def _decoder_batches():
    """Sizes of the batches every Decoder.forward sees until the handle is removed."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    sizes = []
    return sizes, register_module_forward_pre_hook(
        lambda m, args: sizes.append(args[0].shape[0]) if isinstance(m, Decoder) else None
    )


def test_every_decode_in_distillation_holds_the_means_and_the_draws(small):
    sizes, handle = _decoder_batches()
    try:
        distill(
            "d3",
            small,
            ipc=1,
            seed=0,
            progress=False,
            lpc=3,
            soft_labels=False,
            **dict(D3_FAST, mmd_samples=24, iterations=1),
        )
    finally:
        handle.remove()
    # 30 priors: matching step 30 means + 30 draws; MMD step 30 means + 8 draws x 30; final means + 1 draw each
    assert sizes == [60, 30 + 240, 60]


def _batch_norm_calls(decoder):
    calls = []
    handles = [
        m.register_forward_pre_hook(lambda m, args: calls.append(args[0].detach().clone()))
        for m in decoder.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    return calls, handles


def test_means_and_samples_share_batch_norm_statistics(small):
    dec = Decoder(DecoderConfig(latent_dim=4, width=4), 1, (28, 28))
    mu, logvar, labels = torch.randn(6, 4), torch.zeros(6, 4), torch.arange(6) % 3
    calls, handles = _batch_norm_calls(dec)
    with torch.no_grad():
        x, _ = epoch_images(dec, mu, logvar, labels, small.normalize, torch.Generator().manual_seed(0))
        means, samples = decode_with_means(dec, mu, logvar, 1, small.normalize, torch.Generator().manual_seed(0))
    for h in handles:
        h.remove()
    layers = len(calls) // 2
    assert [c.shape[0] for c in calls] == [12] * (2 * layers)  # one batch norm call per layer, 6 means + 6 draws
    assert torch.equal(x, torch.cat([means, samples]))  # evaluation decodes as decode_with_means does
    with torch.no_grad():
        alone = decode(dec, mu, small.normalize)
    assert (alone - means).abs().max() > 1e-3  # decoded alone, the means would differ


def test_no_dsa_during_distillation_unless_asked(small, monkeypatch):
    import ddcore.distill.d3 as d3_module
    import ddcore.distill.mtt as mtt_module

    calls = []
    for module in (d3_module, mtt_module):
        original = module.sample_dsa
        monkeypatch.setattr(module, "sample_dsa", lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    for matching in ("mtt", "dm"):
        distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, matching=matching, **D3_FAST)
    assert calls == []
    distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, dsa_distill=True, **D3_FAST)
    with_dsa = len(calls)
    distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, dsa=True, **D3_FAST)  # the older name
    assert with_dsa > 0 and len(calls) == 2 * with_dsa


def test_d3_defaults_are_the_authors_ranges():
    cfg = method_config("d3")
    assert cfg.matching == "mtt" and cfg.mmd_weight == 1.0 and not cfg.augment
    assert 3e-4 <= cfg.lr_prior <= 5e-3 and 8e-5 <= cfg.lr_decoder <= 3e-4
    assert cfg.decoder.latent_dim == 64 and 12 <= cfg.mmd_samples <= 30 and cfg.mmd_real >= 30


def test_expert_labeller_labels_mean_images_and_reports_mismatch(small):
    from ddcore.experts import final_network

    syn = distill("d3", small, ipc=2, seed=0, progress=False, labeller_source="expert", **D3_FAST)
    trajectories = load_or_train_experts(small, D3_FAST["experts"], seed=0, device="cpu")
    expert = final_network(trajectories[0], small, TINY, "cpu")
    assert torch.allclose(syn.labels, soft_labels(expert, syn.images), atol=1e-5)
    classes = torch.arange(10).repeat_interleave(2)
    assert syn.meta["label_mismatch"] == pytest.approx(label_mismatch(syn.labels, classes))
    hard = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **D3_FAST)
    assert torch.equal(hard.labels, classes) and hard.meta["label_mismatch"] == 0.0


def test_label_mismatch_counts_soft_and_hard_labels():
    classes = torch.tensor([0, 0, 1, 1])
    soft = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    assert label_mismatch(soft, classes) == 0.25 and label_mismatch(torch.tensor([0, 1, 1, 0]), classes) == 0.5
    with pytest.raises(ValueError, match="3 labels for 4 classes"):
        label_mismatch(soft[:3], classes)


def test_with_hard_labels_is_the_set_soft_labels_false_gives(small, tmp_path):
    opts = dict(D3_FAST, labeller=LabellerConfig(epochs=1, model=TINY), experts_dir=str(tmp_path))
    soft = distill("d3", small, ipc=2, seed=0, progress=False, **opts)
    hard = distill("d3", small, ipc=2, seed=0, progress=False, soft_labels=False, **opts)
    made = with_hard_labels(soft)
    assert torch.equal(made.labels, hard.labels) and made.meta["method"] == "d3+hard"
    assert torch.equal(made.extras["mu"], hard.extras["mu"])  # the labels never steer distillation
    assert storage(made)["labels_values"] == 20 and soft.labels.shape == (20, 10)  # the original is untouched
    rows = evaluate_synthetic(made, small, EvalConfig(model=TINY, train=TrainConfig(epochs=1), num_nets=1))
    assert rows.method.iloc[0] == "d3+hard"
    with pytest.raises(ValueError, match="needs a D3 set"):
        with_hard_labels(distill("random", small, ipc=2))


@pytest.mark.parametrize("clustering", ["kmeans", "synthetic"])
def test_robust_d3_runs_on_the_trajectory_matching_objective(small, clustering):
    from ddcore.robust import RobustConfig

    opts = dict(D3_FAST, soft_labels=False)
    plain = distill("d3", small, ipc=2, seed=0, progress=False, **opts)
    robust = distill(
        "d3",
        small,
        ipc=2,
        seed=0,
        progress=False,
        robust=RobustConfig(clustering=clustering, k=2, space="pixels", alpha=0.5),
        **opts,
    )
    assert torch.isfinite(robust.extras["mu"]).all()
    assert not torch.equal(plain.extras["mu"], robust.extras["mu"])
