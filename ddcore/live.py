"""A live view of a running distillation for a person in JupyterLab: the loss so far and a few
synthetic images per class, redrawn in place every few iterations, gone when the run ends.

    with LiveView(data, iterations=iterations, enabled=live_view_wanted(live_view)) as view:
        syn = distill("dm", data, ipc=ipc, iterations=iterations, on_iteration=view)

The frames go through one IPython display handle; when the view closes it replaces them with an
empty output, so a notebook saved afterwards (JupyterLab, papermill, nbval) keeps no frame.
"""

from __future__ import annotations

import base64
import io

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .checks import check_int
from .data import Dataset

SETTINGS = ("auto", True, False)


def live_view_wanted(live_view="auto") -> bool:
    """Whether to show a live view: True, False, or 'auto' = only when a person runs the cell.

    'auto' is True inside a Jupyter kernel whose current request comes from a frontend that can
    answer `input()` (the request's `allow_stdin`). JupyterLab and the classic notebook send
    allow_stdin=True with every cell they run; nbclient, and so papermill, nbconvert --execute
    and ddcore.reproduce, sets `kc.allow_stdin = False`, and nbval sends allow_stdin=False.
    Outside a kernel (scripts, pytest, a terminal IPython) 'auto' is False.
    """
    if not (live_view is True or live_view is False or (isinstance(live_view, str) and live_view == "auto")):
        raise ValueError(f"live_view={live_view!r} is not allowed; choose one of {list(SETTINGS)}")
    return _person_at_the_kernel() if live_view == "auto" else live_view


def _person_at_the_kernel() -> bool:
    """True inside an ipykernel whose current execute request allows stdin (a frontend, not a runner)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)  # None outside IPython and in terminal IPython
    get_parent = getattr(kernel, "get_parent", None)  # ipykernel >= 6
    if get_parent is None:
        return False
    return get_parent().get("content", {}).get("allow_stdin", False) is True


class LiveView:
    """Pass as `distill(..., on_iteration=view)`: every `every` iterations, one figure of the loss
    so far and `per_class` synthetic images of each class replaces the previous one in place.

    The view closes (its output emptied) on leaving a `with` block, on `close()`, or after
    iteration `iterations` when that is given; one view serves one run. `enabled=False` makes it
    a no-op. `display` is IPython.display.display unless given (tests pass a fake). Methods that
    learn no images (d3 learns priors and a decoder) show the loss alone.
    """

    def __init__(
        self,
        dataset: Dataset,
        every: int = 10,
        per_class: int = 4,
        iterations: int | None = None,
        enabled: bool = True,
        display=None,
    ):
        check_int("every", every, low=1)
        check_int("per_class", per_class, low=1)
        if iterations is not None:
            check_int("iterations", iterations, low=1)
        self.dataset, self.every, self.per_class, self.iterations = dataset, every, per_class, iterations
        self.enabled, self.closed = bool(enabled), False
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.seconds = 0.0
        self._images: torch.Tensor | None = None
        self._display, self._handle = display, None

    def watch(self, params: dict[str, torch.Tensor]) -> None:
        """Called once by distill with the tensors being learned; keeps a reference to the images."""
        self._images = params.get("images_syn")

    def __call__(self, iteration: int, loss: float, seconds: float) -> None:
        if not self.enabled or self.closed:
            return
        self.steps.append(iteration + 1)  # steps taken so far
        self.losses.append(loss)
        self.seconds += seconds
        if self.iterations is not None and iteration + 1 >= self.iterations:
            self.close()
        elif (iteration + 1) % self.every == 0:
            self._show(_png_bundle(self.figure()))

    def figure(self) -> Figure:
        """The current frame: loss against iteration (left), images per class (right)."""
        images = self._images.detach().cpu() if self._images is not None else None
        return live_figure(self.steps, self.losses, self.seconds, images, self.dataset, self.per_class, self.iterations)

    def close(self) -> None:
        """Replace the frames with an empty output, so no saved notebook keeps one."""
        if self._handle is not None:
            self._handle.update({}, raw=True)
        self.closed = True

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _show(self, bundle: dict) -> None:
        if self._handle is None:
            display = self._display
            if display is None:
                from IPython.display import display
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def live_figure(steps, losses, seconds, images, dataset: Dataset, per_class: int, iterations=None) -> Figure:
    """Loss so far and a mosaic of `per_class` images per class (rows) from images_syn laid out by
    class (ipc per class, in class order, as distill's initialisation makes them).

    A matplotlib Figure outside pyplot: never registered, so never shown twice by the inline
    backend nor left open; garbage-collected once rendered.
    """
    rows = dataset.num_classes
    fig = Figure(figsize=(9.0, max(3.0, 0.3 * rows + 1.2)), dpi=80)
    loss_ax, image_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    loss_ax.plot(steps, losses, color="C0", lw=1)
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    title = "no iteration yet"
    if steps:
        total = f"/{iterations}" if iterations else ""
        title = f"iteration {steps[-1]}{total}, loss {losses[-1]:.4g}, {seconds / len(steps):.2f} s/it"
    loss_ax.set_title(title, fontsize=9)
    image_ax.set_xticks([])
    if images is None or len(images) % rows:
        image_ax.set_yticks([])
        image_ax.text(0.5, 0.5, "this method learns no images", ha="center", va="center", fontsize=9)
    else:
        tile = _mosaic(dataset.to_unit(images).clamp(0, 1), rows, per_class).numpy()  # (rows*(H+1), m*(W+1), ch)
        height = tile.shape[0] / rows
        image_ax.imshow(tile.squeeze(-1) if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=1)
        image_ax.set_yticks([height * (r + 0.5) for r in range(rows)], dataset.class_names, fontsize=7)
        image_ax.set_title(f"{min(per_class, len(images) // rows)} synthetic images per class", fontsize=9)
    fig.tight_layout()
    return fig


def _mosaic(pixels: torch.Tensor, rows: int, per_class: int) -> torch.Tensor:
    """(rows * k, ch, H, W) images in class order -> one (rows*(H+1), m*(W+1), ch) array, white
    1-pixel gaps, the first m = min(per_class, k) images of each class in a row."""
    k = len(pixels) // rows
    m = min(per_class, k)
    grid = F.pad(pixels.reshape(rows, k, *pixels.shape[1:])[:, :m], (0, 1, 0, 1), value=1.0)  # (rows, m, ch, H+1, W+1)
    r, m, ch, h, w = grid.shape
    return grid.permute(0, 3, 1, 4, 2).reshape(r * h, m * w, ch)


def _png_bundle(fig: Figure) -> dict:
    """The figure as a raw display bundle: base64 PNG, and a line for text-only frontends."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": "<live view>"}
