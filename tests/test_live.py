"""The live view: redraws every `every` iterations through one display handle, leaves an empty
output when it finishes, opens no pyplot figure, and is on by 'auto' only for a person at a kernel."""

import textwrap
import types

import IPython
import matplotlib.pyplot as plt
import nbformat
import papermill as pm
import pytest
import torch

from ddcore.distill import distill
from ddcore.live import LiveView, _mosaic, live_figure, live_view_wanted
from ddcore.models import ModelConfig


class FakeDisplay:
    """Stands in for IPython.display.display: records the first frame and every update."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, bundle, raw, display_id):
        assert raw is True and display_id is True
        self.shown.append(bundle)
        return self

    def update(self, bundle, raw):
        assert raw is True
        self.updates.append(bundle)


def _feed(view, n, start=0):
    for it in range(start, start + n):
        view(it, 1.0 / (it + 1), 0.01)


def _view(small, **kwargs):
    view = LiveView(small, display=FakeDisplay(), **kwargs)
    view.watch({"images_syn": small.images_train[:20].clone()})  # 2 per class, in class order
    return view


def test_redraws_only_every_few_iterations_through_one_handle(small):
    view = _view(small, every=10)
    _feed(view, 25)
    fake = view._display
    assert len(fake.shown) == 1 and len(fake.updates) == 1  # after iterations 10 and 20
    assert set(fake.shown[0]) == {"image/png", "text/plain"} and fake.updates[0]["image/png"]


def test_the_last_iteration_clears_the_display(small):
    view = _view(small, every=2, iterations=7)
    _feed(view, 7)
    fake = view._display
    assert len(fake.shown) == 1 and fake.updates[-1] == {}  # frames at 2, 4, 6; emptied at 7
    assert len(fake.updates) == 3 and view.closed
    _feed(view, 3, start=7)
    assert len(fake.updates) == 3  # a closed view stays quiet


def test_leaving_the_block_clears_the_display_even_on_error(small):
    with pytest.raises(RuntimeError), _view(small, every=1) as view:
        _feed(view, 3)
        raise RuntimeError("the run failed")
    assert view._display.updates[-1] == {}


def test_a_disabled_view_never_displays(small):
    with _view(small, every=1, enabled=False) as view:
        _feed(view, 5)
    assert view._display.shown == [] and view._display.updates == []


def test_frames_open_no_pyplot_figure(small):
    before = plt.get_fignums()
    with _view(small, every=1) as view:
        _feed(view, 3)
    live_figure([1], [0.5], 0.1, None, small, per_class=4)  # no images: the loss alone
    assert plt.get_fignums() == before


def test_the_mosaic_puts_each_class_on_its_own_row():
    pixels = torch.arange(3.0).repeat_interleave(4).view(12, 1, 1, 1).expand(12, 1, 2, 2) / 10  # 3 classes x 4
    tile = _mosaic(pixels, rows=3, per_class=2)
    assert tile.shape == (3 * 3, 2 * 3, 1)  # 1-pixel gaps after each 2x2 image
    for r in range(3):
        assert torch.all(tile[3 * r : 3 * r + 2, :2, 0] == r / 10)
        assert torch.all(tile[3 * r + 2, :, 0] == 1.0)


def test_distill_hands_the_learned_images_to_the_view(small):
    view = LiveView(small, every=1, iterations=3, display=FakeDisplay())
    syn = distill("dm", small, ipc=2, iterations=3, batch_real=8, model=ModelConfig(width=8), on_iteration=view)
    assert torch.equal(view._images.detach().cpu(), syn.images)  # the live tensor, read in place
    assert view.steps == [1, 2, 3] and len(view._display.updates) == 2 and view._display.updates[-1] == {}


@pytest.mark.parametrize("bad", ["yes", "on", 1, 0, None, "Auto"])
def test_live_view_wanted_refuses_other_values(bad):
    with pytest.raises(ValueError, match=r"live_view=.* is not allowed; choose one of \['auto', True, False\]"):
        live_view_wanted(bad)


def test_auto_is_off_outside_a_kernel_and_follows_allow_stdin_inside(monkeypatch):
    assert live_view_wanted(True) is True and live_view_wanted(False) is False
    assert live_view_wanted("auto") is False  # pytest: no IPython shell
    for allow_stdin in (True, False):
        request = {"content": {"code": "", "allow_stdin": allow_stdin}}
        shell = types.SimpleNamespace(kernel=types.SimpleNamespace(get_parent=lambda request=request: request))
        monkeypatch.setattr(IPython, "get_ipython", lambda shell=shell: shell)
        assert live_view_wanted("auto") is allow_stdin
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace())  # terminal IPython: no kernel
    assert live_view_wanted("auto") is False


@pytest.mark.slow
def test_auto_in_real_kernels_on_for_a_frontend_off_for_papermill(tmp_path):
    from jupyter_client.manager import start_new_kernel

    code = "from ddcore.live import live_view_wanted\nprint('wanted', live_view_wanted('auto'))"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(code)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False)
    printed = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs[0]["text"]
    assert printed == "wanted False\n"
    km, kc = start_new_kernel(kernel_name="python3")  # a client with stdin, as JupyterLab's
    try:
        seen = []
        for allow_stdin in (True, False):
            kc.execute_interactive(textwrap.dedent(code), allow_stdin=allow_stdin, output_hook=seen.append)
        assert [m["content"]["text"] for m in seen if m["msg_type"] == "stream"] == ["wanted True\n", "wanted False\n"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
