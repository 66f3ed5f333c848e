import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ddcore.distill import distill
from ddcore.evaluate import (
    EvalConfig,
    accuracy_by_group,
    evaluate_synthetic,
    format_mean_std,
    improvement_over_random,
    summarize,
    train_student,
)
from ddcore.models import ModelConfig
from ddcore.synthetic import SyntheticSet
from ddcore.train import TrainConfig, train_network

FAST = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=2)


def test_one_row_per_network_with_per_class_columns(small):
    syn = distill("random", small, ipc=2, progress=False)
    df = evaluate_synthetic(syn, small, FAST)
    assert len(df) == 2 and df.net.tolist() == [0, 1]
    assert df.accuracy.between(0, 1).all()
    class_cols = [f"class_{c}" for c in range(10)]
    assert set(class_cols) <= set(df.columns)
    assert (df.worst_class_accuracy == df[class_cols].min(axis=1)).all()


def test_evaluation_is_deterministic_given_the_seed(small):
    syn = distill("random", small, ipc=2, progress=False)
    a, b = evaluate_synthetic(syn, small, FAST, seed=3), evaluate_synthetic(syn, small, FAST, seed=3)
    assert a.accuracy.tolist() == b.accuracy.tolist()


def test_subgroup_accuracy_and_worst_subgroup(small):
    syn = distill("random", small, ipc=2, progress=False)
    groups = torch.arange(len(small.labels_test)) % 3
    df = evaluate_synthetic(syn, small, FAST, test_groups=groups)
    assert {"group_0", "group_1", "group_2"} <= set(df.columns)
    assert (df.worst_group_accuracy == df[["group_0", "group_1", "group_2"]].min(axis=1)).all()
    with pytest.raises(ValueError, match="test_groups has 5 ids"):
        evaluate_synthetic(syn, small, FAST, test_groups=groups[:5])


def test_accuracy_by_group():
    pred, labels = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
    assert accuracy_by_group(pred, labels, torch.tensor([0, 0, 1, 1])) == {0: 1.0, 1: 0.5}


def test_soft_one_hot_labels_train_like_hard_labels(small):
    torch.manual_seed(0)
    images, hard = small.images_train[:40], small.labels_train[:40]
    soft = F.one_hot(hard, 10).float()
    cfg = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=3), dsa=False)
    a, b = train_student(images, hard, small, cfg, 0, "cpu"), train_student(images, soft, small, cfg, 0, "cpu")
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_training_runs_every_epoch_and_learns(small):
    from ddcore.models import create_model

    torch.manual_seed(0)
    net = create_model("convnet", 1, 10, (28, 28), width=8)
    losses = train_network(
        net,
        small.images_train,
        small.labels_train,
        TrainConfig(epochs=8, batch_size=32, lr=0.05),
        None,
        torch.Generator().manual_seed(0),
    )
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]


def test_lr_drops_tenfold_at_half_the_epochs(small, monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    syn = distill("random", small, ipc=1, progress=False)
    evaluate_synthetic(syn, small, EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=4), num_nets=1))
    assert seen == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_summaries():
    df = pd.DataFrame({"method": ["random"] * 2 + ["dm"] * 2, "ipc": [10] * 4, "accuracy": [0.90, 0.92, 0.95, 0.97]})
    s = summarize(df)
    assert s.accuracy_mean.tolist() == pytest.approx([91.0, 96.0])
    assert s.accuracy_std.tolist() == pytest.approx([1.0, 1.0])
    assert format_mean_std(s).tolist() == ["91.0 +- 1.0", "96.0 +- 1.0"]
    gain = improvement_over_random(df).set_index("method")["over_random"]
    assert gain["dm"] == pytest.approx(5.0) and gain["random"] == 0
    with pytest.raises(ValueError, match="no 'random' rows"):
        improvement_over_random(df[df.method == "dm"])


def test_bad_synthetic_input_is_named(small):
    bad = SyntheticSet(torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1]), {"method": "x"})
    with pytest.raises(ValueError, match="images holds 4 NaN|images holds .* NaN or Inf"):
        evaluate_synthetic(bad, small, FAST)
    wrong = SyntheticSet(torch.zeros(2, 3, 28, 28), torch.tensor([0, 1]), {"method": "x"})
    with pytest.raises(ValueError, match="3 channels"):
        evaluate_synthetic(wrong, small, FAST)
    out_of_range = SyntheticSet(torch.zeros(2, 1, 28, 28), torch.tensor([0, 12]), {"method": "x"})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        evaluate_synthetic(out_of_range, small, FAST)
    with pytest.raises(ValueError, match="num_nets=0"):
        EvalConfig(num_nets=0)
