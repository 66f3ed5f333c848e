"""distill(..., snapshots=[...]): the learned images kept at given iteration counts."""

import pytest
import torch

from ddcore.distill import distill
from ddcore.models import ModelConfig


def _dm(small, **kwargs):
    return distill("dm", small, 2, iterations=6, model=ModelConfig(width=8), progress=False, **kwargs)


def test_snapshots_hold_the_images_at_those_iterations(small):
    syn = _dm(small, snapshots=(0, 3, 6))
    assert syn.meta["snapshots"] == [0, 3, 6]
    assert torch.equal(syn.snapshot(6).images, syn.images)
    start = distill("dm", small, 2, iterations=0, model=ModelConfig(width=8), progress=False).images
    assert torch.equal(syn.snapshot(0).images, start)  # 0 = the initialisation
    # same seed: a run of 3 iterations is a prefix of the run of 6
    three = distill("dm", small, 2, iterations=3, model=ModelConfig(width=8), progress=False).images
    assert torch.equal(syn.snapshot(3).images, three)
    assert syn.snapshot(3).meta["iteration"] == 3 and torch.equal(syn.snapshot(3).labels, syn.labels)


def test_snapshots_survive_a_resume(small, tmp_path):
    whole = _dm(small, snapshots=(2, 5))
    ckpt = tmp_path / "run.ckpt"

    def crash(it, loss, seconds):
        if it == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _dm(small, snapshots=(2, 5), checkpoint=ckpt, checkpoint_every=2, on_iteration=crash)
    resumed = _dm(small, snapshots=(2, 5), checkpoint=ckpt, checkpoint_every=2, resume=True)
    assert torch.equal(resumed.snapshot(2).images, whole.snapshot(2).images)
    assert torch.equal(resumed.snapshot(5).images, whole.snapshot(5).images)


def test_snapshot_saved_and_missing(small, tmp_path):
    from ddcore.synthetic import SyntheticSet

    syn = _dm(small, snapshots=(1,))
    syn.save(tmp_path / "s.safetensors")
    back = SyntheticSet.load(tmp_path / "s.safetensors")
    assert torch.equal(back.snapshot(1).images, syn.snapshot(1).images)
    with pytest.raises(KeyError, match=r"iteration 4; this set kept \[1\]"):
        back.snapshot(4)
    with pytest.raises(ValueError, match="snapshots"):
        _dm(small, snapshots=(-1,))
