"""Subtask distillation: class splits, label offsets, torchrun parity with the sequential run, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddcore.federated as fed
from ddcore.data import load_dataset
from ddcore.evaluate import EvalConfig, evaluate_synthetic
from ddcore.federated import (
    aggregate,
    distill_subtask,
    load_record,
    parse_method_options,
    run_federated,
    split_classes,
    subset_classes,
    subtask_path,
    subtask_seed,
)
from ddcore.models import ModelConfig
from ddcore.synthetic import SyntheticSet
from ddcore.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# DM on 16x16 digits with a width-8 ConvNet: about a second for all three subtasks.
OPTIONS = {"iterations": 2, "batch_real": 8, "model": ModelConfig(width=8)}
CLI_OPTIONS = ["--iterations", "2", "--batch-real", "8", "--model.width", "8"]
RUN = dict(method="dm", ipc=1, num_subtasks=3, seed=3, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def sequential(digits, tmp_path_factory):
    """One uninterrupted sequential run, the reference for the parity and resume tests."""
    out = tmp_path_factory.mktemp("sequential")
    return run_federated(digits, out_dir=out, **RUN, **OPTIONS), out


# --- split_classes ---
@settings(max_examples=200, deadline=None)
@given(
    num_classes=st.integers(1, 60),
    data=st.data(),
    strategy=st.sampled_from(["contiguous", "random"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_is_a_balanced_partition_and_repeatable(num_classes, data, strategy, seed):
    num_subtasks = data.draw(st.integers(1, num_classes))
    groups = split_classes(num_classes, num_subtasks, strategy, seed)
    flat = [c for g in groups for c in g]
    assert len(groups) == num_subtasks
    assert sorted(flat) == list(range(num_classes))  # disjoint and covering
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert all(g == sorted(g) for g in groups)
    assert groups == split_classes(num_classes, num_subtasks, strategy, seed)


def test_contiguous_split_is_consecutive_ranges_and_random_depends_on_seed():
    assert split_classes(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_classes(1000, 5)[1] == list(range(200, 400))  # D3's ImageNet-1K split
    splits = {str(split_classes(10, 2, "random", seed=s)) for s in range(5)}
    assert len(splits) > 1


@pytest.mark.parametrize(
    "args,error,message",
    [
        ((10, 0), ValueError, r"num_subtasks=0 is too small; it must be >= 1"),
        ((10, 11), ValueError, r"num_subtasks=11 is too large; it must be <= 10"),
        ((10, 2, "balanced"), ValueError, r"strategy='balanced' is not allowed; choose one of"),
        ((10, 2.0), TypeError, r"num_subtasks must be an int"),
        ((10, 2, "random", -1), ValueError, r"seed=-1 is too small"),
    ],
)
def test_split_rejects_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        split_classes(*args)


def test_subtask_seeds_differ_and_do_not_depend_on_the_worker():
    seeds = [subtask_seed(s, i) for s in range(4) for i in range(4)]
    assert len(set(seeds)) == len(seeds) and subtask_seed(0, 1) == subtask_seed(0, 1)


# --- subset_classes and aggregate ---
def test_subset_classes_relabels_locally_in_both_splits(digits):
    sub = subset_classes(digits, [7, 2])
    assert sub.num_classes == 2 and sub.class_names == ["7", "2"] and sub.name == "digits"
    for split in ("train", "test"):
        original = getattr(digits, f"labels_{split}")
        local = getattr(sub, f"labels_{split}")
        assert local.tolist() == [{7: 0, 2: 1}[int(y)] for y in original if y in (7, 2)]
        kept = getattr(digits, f"images_{split}")[(original == 7) | (original == 2)]
        assert torch.equal(getattr(sub, f"images_{split}"), kept)  # original order kept
    assert sub.mean == digits.mean and sub.std == digits.std


@pytest.mark.parametrize(
    "classes,message",
    [([], "non-empty list"), ([3, 10], r"class id in classes=10 is too large"), ([1, 1], "repeats a class id")],
)
def test_subset_classes_rejects_bad_groups(digits, classes, message):
    with pytest.raises(ValueError, match=message):
        subset_classes(digits, classes)


def _local_set(n_per_class, num_local, soft=False, extras=None):
    images = torch.randn(n_per_class * num_local, 1, 4, 4)
    labels = torch.arange(num_local).repeat_interleave(n_per_class)
    if soft:
        labels = torch.softmax(torch.randn(len(labels), num_local), 1)
    return SyntheticSet(images, labels, {"method": "x", "ipc": n_per_class, "seed": 1}, extras or {})


def test_aggregate_offsets_hard_labels_and_keeps_images_in_order():
    groups = [[1, 4, 6], [0, 2], [3, 5]]
    parts = [_local_set(2, len(g)) for g in groups]
    syn = aggregate(parts, groups, 7)
    assert syn.labels.tolist() == [1, 1, 4, 4, 6, 6, 0, 0, 2, 2, 3, 3, 5, 5]
    assert torch.equal(syn.images, torch.cat([p.images for p in parts]))
    assert syn.meta["groups"] == groups and syn.meta["num_classes"] == 7
    assert syn.meta["sizes"] == [6, 4, 4] and syn.meta["parts"][0]["method"] == "x"


def test_aggregate_places_soft_labels_in_their_global_columns():
    groups = [[2, 0], [1, 3]]
    soft, hard = _local_set(1, 2, soft=True), _local_set(1, 2)
    syn = aggregate([soft, hard], groups, 4)
    assert syn.labels.shape == (4, 4) and syn.soft_labels
    assert torch.equal(syn.labels[:2, [2, 0]], soft.labels) and (syn.labels[:2, [1, 3]] == 0).all()
    assert syn.labels[2:].tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]  # hard labels become one-hot


def test_aggregate_with_a_labeller_and_per_subtask_extras():
    groups = [[0, 1], [2, 3]]
    parts = [_local_set(1, 2, extras={"decoder.weight": torch.full((3,), float(i))}) for i in range(2)]
    logits = torch.randn(4, 4)
    syn = aggregate(parts, groups, 4, labeller=lambda x: logits[: len(x)])
    torch.testing.assert_close(syn.labels, logits.softmax(1))
    assert syn.extras["class_ids"].tolist() == [0, 1, 2, 3]
    assert syn.extras["subtask_1.decoder.weight"].tolist() == [1.0, 1.0, 1.0]


def test_soft_labels_from_a_module_restore_its_mode():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3), torch.nn.Dropout(0.9)).train()
    x = torch.randn(5, 1, 4, 4)
    probs = fed.soft_labels(net, x, batch_size=2)
    with torch.no_grad():
        expected = net[1](x.flatten(1)).softmax(1)  # dropout off: eval mode while labelling
    torch.testing.assert_close(probs, expected)
    assert net.training


@pytest.mark.parametrize(
    "parts,groups,message",
    [
        (1, [[0], [1]], "one class group per result"),
        (2, [[0, 1], [1, 2]], "groups must be disjoint"),
        (2, [[0, 1], [2, 9]], r"class id in groups\[1\]=9 is too large"),
    ],
)
def test_aggregate_rejects_mismatched_groups(parts, groups, message):
    with pytest.raises(ValueError, match=message):
        aggregate([_local_set(1, 2) for _ in range(parts)], groups, 4)


def test_aggregate_rejects_labels_that_are_not_local():
    with pytest.raises(ValueError, match=r"labels of subtask 0 must be local ids in \[0, 1\]; got 0 to 2"):
        aggregate([_local_set(1, 3)], [[0, 1]], 4)
    with pytest.raises(ValueError, match=r"soft labels of subtask 0 must have shape \(n, 2\)"):
        aggregate([_local_set(1, 3, soft=True)], [[0, 1]], 4)


# --- Whole runs ---
def test_sequential_run_gives_a_set_the_evaluation_takes(sequential, digits):
    syn, out = sequential
    assert syn.images.shape == (10, 1, 16, 16) and syn.labels.tolist() == list(range(10))
    assert torch.equal(SyntheticSet.load(out / "aggregated.safetensors").images, syn.images)
    cfg = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=1)
    rows = evaluate_synthetic(syn, digits, cfg)
    assert len(rows) == 1 and 0.0 <= rows.accuracy[0] <= 1.0


def test_record_holds_seconds_per_subtask_and_memory_per_worker(sequential):
    record = load_record(sequential[1])
    assert [s["index"] for s in record["subtasks"]] == [0, 1, 2] and record["world_size"] == 1
    assert all(s["seconds"] > 0 and not s["loaded"] and s["rank"] == 0 for s in record["subtasks"])
    assert record["workers"][0]["peak_rss_mib"] > 10 and record["groups"] == split_classes(10, 3)


def test_subtask_matches_a_direct_distillation_of_its_classes(sequential, digits, tmp_path):
    from ddcore.distill import distill

    syn = distill_subtask(digits, [4, 5, 6], 1, "dm", 1, tmp_path, seed=3, device="cpu", **OPTIONS)
    direct = distill(
        "dm", subset_classes(digits, [4, 5, 6]), 1, seed=subtask_seed(3, 1), device="cpu", progress=False, **OPTIONS
    )
    assert torch.equal(syn.images, direct.images) and syn.labels.tolist() == [0, 1, 2]
    assert torch.equal(sequential[0].images[4:7], syn.images)


def test_torchrun_with_two_gloo_workers_equals_the_sequential_run(sequential, tmp_path):
    out = tmp_path / "dist"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ddcore.federated",
        "--dataset",
        "digits",
        "--method",
        "dm",
        "--ipc",
        "1",
        "--subtasks",
        "3",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
        *CLI_OPTIONS,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count as this process
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = SyntheticSet.load(out / "aggregated.safetensors")
    assert torch.equal(distributed.images, sequential[0].images)
    assert torch.equal(distributed.labels, sequential[0].labels)
    record = load_record(out)
    assert record["world_size"] == 2 and record["backend"] == "gloo"
    assert [s["rank"] for s in record["subtasks"]] == [0, 1, 0]  # rank r takes r, r + 2, ...
    assert sorted(w["rank"] for w in record["workers"]) == [0, 1]


def test_a_run_killed_after_one_subtask_resumes_without_redoing_it(sequential, digits, tmp_path, monkeypatch):
    real_distill, calls, kill = fed.distill, [], [True]

    def dying_distill(*args, **kwargs):
        calls.append(kwargs["seed"])
        if kill[0] and len(calls) == 2:
            raise KeyboardInterrupt("simulated kill during the second subtask")
        return real_distill(*args, **kwargs)

    monkeypatch.setattr(fed, "distill", dying_distill)
    with pytest.raises(KeyboardInterrupt):
        run_federated(digits, out_dir=tmp_path, **RUN, **OPTIONS)
    first = subtask_path(tmp_path, 0)
    assert first.exists() and not subtask_path(tmp_path, 1).exists()
    mtime, calls[:], kill[0] = first.stat().st_mtime_ns, [], False
    resumed = run_federated(digits, out_dir=tmp_path, **RUN, **OPTIONS)
    assert calls == [subtask_seed(3, 1), subtask_seed(3, 2)]  # subtask 0 was loaded, not redone
    assert first.stat().st_mtime_ns == mtime
    assert torch.equal(resumed.images, sequential[0].images) and torch.equal(resumed.labels, sequential[0].labels)
    assert [s["loaded"] for s in load_record(tmp_path)["subtasks"]] == [True, False, False]
    assert not list(tmp_path.glob("*.ckpt"))  # checkpoints are removed once a subtask's file exists


def test_a_subtask_file_of_other_parameters_is_redone(digits, tmp_path):
    distill_subtask(digits, [0, 1], 0, "random", 1, tmp_path, seed=0)
    with pytest.warns(UserWarning, match="made with other parameters"):
        again = distill_subtask(digits, [0, 1], 0, "random", 1, tmp_path, seed=1)
    assert SyntheticSet.load(subtask_path(tmp_path, 0)).meta["subtask"]["base_seed"] == 1
    assert again.meta["seed"] == subtask_seed(1, 0)


def test_run_rejects_bad_arguments_before_any_work(digits, tmp_path):
    with pytest.raises(TypeError, match=r"dm has no option\(s\) \['lr'\]"):
        run_federated(digits, "dm", 1, 2, tmp_path / "a", lr=0.1)
    with pytest.raises(ValueError, match=r"num_subtasks=11 is too large; it must be <= 10"):
        run_federated(digits, "random", 1, 11, tmp_path / "b")
    with pytest.raises(ValueError, match=r"ipc=1000 is too large"):
        run_federated(digits, "random", 1000, 2, tmp_path / "c")
    assert not list(tmp_path.glob("*/*.safetensors"))


# --- Command line ---
def test_method_options_from_the_command_line_are_typed():
    options = parse_method_options(
        "dm",
        [
            "--iterations",
            "5",
            "--lr-img",
            "0.5",
            "--dsa",
            "false",
            "--model.width",
            "8",
            "--model.norm",
            "none",
            "--robust.k",
            "2",
        ],
    )
    assert options["iterations"] == 5 and options["lr_img"] == 0.5 and options["dsa"] is False
    assert options["model"] == ModelConfig(width=8, norm="none") and options["robust"].k == 2
    assert parse_method_options("dc", ["--outer-loop", "none"]) == {"outer_loop": None}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--iters", "5"], r"dm has no option 'iters'"),
        (["--iterations", "five"], r"dm.iterations takes a value of type int, got 'five'"),
        (["--iterations"], "pairs"),
        (["--model", "convnet"], "cannot be set from the command line"),
    ],
)
def test_bad_method_options_are_named(args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse_method_options("dm", args)


def test_cli_reports_a_bad_option_and_exits(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        fed.main(["--dataset", "digits", "--out", str(tmp_path), "--iters", "3"])
    assert stop.value.code == 2 and "dm has no option 'iters'" in capsys.readouterr().err


def test_cli_runs_alone_without_torchrun(tmp_path, capsys, monkeypatch):
    for var in fed.TORCHRUN_ENV:
        monkeypatch.delenv(var, raising=False)
    fed.main(["--dataset", "digits", "--method", "random", "--subtasks", "2", "--out", str(tmp_path)])
    assert "aggregated.safetensors" in capsys.readouterr().out
    assert json.loads((tmp_path / "federated.json").read_text())["world_size"] == 1


# --- Per-subtask test groups ---
def test_subtask_ids_give_the_group_of_each_label():
    groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert fed.subtask_ids(torch.arange(10), groups).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    shuffled = [[3, 7], [0, 9, 1]]
    assert fed.subtask_ids(torch.tensor([9, 3, 1, 7, 0]), shuffled).tolist() == [1, 0, 1, 0, 1]
    soft = torch.nn.functional.one_hot(torch.tensor([7, 0]), 10).float()
    assert fed.subtask_ids(soft, shuffled).tolist() == [0, 1]


def test_subtask_ids_as_test_groups_give_per_subtask_accuracy(digits):
    groups = split_classes(10, 3)
    ids = fed.subtask_ids(digits.labels_test, groups)
    pred = torch.where(ids == 1, digits.labels_test, -1)  # right on subtask 1's classes only
    from ddcore.evaluate import accuracy_by_group

    assert accuracy_by_group(pred, digits.labels_test, ids) == {0: 0.0, 1: 1.0, 2: 0.0}


@pytest.mark.parametrize(
    "labels,groups,message",
    [
        (torch.tensor([0, 5]), [[0, 1], [2, 3]], r"labels \[5\] are in no group"),
        (torch.tensor([-1]), [[0, 1]], r"labels \[-1\] are in no group"),
        (torch.tensor([0]), [[0, 1], [1]], "groups must be disjoint"),
        (torch.tensor([0]), [], "non-empty list of class groups"),
        (torch.tensor([0]), [[0], []], "non-empty list of class ids"),
    ],
)
def test_subtask_ids_reject_labels_outside_the_groups(labels, groups, message):
    with pytest.raises(ValueError, match=message):
        fed.subtask_ids(labels, groups)


# --- Launching torchrun from Python ---
def test_torchrun_command_spells_every_option():
    cmd = fed.torchrun_command(
        {
            "dataset": "digits",
            "subtasks": 3,
            "batch_real": 8,
            "lpc": None,
            "dsa": False,
            "experts": {"model": {"width": 8}},
            "decoder.latent_dim": 4,
            "root": None,
            "progress": True,
        },
        2,
        "out/run",
    )
    assert cmd[:7] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ddcore.federated",
    ]
    assert cmd[7:] == [
        "--out",
        "out/run",
        "--dataset",
        "digits",
        "--subtasks",
        "3",
        "--batch-real",
        "8",
        "--lpc",
        "none",
        "--dsa",
        "false",
        "--experts.model.width",
        "8",
        "--decoder.latent-dim",
        "4",
        "--progress",
    ]
    assert "--progress" not in fed.torchrun_command({"progress": False}, 1, "o")
    assert fed.torchrun_command({"root": "data"}, 1, "o")[-2:] == ["--root", "data"]


def test_torchrun_command_options_reach_the_method_config():
    cmd = fed.torchrun_command(
        {"method": "d3", "decoder": {"latent_dim": 4}, "experts.model.width": 8, "soft_labels": False}, 1, "o"
    )
    options = parse_method_options("d3", cmd[cmd.index("--method") + 2 :])
    assert options["decoder"].latent_dim == 4 and options["experts"].model.width == 8
    assert options["soft_labels"] is False


@pytest.mark.parametrize(
    "options,nproc,error,message",
    [
        ({"out": "x"}, 1, ValueError, "as out_dir"),
        ({"model": ModelConfig(width=8)}, 1, TypeError, r"option 'model' must be a str.*'model.width'"),
        ({"ipcs": [1, 2]}, 1, TypeError, "option 'ipcs' must be"),
        ({"progress": "yes"}, 1, TypeError, "is a flag"),
        ({}, 0, ValueError, "nproc=0 is too small"),
        ([("dataset", "digits")], 1, TypeError, "options must be a dict"),
    ],
)
def test_torchrun_command_rejects_what_the_command_line_cannot_say(options, nproc, error, message):
    with pytest.raises(error, match=message):
        fed.torchrun_command(options, nproc, "o")


def test_clear_run_deletes_the_run_files_and_nothing_else(tmp_path):
    made = [
        "subtask_0.safetensors",
        "subtask_1.ab12cd34.ckpt",
        "labeller_digits_x_seed1.safetensors",
        "aggregated.safetensors",
        "federated.json",
        "experts_digits_1234/expert_0_0.safetensors",
    ]
    for name in made + ["notes.txt", "mine/subtask_0.safetensors"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    deleted = fed.clear_run(tmp_path)
    assert len(deleted) == 6 and not (tmp_path / "experts_digits_1234").exists()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "mine/subtask_0.safetensors",
        "notes.txt",
    ]
    assert fed.clear_run(tmp_path / "absent") == []


def _fake_torchrun(monkeypatch, script: str):
    """launch_torchrun runs `python -c script` (argv[1]: the out folder) instead of torchrun."""
    monkeypatch.setattr(
        fed, "torchrun_command", lambda options, nproc, out_dir: [sys.executable, "-c", script, str(out_dir)]
    )


WRITE_RECORD = (
    "import json, os, sys; from pathlib import Path; out = Path(sys.argv[1]); json.dump("
    "{'threads': os.environ['OMP_NUM_THREADS'], 'kept': (out / 'subtask_0.safetensors').exists(),"
    " 'wall_seconds': 0.0}, open(out / 'federated.json', 'w'))"
)


def test_launch_gives_workers_one_thread_and_fresh_clears_the_old_run(tmp_path, monkeypatch):
    _fake_torchrun(monkeypatch, WRITE_RECORD)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    (tmp_path / "subtask_0.safetensors").write_text("old")
    record = fed.launch_torchrun({}, 2, tmp_path)
    assert record["threads"] == "1" and record["kept"] and record["launch_seconds"] > 0
    assert fed.launch_torchrun({}, 2, tmp_path, threads=3, fresh=True)["threads"] == "3"
    assert not (tmp_path / "subtask_0.safetensors").exists()


def test_a_failing_launch_raises_with_the_workers_error(tmp_path, monkeypatch):
    _fake_torchrun(
        monkeypatch, "import sys; print('W1123 12:00 torch/distributed/x.py] noise', file=sys.stderr); sys.exit(3)"
    )
    monkeypatch.setattr(fed, "_AGENT_LOG", fed.re.compile(r"^W\d{4} .*torch/distributed/", fed.re.M))
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*torchrun's report.*noise"):
        fed.launch_torchrun({}, 1, tmp_path)
    _fake_torchrun(monkeypatch, "import time; time.sleep(60)")
    with pytest.raises(RuntimeError, match="ran past timeout_s=0.5"):
        fed.launch_torchrun({}, 1, tmp_path, timeout_s=0.5)


def test_launch_torchrun_runs_two_workers_and_a_rerun_loads_their_subtasks(tmp_path):
    options = {"dataset": "digits", "method": "random", "ipc": 1, "subtasks": 2, "seed": 3, "device": "cpu"}
    first = fed.launch_torchrun(options, 2, tmp_path)
    assert first["world_size"] == 2 and [s["rank"] for s in first["subtasks"]] == [0, 1]
    assert not any(s["loaded"] for s in first["subtasks"]) and first["launch_seconds"] > first["wall_seconds"]
    assert "--nproc_per_node=2" in first["command"] and first["load_average"] >= 0
    assert SyntheticSet.load(tmp_path / "aggregated.safetensors").images.shape == (10, 1, 16, 16)
    again = fed.launch_torchrun(options, 2, tmp_path)
    assert all(s["loaded"] for s in again["subtasks"])


@pytest.mark.slow
def test_a_real_torchrun_failure_shows_the_workers_error_before_torchrun_report(tmp_path):
    options = {"dataset": "digits", "method": "random", "subtasks": 2, "iters": 3}
    with pytest.raises(RuntimeError) as failed:
        fed.launch_torchrun(options, 1, tmp_path)
    message = str(failed.value)
    workers, report = message.split("--- torchrun's report (end) ---")
    assert "random has no option 'iters'" in workers and "exited with status 1" in message
