"""Nothing is lost, nothing is written elsewhere, and storage accounting holds for any shape."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcore.storage import storage
from ddcore.synthetic import SyntheticSet

CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from ddcore.data import load_dataset, subset_per_class
    from ddcore.distill import distill
    from ddcore.models import ModelConfig
    data = subset_per_class(load_dataset("mnist5k"), 20, seed=0)
    syn = distill("dm", data, ipc=2, seed=3, progress=False, iterations=int(sys.argv[2]), batch_real=8,
                  model=ModelConfig(width=8), checkpoint=sys.argv[1], checkpoint_every=2, resume=True)
    syn.save(sys.argv[1] + ".done.safetensors")
""")


def _run_child(ckpt: Path, iterations: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ckpt), str(iterations)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _checkpoint_iteration(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, weights_only=True)["iteration"])
    except Exception:  # not written yet, or being replaced right now
        return 0


def test_a_killed_run_resumes_to_the_same_set_as_an_uninterrupted_one(tmp_path):
    iterations = 200
    ckpt = tmp_path / "killed.ckpt"
    child = _run_child(ckpt, iterations)
    deadline = time.time() + 120
    while _checkpoint_iteration(ckpt) < 4 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)  # no chance to clean up: a real crash
    child.wait()
    stopped_at = _checkpoint_iteration(ckpt)
    assert 4 <= stopped_at < iterations, f"the child was not killed midway (checkpoint at {stopped_at})"
    assert not (tmp_path / "killed.ckpt.done.safetensors").exists()
    resumed = _run_child(ckpt, iterations)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    reference = _run_child(tmp_path / "straight.ckpt", iterations)
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-2000:]
    a = SyntheticSet.load(tmp_path / "killed.ckpt.done.safetensors")
    b = SyntheticSet.load(tmp_path / "straight.ckpt.done.safetensors")
    assert torch.equal(a.images, b.images)  # bitwise: same kernels, one thread, same RNG states


def test_distillation_writes_only_into_the_folders_it_was_given(small, tmp_path, monkeypatch):
    from ddcore.decoder import DecoderConfig
    from ddcore.distill import distill
    from ddcore.experts import ExpertConfig
    from ddcore.labels import LabellerConfig
    from ddcore.models import ModelConfig

    workdir, out = tmp_path / "cwd", tmp_path / "out"
    workdir.mkdir(), out.mkdir()
    monkeypatch.chdir(workdir)
    tiny = ModelConfig(width=8)
    distill(
        "d3",
        small,
        ipc=2,
        progress=False,
        iterations=2,
        batch_real=8,
        syn_steps=1,
        expert_epochs=1,
        max_start_epoch=0,
        decoder=DecoderConfig(4, 4),
        experts=ExpertConfig(1, 1, model=tiny),
        labeller=LabellerConfig(epochs=1, model=tiny),
        checkpoint=out / "d3.ckpt",
    )
    assert list(workdir.iterdir()) == []
    written = {p.relative_to(out).parts[0] for p in out.rglob("*")}
    assert "d3.ckpt" in written and any(n.startswith("experts_") for n in written)
    assert any(n.startswith("labeller_") for n in written)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 20),
    ipc=st.integers(1, 5),
    channels=st.sampled_from([1, 3]),
    side=st.integers(4, 12),
    soft=st.booleans(),
)
def test_storage_of_image_sets_for_any_shape(num_classes, ipc, channels, side, soft):
    n = num_classes * ipc
    labels = torch.rand(n, num_classes) if soft else torch.arange(num_classes).repeat_interleave(ipc)
    syn = SyntheticSet(torch.zeros(n, channels, side, side), labels, {"num_classes": num_classes})
    s = storage(syn)
    image_values = channels * side * side
    assert s["images_values"] == n * image_values
    assert s["labels_values"] == labels.numel()
    assert s["values"] == s["images_values"] + s["labels_values"]
    assert s["bytes"] == 4 * s["images_values"] + labels.element_size() * labels.numel()
    assert s["ipc_equivalent"] >= ipc  # labels only ever add
    assert abs(s["ipc_equivalent"] - s["values"] / (num_classes * image_values)) < 1e-12


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 2000),
    lpc=st.integers(1, 50),
    latent=st.integers(1, 64),
    decoder=st.integers(0, 10**6),
    image_values=st.integers(64, 12288),
)
def test_storage_model_is_linear_in_lpc_and_decoder(num_classes, lpc, latent, decoder, image_values):
    from ddcore.storage import d3_ipc_equivalent

    one = d3_ipc_equivalent(num_classes, lpc, latent, decoder, image_values)
    more = d3_ipc_equivalent(num_classes, lpc + 1, latent, decoder, image_values)
    per_prior = (2 * latent + num_classes) / image_values
    assert abs((more - one) - per_prior) < 1e-9
    assert d3_ipc_equivalent(num_classes, lpc, latent, decoder, image_values, num_decoders=2) >= one
