import pytest
import torch
from safetensors.torch import save_file

from ddcore.io import load_checkpoint, save_checkpoint
from ddcore.synthetic import SyntheticSet


def _set(soft=False):
    labels = torch.softmax(torch.randn(6, 3), 1) if soft else torch.tensor([0, 0, 1, 1, 2, 2])
    return SyntheticSet(
        torch.randn(6, 1, 8, 8),
        labels,
        {"method": "dm", "ipc": 2, "config": {"lr": 1.0}},
        {"decoder.weight": torch.randn(4, 4)},
    )


@pytest.mark.parametrize("soft", [False, True])
def test_round_trip(tmp_path, soft):
    a = _set(soft)
    a.save(tmp_path / "s.safetensors")
    b = SyntheticSet.load(tmp_path / "s.safetensors")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.extras["decoder.weight"], b.extras["decoder.weight"])
    assert b.meta == a.meta and b.soft_labels == soft
    assert b.hard_labels.tolist() == a.hard_labels.tolist()


def test_saved_file_is_safetensors_not_pickle(tmp_path):
    _set().save(tmp_path / "s.safetensors")
    raw = (tmp_path / "s.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and header_len < len(raw)
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_truncated_corrupted_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    _set().save(path)
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated, corrupted or another format"):
        SyntheticSet.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"PK\x03\x04 not a tensor file")
    with pytest.raises(ValueError, match="not a valid ddcore tensor file"):
        SyntheticSet.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not written by ddcore"):
        SyntheticSet.load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError):
        SyntheticSet.load(tmp_path / "missing.safetensors")


def test_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="3 labels for 6 images"):
        SyntheticSet(torch.randn(6, 1, 8, 8), torch.zeros(3, dtype=torch.long))


def test_checkpoints_load_without_code(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"x": torch.ones(3), "it": 4, "gen": torch.Generator().get_state()})
    assert load_checkpoint(path)["it"] == 4

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"evil": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="not a readable ddcore checkpoint"):
        load_checkpoint(tmp_path / "evil.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(tmp_path / "cut.ckpt")
