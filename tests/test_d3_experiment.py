"""The accuracy-against-storage grid of the D3 notebook and its figures."""

import matplotlib
import pytest

matplotlib.use("Agg")

import torch  # noqa: E402

from ddcore.decoder import (  # noqa: E402
    DecoderConfig,
    decode_with_means,
    load_decoder,  # noqa: E402
)
from ddcore.evaluate import EvalConfig  # noqa: E402
from ddcore.experts import ExpertConfig  # noqa: E402
from ddcore.labels import LabellerConfig  # noqa: E402
from ddcore.models import ModelConfig  # noqa: E402
from ddcore.studies.d3_experiment import (  # noqa: E402
    d3_sweep,
    d3_values,
    decoded_grid_images,
    decoder_for_budget,
    decoder_size,
    storage_grid,
)
from ddcore.studies.d3_plots import accuracy_vs_storage, storage_model_plot, sweep_plot  # noqa: E402
from ddcore.train import TrainConfig  # noqa: E402

TINY = ModelConfig(width=8)
D3 = dict(
    iterations=1,
    batch_real=8,
    mmd_samples=4,
    mmd_real=8,
    matching="dm",
    latent_dim=4,
    experts=ExpertConfig(num_experts=1, epochs=1, model=TINY),
)
EVAL = EvalConfig(model=TINY, train=TrainConfig(epochs=1), num_nets=1)
LABELLER = LabellerConfig(epochs=1, model=TINY)


@pytest.mark.parametrize("budget", [1, 2, 10])
def test_decoder_for_budget_is_the_widest_that_fits(small, budget):
    cfg = decoder_for_budget(budget, small, budget, latent_dim=16)
    limit = budget * 10 * 784
    assert d3_values(small, budget, cfg) <= limit
    assert d3_values(small, budget, DecoderConfig(16, cfg.width + 1)) > limit
    assert decoder_size(small, cfg) < d3_values(small, budget, cfg)


def test_no_decoder_when_the_priors_alone_exceed_the_budget(small):
    assert decoder_for_budget(1, small, 1, latent_dim=400) is None


def test_storage_grid_compares_at_equal_storage_with_soft_random(small, tmp_path):
    results, sets = storage_grid(small, [2], {"random": {}}, D3, EVAL, LABELLER, cache_dir=tmp_path)
    assert sorted(results.method.unique()) == ["d3", "random", "random+soft"]
    per_set = results.groupby("method").ipc_equivalent.first()
    assert 1.5 < per_set["d3"] <= 2  # D3 uses most of its budget, labels included
    assert per_set["random+soft"] == pytest.approx(2 + 2 * 10 * 10 / 7840)  # images plus their soft labels
    assert sets[("random+soft", 2)].soft_labels and not sets[("random", 2)].soft_labels
    again, _ = storage_grid(small, [2], {"random": {}}, D3, EVAL, LABELLER, cache_dir=tmp_path)
    assert again.accuracy.tolist() == results.accuracy.tolist()  # read back from the cache
    fig = accuracy_vs_storage(results, "t")
    assert fig.axes[0].get_xlabel().startswith("storage")


def test_storage_grid_adds_d3_with_hard_labels_and_the_label_mismatch(small, tmp_path):
    results, sets = storage_grid(small, [2], {}, D3, EVAL, LABELLER, cache_dir=tmp_path, hard_labels=True)
    assert sorted(results.method.unique()) == ["d3", "d3+hard"]
    per_set = results.groupby("method")[["ipc_equivalent", "label_mismatch"]].first()
    assert per_set.ipc_equivalent["d3+hard"] < per_set.ipc_equivalent["d3"]  # one value per prior, not 10
    assert per_set.label_mismatch["d3+hard"] == 0.0
    assert per_set.label_mismatch["d3"] == sets[("d3", 2)].meta["label_mismatch"]
    assert torch.equal(sets[("d3+hard", 2)].extras["mu"], sets[("d3", 2)].extras["mu"])  # one distillation


def test_sweep_reports_storage_of_each_variant_and_rejects_unknown_names(small, tmp_path):
    sweep = d3_sweep(small, 2, {"lpc": [2, 3]}, D3, EVAL, LABELLER, cache_dir=tmp_path)
    eq = sweep.groupby("value").ipc_equivalent.first()
    assert eq[3] > eq[2]  # more priors cost more
    assert len(sweep_plot(sweep, "t").axes) == 1
    with pytest.raises(ValueError, match="lpc or latent_dim"):
        d3_sweep(small, 2, {"width": [1]}, D3, EVAL, LABELLER)


def test_decoded_grid_has_mean_then_samples_per_class(small):
    from ddcore.distill import distill

    syn = distill(
        "d3",
        small,
        ipc=2,
        progress=False,
        soft_labels=False,
        decoder=DecoderConfig(4, 4),
        **{k: v for k, v in D3.items() if k != "latent_dim"},
    )
    images, labels = decoded_grid_images(syn, small, samples=3)
    assert images.shape == (40, 1, 28, 28) and labels.tolist() == [c for c in range(10) for _ in range(4)]
    # every prior decoded with its 3 draws in one batch (batch norm statistics as in training)
    dec = load_decoder(syn, 1, (28, 28))
    with torch.no_grad():
        means, draws = decode_with_means(
            dec, syn.extras["mu"], syn.extras["logvar"], 3, small.normalize, torch.Generator().manual_seed(0)
        )
    assert torch.equal(images[0], means[0]) and torch.equal(images[1:4], draws[:3])
    assert torch.equal(images[4], means[2])  # class 1's first prior (lpc = 2)


def test_storage_model_plot_draws_one_curve_per_decoder():
    fig = storage_model_plot({"a": 1000, "b": 50_000}, lpc=1, latent_dim=16, image_values=784)
    assert len(fig.axes[0].get_lines()) == 3  # two decoders + the 1-image line
