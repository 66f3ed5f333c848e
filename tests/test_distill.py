import pytest
import torch

from ddcore.decoder import DecoderConfig
from ddcore.distill import available_methods, distill, method_config
from ddcore.distill.baselines import herd
from ddcore.distill.dc import default_loops, gradient_distance
from ddcore.distill.dm import class_means, dm_loss
from ddcore.experts import ExpertConfig
from ddcore.models import ModelConfig, create_model

TINY = ModelConfig(width=8)
TINY_EXPERTS = ExpertConfig(num_experts=1, epochs=2, model=TINY)
TRAJECTORY = {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1, "experts": TINY_EXPERTS}
# Options that make each method finish in about a second on a 2-core CPU.
FAST = {
    "random": {},
    "herding": {"model": TINY, "feature_epochs": 1},
    "kmeans_coreset": {"n_init": 1},
    "dm": {"iterations": 3, "batch_real": 8, "model": TINY},
    "dc": {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "model": TINY},
    "mtt": {"iterations": 2, **TRAJECTORY},
    "d3": {
        "iterations": 2,
        "batch_real": 8,
        "decoder": DecoderConfig(latent_dim=4, width=4),
        "soft_labels": False,
        **TRAJECTORY,
    },
}


def test_every_registered_method_has_a_fast_test_setting():
    assert set(FAST) == set(available_methods())


@pytest.mark.parametrize("method", sorted(FAST))
def test_methods_return_ipc_images_per_class(small, method):
    syn = distill(method, small, ipc=2, seed=0, progress=False, **FAST[method])
    assert syn.images.shape == (20, 1, 28, 28)
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert syn.meta["method"] == method and syn.meta["ipc"] == 2 and syn.meta["dataset"] == "mnist5k"
    assert torch.isfinite(syn.images).all()


@pytest.mark.parametrize("method", sorted(FAST))
def test_same_seed_same_set(small, method):
    a = distill(method, small, ipc=2, seed=1, progress=False, **FAST[method])
    b = distill(method, small, ipc=2, seed=1, progress=False, **FAST[method])
    assert torch.equal(a.images, b.images)


def test_different_seeds_differ(small):
    a = distill("dm", small, ipc=2, seed=1, progress=False, **FAST["dm"])
    b = distill("dm", small, ipc=2, seed=2, progress=False, **FAST["dm"])
    assert not torch.equal(a.images, b.images)


def test_coresets_are_real_training_images(small):
    for method in ("random", "herding", "kmeans_coreset"):
        syn = distill(method, small, ipc=3, progress=False, **FAST[method])
        flat = small.images_train.flatten(1)
        for img, label in zip(syn.images.flatten(1), syn.labels):
            match = (flat == img).all(1).nonzero().squeeze(1)
            assert len(match) >= 1 and small.labels_train[match[0]] == label


def test_dm_moves_synthetic_means_towards_real_means(small):
    """From noise, DM iterations must shrink the mean-embedding gap measured on held-out nets."""

    def gap(images):
        torch.manual_seed(123)
        total = 0.0
        for _ in range(3):
            net = create_model("convnet", 1, 10, (28, 28), width=8)
            labels = torch.arange(10).repeat_interleave(2)
            total += dm_loss(net, small.images_train, small.labels_train, images, labels, 10, None).item()
        return total

    start = distill("dm", small, ipc=2, progress=False, init="noise", iterations=0, model=TINY)
    end = distill("dm", small, ipc=2, progress=False, init="noise", iterations=40, batch_real=20, dsa=False, model=TINY)
    assert gap(end.images) < 0.5 * gap(start.images)


def test_class_means():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    means = class_means(feats, torch.tensor([0, 0, 2]), 3)
    assert means.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 5.0]]


def test_gradient_distance_is_one_minus_cosine_per_row_and_skips_biases():
    g = [torch.randn(4, 3, 3, 3), torch.randn(4)]
    assert gradient_distance(g, g).item() == pytest.approx(0.0, abs=1e-5)
    assert gradient_distance([-g[0], g[1]], g).item() == pytest.approx(8.0, abs=1e-4)  # 4 rows x 2
    assert gradient_distance([g[0], -g[1]], g).item() == pytest.approx(0.0, abs=1e-5)


def test_dc_loops_for_any_ipc():
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(50) == (50, 10)
    assert default_loops(7) == (10, 50) and default_loops(200) == (50, 10)


def test_herding_tracks_the_mean_better_than_random():
    torch.manual_seed(0)
    feats = torch.randn(200, 16) + torch.randn(200, 1) * 3
    picked = herd(feats, 5)
    assert len(set(picked.tolist())) == 5
    err = lambda idx: (feats[idx].mean(0) - feats.mean(0)).norm()  # noqa: E731
    random_errs = [err(torch.randperm(200)[:5]) for _ in range(50)]
    assert err(picked) < min(random_errs)


