"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021).

One random *draw* is sampled and then applied to several batches, so real and synthetic
images are transformed the same way while gradients flow back to the synthetic pixels.

A draw holds parameters for `num_groups` groups; each image is mapped to a group. Matching
uses one group per class (all real and synthetic images of a class share the transform, as
the reference does with one seed per class); student training uses one group per image.
Per-image parameters for crop/scale/rotate need their own grid code: torchvision's v2
functional ops apply one parameter to a whole batch, so we build the affine grids here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .checks import check_choice, check_float

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DIGIT_DATASETS = ("digits", "mnist5k", "mnist", "svhn", "mnist5k_pairs")  # flipping changes a digit's meaning


@dataclass
class DSAConfig:
    strategy: str = "color_crop_cutout_flip_scale_rotate"  # families joined by '_', or 'none'
    brightness: float = 1.0  # add U(-0.5, 0.5) * brightness
    saturation: float = 2.0  # scale distance to the channel mean by U(0, saturation)
    contrast: float = 0.5  # scale distance to the image mean by U(contrast, 1 + contrast)
    crop: float = 0.125  # shift by up to this fraction of the side, zero fill
    cutout: float = 0.5  # zero a square of this fraction of the side
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # stretch each axis by U(1/scale, scale)
    rotate: float = 15.0  # rotate by U(-rotate, rotate) degrees
    one_family: bool = True  # the reference's 'S' mode: one family per group; False applies all

    def __post_init__(self):
        for fam in self.families:
            check_choice("DSAConfig.strategy family", fam, FAMILIES)
        for name in ("brightness", "saturation", "contrast", "crop", "cutout", "flip", "rotate"):
            check_float(f"DSAConfig.{name}", getattr(self, name), low=0.0)
        check_float("DSAConfig.scale", self.scale, low=1.0)

    @property
    def families(self) -> list[str]:
        return [] if self.strategy in ("none", "") else self.strategy.split("_")


def dsa_for(dataset_name: str, **overrides) -> DSAConfig:
    """The reference DSA settings, without flips for digit data sets."""
    cfg = DSAConfig(**overrides)
    base_name = dataset_name.split("_rare")[0]  # the rare-subgroup benchmark keeps its digits
    if base_name in DIGIT_DATASETS:
        cfg = replace(cfg, strategy="_".join(f for f in cfg.families if f != "flip") or "none")
    return cfg


@dataclass
class DSADraw:
    """Sampled parameters for `num_groups` groups; every tensor's first dim is the group."""

    families: torch.Tensor  # (G,) index into cfg.families for 'S' mode
    params: dict[str, torch.Tensor]
    cfg: DSAConfig

    @property
    def num_groups(self) -> int:
        return self.families.shape[0]


def sample_dsa(
    cfg: DSAConfig,
    num_groups: int,
    im_size: tuple[int, int],
    generator: torch.Generator | None = None,
    same_family: bool = False,
) -> DSADraw:
    """Draw parameters of every family for each group (drawing all keeps the RNG stream simple).

    `same_family=True` picks one family for all groups (the reference's student training).
    """
    g, (h, w) = num_groups, im_size
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    n_fam = max(len(cfg.families), 1)
    fam = torch.randint(n_fam, (1 if same_family else g,), generator=generator).expand(g).clone()
    crop_h, crop_w = int(h * cfg.crop + 0.5), int(w * cfg.crop + 0.5)
    params = {
        "brightness": (u(g) - 0.5) * cfg.brightness,
        "saturation": u(g) * cfg.saturation,
        "contrast": u(g) + cfg.contrast,
        "shift": torch.stack(
            [
                torch.randint(-crop_w, crop_w + 1, (g,), generator=generator),
                torch.randint(-crop_h, crop_h + 1, (g,), generator=generator),
            ],
            1,
        ),
        "cutout_box": _cutout_boxes(u(g), u(g), h, w, cfg.cutout),
        "flip": u(g) < cfg.flip,
        "scale": u(g, 2) * (cfg.scale - 1.0 / cfg.scale) + 1.0 / cfg.scale,
        "angle": (u(g) - 0.5) * 2 * math.radians(cfg.rotate),
    }
    return DSADraw(fam, params, cfg)


def apply_dsa(x: torch.Tensor, draw: DSADraw | None, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Transform images x (N, C, H, W) by the draw; `groups` (N,) maps images to groups.

    groups=None means one group per image when the draw has N groups, else all in group 0.
    draw=None (DSA off) returns x unchanged.
    """
    if draw is None or not draw.cfg.families:
        return x
    fams = draw.cfg.families
    if groups is None:
        groups = (
            torch.arange(x.shape[0]) if draw.num_groups == x.shape[0] else torch.zeros(x.shape[0], dtype=torch.long)
        )
    groups = groups.cpu()
    params = {k: v[groups].to(x.device) for k, v in draw.params.items()}
    if not draw.cfg.one_family:  # 'M' mode: every family in turn
        for fam in fams:
            x = _FAMILY_FNS[fam](x, params)
        return x
    image_fam = draw.families[groups]
    if bool((image_fam == image_fam[0]).all()):
        return _FAMILY_FNS[fams[int(image_fam[0])]](x, params)
    out = x
    for f in image_fam.unique().tolist():
        idx = (image_fam == f).nonzero().squeeze(1)
        sub = {k: v[idx.to(v.device)] for k, v in params.items()}
        out = out.index_copy(0, idx.to(x.device), _FAMILY_FNS[fams[f]](x[idx.to(x.device)], sub))
    return out


def _color(x, p):
    x = x + p["brightness"].view(-1, 1, 1, 1)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * p["saturation"].view(-1, 1, 1, 1) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * p["contrast"].view(-1, 1, 1, 1) + mean_all


def _affine(x, theta):
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _crop(x, p):
    # Translation by whole pixels: in normalised coordinates one pixel is 2 / side.
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = p["shift"][:, 0].float() * 2 / w
    theta[:, 1, 2] = p["shift"][:, 1].float() * 2 / h
    return _affine(x, theta)


def _scale(x, p):
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = p["scale"][:, 0], p["scale"][:, 1]
    return _affine(x, theta)


def _rotate(x, p):
    a = p["angle"]
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = -torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def _cutout_boxes(ux, uy, h, w, ratio):
    """(G, 4) boxes x0, y0, x1, y1 of a square of `ratio` of the side around a uniform centre."""
    side_h, side_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cx, cy = (ux * w).long(), (uy * h).long()
    x0, y0 = cx - side_w // 2, cy - side_h // 2
    return torch.stack([x0, y0, x0 + side_w, y0 + side_h], 1)


def _cutout(x, p):
    _, _, h, w = x.shape
    box = p["cutout_box"].view(-1, 4, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= box[:, 1]) & (rows < box[:, 3]) & (cols >= box[:, 0]) & (cols < box[:, 2])
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _flip(x, p):
    return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)


_FAMILY_FNS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}
