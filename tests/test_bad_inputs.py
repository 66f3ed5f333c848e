"""One table of bad inputs and the error each gives, raised before any long work starts."""

import pytest
import torch

from ddcore.accel import AccelConfig
from ddcore.cluster import kmeans
from ddcore.data import load_dataset, subset_per_class
from ddcore.decoder import DecoderConfig
from ddcore.distill import distill
from ddcore.evaluate import EvalConfig, evaluate_synthetic
from ddcore.federated import aggregate, run_federated, split_classes, subset_classes
from ddcore.labels import with_hard_labels
from ddcore.models import create_model
from ddcore.reproduce import reproduce
from ddcore.robust import RobustConfig, cvar
from ddcore.runtime import resolve_device
from ddcore.storage import storage
from ddcore.studies.d3_experiment import decoder_for_budget
from ddcore.synthetic import SyntheticSet


def _syn(images, labels):
    return lambda d: SyntheticSet(images, labels, {"method": "x"})


CASES = [
    (
        "unknown data set",
        lambda d: load_dataset("imagenet"),
        ValueError,
        r"'imagenet' is not allowed; choose one of \[",
    ),
    ("unknown method", lambda d: distill("mtt2", d, 1), ValueError, r"method='mtt2' is not allowed"),
    ("unknown profile", lambda d: reproduce("fast"), ValueError, r"profile='fast' is not allowed"),
    ("ipc <= 0", lambda d: distill("dm", d, 0), ValueError, r"ipc=0 is too small; it must be >= 1"),
    ("ipc above a class's size", lambda d: distill("dm", d, 21), ValueError, r"ipc=21 is too large; it must be <= 20"),
    ("ipc not an int", lambda d: distill("dm", d, 2.5), TypeError, r"ipc must be an int, got 2.5"),
    ("unknown option", lambda d: distill("dm", d, 1, lr=0.1), TypeError, r"dm has no option\(s\) \['lr'\]"),
    ("alpha = 0", lambda d: RobustConfig(alpha=0.0), ValueError, r"alpha=0.0 is outside \(0.0, 1.0\]"),
    ("alpha > 1", lambda d: cvar(torch.ones(3), 1.5), ValueError, r"alpha=1.5 is outside"),
    ("k < 1", lambda d: RobustConfig(k=0), ValueError, r"k=0 is too small"),
    (
        "unknown dc_risk",
        lambda d: distill("dc", d, 1, robust=RobustConfig(dc_risk="loss")),
        ValueError,
        r"dc_risk='loss' is not allowed; choose one of \['target', 'network', 'both'\]",
    ),
    (
        "unknown dm_objective",
        lambda d: distill("dm", d, 1, robust=RobustConfig(dm_objective="mmd")),
        ValueError,
        r"dm_objective='mmd' is not allowed; choose one of \['cluster_means', 'double_layer'\]",
    ),
    (
        "robust_weight < 0",
        lambda d: RobustConfig(dm_objective="double_layer", robust_weight=-1.0),
        ValueError,
        r"robust_weight=-1.0 is outside \[0.0, inf\]",
    ),
    (
        "double layer without Voronoi cells",
        lambda d: distill("dm", d, 1, robust=RobustConfig(dm_objective="double_layer", clustering="kmeans")),
        ValueError,
        r"dm_objective='double_layer' uses each synthetic image's Voronoi cell; "
        r"it needs clustering='synthetic'",
    ),
    ("k above the points", lambda d: kmeans(torch.randn(5, 2), 6, seed=0), ValueError, r"k=6 is too large"),
    (
        "NaN images",
        lambda d: evaluate_synthetic(
            SyntheticSet(torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1])), d, EvalConfig(num_nets=1)
        ),
        ValueError,
        r"images holds 1568 NaN or Inf values",
    ),
    (
        "wrong channels",
        lambda d: create_model("convnet", 1, 10, (28, 28))(torch.zeros(1, 3, 28, 28)),
        ValueError,
        r"x has 3 channels; this model expects 1",
    ),
    (
        "wrong image size",
        lambda d: create_model("convnet", 1, 10, (28, 28))(torch.zeros(1, 1, 32, 32)),
        ValueError,
        r"image size \(32, 32\); this model expects \(28, 28\)",
    ),
    (
        "labels out of range",
        lambda d: evaluate_synthetic(
            SyntheticSet(torch.zeros(2, 1, 28, 28), torch.tensor([0, 10])), d, EvalConfig(num_nets=1)
        ),
        ValueError,
        r"labels must lie in \[0, 9\]; got values from 0 to 10",
    ),
    (
        "unavailable device",
        lambda d: resolve_device("cuda") if not torch.cuda.is_available() else resolve_device("tpu"),
        ValueError,
        r"is not (available on this machine|a device)",
    ),
    (
        "unwritable output folder",
        lambda d: distill("dm", d, 1, iterations=1, checkpoint="/proc/ddcore/x.ckpt"),
        ValueError,
        r"checkpoint folder='/proc/ddcore' cannot be created",
    ),
    (
        "subset larger than a class",
        lambda d: subset_per_class(d, 21, seed=0),
        ValueError,
        r"n_per_class=21 is too large",
    ),
    ("mismatched labels", _syn(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1])), ValueError, r"2 labels for 3 images"),
    ("no subtasks", lambda d: split_classes(10, 0), ValueError, r"num_subtasks=0 is too small; it must be >= 1"),
    (
        "more subtasks than classes",
        lambda d: split_classes(d.num_classes, 11),
        ValueError,
        r"num_subtasks=11 is too large; it must be <= 10",
    ),
    (
        "unknown split strategy",
        lambda d: split_classes(10, 2, strategy="balanced"),
        ValueError,
        r"strategy='balanced' is not allowed",
    ),
    (
        "class outside the data set",
        lambda d: subset_classes(d, [3, 10]),
        ValueError,
        r"class id in classes=10 is too large",
    ),
    (
        "unknown federated option",
        lambda d: run_federated(d, "dm", 1, 2, "/proc/ddcore/fed", lr=0.1),
        TypeError,
        r"dm has no option\(s\) \['lr'\]",
    ),
    (
        "unwritable federated output",
        lambda d: run_federated(d, "random", 1, 2, "/proc/ddcore/fed"),
        ValueError,
        r"out_dir='/proc/ddcore/fed' cannot be created",
    ),
    (
        "overlapping class groups",
        lambda d: aggregate([SyntheticSet(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))] * 2, [[0, 1], [1, 2]], 10),
        ValueError,
        r"groups must be disjoint",
    ),
    ("lpc < 1", lambda d: distill("d3", d, 2, lpc=0), ValueError, r"lpc=0 is too small; it must be >= 1"),
    ("latent size < 1", lambda d: DecoderConfig(latent_dim=0), ValueError, r"latent_dim=0 is too small"),
    ("unknown D3 matching", lambda d: distill("d3", d, 2, matching="kl"), ValueError, r"matching='kl' is not allowed"),
    (
        "one MMD sample per class",
        lambda d: distill("d3", d, 2, mmd_samples=1),
        ValueError,
        r"mmd_samples=1 is too small; it must be >= 2",
    ),
    (
        "one real MMD image per class",
        lambda d: distill("d3", d, 2, mmd_real=1),
        ValueError,
        r"mmd_real=1 is too small; it must be >= 2",
    ),
    (
        "MMD samples not an int",
        lambda d: distill("d3", d, 2, mmd_samples=24.0),
        TypeError,
        r"mmd_samples must be an int, got 24.0",
    ),
    (
        "D3 prior lr = 0",
        lambda d: distill("d3", d, 2, lr_prior=0.0),
        ValueError,
        r"lr_prior=0.0 is outside \(0.0, inf\]",
    ),
    (
        "D3 decoder lr < 0",
        lambda d: distill("d3", d, 2, lr_decoder=-1e-4),
        ValueError,
        r"lr_decoder=-0.0001 is outside",
    ),
    (
        "unknown labeller source",
        lambda d: distill("d3", d, 2, labeller_source="oracle"),
        ValueError,
        r"labeller_source='oracle' is not allowed; choose one of \['train', 'expert'\]",
    ),
    (
        "DSA flag not a bool",
        lambda d: distill("d3", d, 2, dsa_distill="yes"),
        TypeError,
        r"dsa_distill must be True or False, got 'yes'",
    ),
    (
        "hard labels for an image set",
        lambda d: with_hard_labels(distill("random", d, 2)),
        ValueError,
        r"with_hard_labels needs a D3 set",
    ),
    (
        "MTT segment past the experts",
        lambda d: distill("mtt", d, 1, max_start_epoch=30),
        ValueError,
        r"max_start_epoch \+ expert_epochs = 32 must be <= experts.epochs = 20",
    ),
    ("storage of a non-set", lambda d: storage(d), TypeError, r"syn must be a SyntheticSet, got Dataset"),
    ("budget < 1", lambda d: decoder_for_budget(0, d, 1, 16), ValueError, r"budget=0 is too small"),
    (
        "students side by side in channels_last",
        lambda d: EvalConfig(side_by_side=True, accel=AccelConfig(channels_last=True)),
        NotImplementedError,
        r"EvalConfig\(side_by_side=True\) does not support accel.channels_last=True",
    ),
    (
        "side_by_side not a bool",
        lambda d: EvalConfig(side_by_side="auto"),
        TypeError,
        r"side_by_side must be True or False, got 'auto'",
    ),
]


@pytest.mark.parametrize("call,error,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(small, call, error, message):
    with pytest.raises(error, match=message):
        call(small)


def test_check_parameters_names_every_wrong_type():
    from ddcore.checks import check_parameters

    good = {
        "__annotations__": {"ipc": int, "lr": float, "progress": bool, "name": str, "ipcs": list},
        "ipc": 10,
        "lr": 1,
        "progress": False,
        "name": "x",
        "ipcs": [1, 10],
    }
    check_parameters(good)  # an int where a float is expected is fine
    bad = {**good, "ipc": "ten", "progress": "yes", "lr": True}
    with pytest.raises(TypeError) as info:
        check_parameters(bad)
    message = str(info.value)
    assert "ipc='ten' (str, expected int)" in message and "progress='yes'" in message
    assert "lr=True (bool, expected float)" in message and "name" not in message