def test_kmeans_coreset_covers_every_cluster(small):
    # A class whose images fall into 2 obvious clusters: kmeans with ipc=2 picks one from each.
    from dataclasses import replace

    images = small.images_train.clone()
    first = (small.labels_train == 0).nonzero().squeeze(1)
    images[first[:10]] = 5.0
    images[first[10:]] = -5.0
    ds = replace(small, images_train=images)
    syn = distill("kmeans_coreset", ds, ipc=2, progress=False, n_init=1)
    assert sorted(syn.images[:2].mean((1, 2, 3)).tolist()) == [-5.0, 5.0]


def test_unknown_method_option_and_bad_ipc_are_named(small):
    with pytest.raises(ValueError, match="method='dmm' is not allowed"):
        distill("dmm", small, ipc=1)
    with pytest.raises(TypeError, match=r"dm has no option\(s\) \['iters'\]"):
        distill("dm", small, ipc=1, iters=3)
    with pytest.raises(ValueError, match="ipc=0 is too small"):
        distill("dm", small, ipc=0)
    with pytest.raises(ValueError, match="ipc=21 is too large"):
        distill("random", small, ipc=21)
    with pytest.raises(ValueError, match="init='zeros' is not allowed"):
        method_config("dm", init="zeros")


def test_resume_continues_bitwise(small, tmp_path, monkeypatch):
    opts = dict(FAST["dm"], iterations=6)
    ref = distill("dm", small, ipc=2, seed=4, progress=False, **opts)
    ckpt = tmp_path / "dm.ckpt"
    import ddcore.distill.dm as dm_module

    real_loss = dm_module.dm_loss
    calls = {"n": 0}

    def dying_loss(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_loss(*args)

    monkeypatch.setattr(dm_module, "dm_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        distill("dm", small, ipc=2, seed=4, progress=False, checkpoint=ckpt, checkpoint_every=2, **opts)
    monkeypatch.setattr(dm_module, "dm_loss", real_loss)
    resumed = distill(
        "dm", small, ipc=2, seed=4, progress=False, checkpoint=ckpt, checkpoint_every=2, resume=True, **opts
    )
    assert torch.equal(resumed.images, ref.images)


def test_resume_refuses_a_checkpoint_of_another_run(small, tmp_path):
    ckpt = tmp_path / "dm.ckpt"
    distill("dm", small, ipc=2, progress=False, checkpoint=ckpt, checkpoint_every=1, **FAST["dm"])
    with pytest.raises(ValueError, match="incompatible run"):
        distill("dm", small, ipc=2, progress=False, checkpoint=ckpt, resume=True, **dict(FAST["dm"], batch_real=9))


def test_nan_loss_stops_with_iteration_and_checkpoint(small, tmp_path, monkeypatch):
    import ddcore.distill.dm as dm_module

    real_loss, calls = dm_module.dm_loss, {"n": 0}

    def loss_that_explodes(*args):
        calls["n"] += 1
        return real_loss(*args) * (float("nan") if calls["n"] == 4 else 1.0)

    monkeypatch.setattr(dm_module, "dm_loss", loss_that_explodes)
    ckpt = tmp_path / "dm.ckpt"
    with pytest.raises(
        FloatingPointError, match=r"nan at iteration 3; the last good checkpoint is .*dm.ckpt \(iteration 2\)"
    ):
        distill(
            "dm", small, ipc=2, progress=False, checkpoint=ckpt, checkpoint_every=2, **dict(FAST["dm"], iterations=6)
        )
    assert ckpt.exists()


# --- The robust risk inside DC and DM (robust dataset distillation) ---
from ddcore.robust import RobustConfig  # noqa: E402


@pytest.mark.parametrize("method", ["dc", "dm"])
@pytest.mark.parametrize(
    "clustering, objective",
    [("synthetic", "double_layer"), ("synthetic", "cluster_means"), ("kmeans", "cluster_means")],
)
def test_robust_variants_run_and_are_named(small, method, clustering, objective):
    robust = RobustConfig(clustering=clustering, k=2, space="pixels", alpha=0.5, dm_objective=objective)
    syn = distill(method, small, ipc=2, progress=False, robust=robust, **FAST[method])
    assert syn.meta["method"] == f"{method}+robust" and syn.images.shape == (20, 1, 28, 28)
    assert torch.isfinite(syn.images).all()


def test_robust_dm_with_one_cluster_and_alpha_one_is_plain_dm(small):
    plain = distill("dm", small, ipc=2, seed=5, progress=False, **FAST["dm"])
    robust = distill(
        "dm",
        small,
        ipc=2,
        seed=5,
        progress=False,
        robust=RobustConfig(clustering="kmeans", k=1, space="pixels", alpha=1.0, dm_objective="cluster_means"),
        **FAST["dm"],
    )
    torch.testing.assert_close(robust.images, plain.images, atol=1e-4, rtol=1e-4)


def test_robust_variants_differ_from_the_plain_methods(small):
    for method in ("dm", "dc"):
        plain = distill(method, small, ipc=2, seed=5, progress=False, **FAST[method])
        robust = distill(
            method,
            small,
            ipc=2,
            seed=5,
            progress=False,
            robust=RobustConfig(clustering="kmeans", k=3, space="pixels", alpha=0.3, dm_objective="cluster_means"),
            **FAST[method],
        )
        assert not torch.allclose(robust.images, plain.images, atol=1e-4)
