"""Networks used to distill and to evaluate: ConvNet (the field's workhorse), an MLP, ResNet-18.

Every factory returns a CPU module; the caller moves it to a device. Every network exposes
`embed(x)` (penultimate features) and `forward(x)` (logits).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_choice, check_images, check_int
from .conv import Conv2d

_MODELS: dict[str, Callable[..., nn.Module]] = {}

NORMS = ("instance", "batch", "layer", "none")
ACTS = ("relu", "leakyrelu", "sigmoid")
POOLS = ("avg", "max", "none")


def register_model(name: str):
    """Decorator that adds a network factory to the registry under `name`."""

    def wrap(fn):
        _MODELS[name] = fn
        return fn

    return wrap


def available_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, channels: int, num_classes: int, im_size: tuple[int, int], **kwargs) -> nn.Module:
    """Build a registered network on the CPU, e.g. create_model('convnet', 1, 10, (28, 28))."""
    check_choice("model", name, available_models())
    check_int("channels", channels, low=1)
    check_int("num_classes", num_classes, low=2)
    return _MODELS[name](channels=channels, num_classes=num_classes, im_size=tuple(im_size), **kwargs)


@dataclass
class ModelConfig:
    """Which network to build; fields a network does not take (e.g. depth for the MLP) are ignored."""

    name: str = "convnet"  # one of available_models()
    width: int = 128  # channels of each conv block (hidden units for the MLP)
    depth: int = 3  # conv blocks
    norm: str = "instance"  # instance | batch | layer | none
    act: str = "relu"  # relu | leakyrelu | sigmoid
    pool: str = "avg"  # avg | max | none


def build_model(cfg: ModelConfig, channels: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """create_model from a ModelConfig, passing each network only the options it has."""
    check_choice("model", cfg.name, available_models())
    accepted = inspect.signature(_MODELS[cfg.name]).parameters
    kwargs = {k: v for k, v in asdict(cfg).items() if k != "name" and k in accepted}
    return create_model(cfg.name, channels, num_classes, im_size, **kwargs)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":  # the field's "instance norm": one group per channel, affine
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "layer":  # normalise over (C, H, W) of each image; affine per channel
        return nn.GroupNorm(1, width, affine=True)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "leakyrelu": nn.LeakyReLU(0.01, inplace=True), "sigmoid": nn.Sigmoid()}[kind]


def _pool(kind: str) -> nn.Module:
    return {"avg": AvgPool2x2(), "max": nn.MaxPool2d(2), "none": nn.Identity()}[kind]


# 2x2 average pooling of contiguous NCHW CPU tensors runs as a matmul (avg_pool_2x2); False runs
# torch's avg_pool2d everywhere (read at each call, so benchmarks can compare the two).
POOL_AS_MATMUL = True


@functools.lru_cache(maxsize=32)
def _pool_matrix(width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2 width, width // 2): entry (r, j) = 1/4 where row r of two stacked image rows falls in
    output column j, i.e. (r mod width) // 2 == j; 0 elsewhere."""
    with torch.inference_mode(False):  # autograd saves it for backward, so never an inference tensor
        r = torch.arange(2 * width, device=device)
        m = torch.zeros(2 * width, width // 2, dtype=dtype, device=device)
        m[r, (r % width) // 2] = 0.25
    return m


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 2) of (N, C, H, W) x; the same numbers (each output is 1/4 times the sum of
    its four inputs, the other products are exact zeros).

    On the CPU, with H and W even, each pair of image rows (2 W contiguous floats) times
    _pool_matrix(W) gives the pooled row: one matmul forward, one backward. torch's avg_pool2d
    loops over windows without vectorising and zero-fills its gradient first; at the ConvNet's
    (256, 128, 32 / 16 / 8) it costs 1.7x / 2.4x / 5x the matmul's time forward + backward
    (bench/ab_pool.py). Elsewhere (CUDA, odd sizes, channels-last or other layouts): avg_pool2d."""
    n, c, h, w = x.shape
    if (
        not POOL_AS_MATMUL
        or x.device.type != "cpu"
        or h % 2
        or w % 2
        or x.dtype not in (torch.float32, torch.float64)
        or not x.is_contiguous()
    ):
        return F.avg_pool2d(x, 2)
    return (x.reshape(-1, 2 * w) @ _pool_matrix(w, x.dtype, x.device)).view(n, c, h // 2, w // 2)


class AvgPool2x2(nn.AvgPool2d):
    """nn.AvgPool2d(2) computed by avg_pool_2x2 (an AvgPool2d still, for code that checks the type)."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return avg_pool_2x2(x)


class _CheckedInput(nn.Module):
    """Base that rejects input of the wrong channels or size with a clear message."""

    channels: int
    im_size: tuple[int, int]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels or tuple(x.shape[-2:]) != self.im_size:
            check_images("x", x, self.channels, self.im_size)  # raises with the details


# New ConvNets fuse their first conv and instance norm on the CPU (see ConvNet.embed); set this
# to False to build networks that run the stock modules everywhere.
FUSE_FIRST_BLOCK = True


def instance_norm_affine(x: torch.Tensor, conv: nn.Conv2d, norm: nn.GroupNorm):
    """conv (3x3, stride 1) then instance norm of NCHW x, written as a per-image affine map of
    x's 3x3 patches: normalised channel c = scale_c w_c . p + shift_c.

    The mean and variance of each output channel follow from the mean mu and covariance S
    (9 cin x 9 cin) of the image's patches: w_c . mu + b_c and w_c^T S w_c (S from centred
    patches: exact). Returns patches (N, 9 cin, H W), w_img = scale x weight (N, cout, 9 cin)
    and shift (N, cout, 1).
    """
    patches = F.unfold(x, 3, padding=conv.padding[0])  # (N, 9 cin, H W)
    weight = conv.weight.flatten(1)  # (cout, 9 cin)
    mu = patches.mean(2, keepdim=True)  # (N, 9 cin, 1)
    centred = patches - mu
    cov = centred @ centred.transpose(1, 2) / patches.shape[2]  # (N, 9 cin, 9 cin)
    var = ((weight @ cov) * weight).sum(-1)  # (N, cout)
    scale = (norm.weight * torch.rsqrt(var + norm.eps))[:, :, None]  # (N, cout, 1)
    mean_out = weight @ mu + conv.bias[:, None]  # (N, cout, 1)
    # the bias enters the output and its mean alike, so its gradient is exactly 0, as the norm
    # makes it; it stays in the graph (torch.autograd.grad over all parameters needs that)
    shift = norm.bias[:, None] + scale * (conv.bias[:, None] - mean_out)
    return patches, scale * weight, shift


def conv_instance_norm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.GroupNorm) -> torch.Tensor:
    """norm(conv(x)) for a 3x3 stride-1 conv and an instance norm, as one batched matmul.

    Returns (N, cout, H W), flat: an in-place activation on a view would cost a copy in backward.
    On the CPU the stock pair costs 2-2.5x more with autograd (oneDNN runs 1- and 3-channel
    convs slowly, and GroupNorm makes two more passes over the 128 x 32 x 32 output).

    The shift rides in the matmul as one more patch row of ones: baddbmm(shift, w_img, patches)
    would first copy the broadcast shift into the whole output, and its backward would sum the
    output's gradient over H W for the shift, two passes over the largest tensor of the net."""
    patches, w_img, shift = instance_norm_affine(x, conv, norm)
    ones = patches.new_ones(len(x), 1, patches.shape[2])
    return torch.bmm(torch.cat([w_img, shift], 2), torch.cat([patches, ones], 1))


class ConvNet(_CheckedInput):
    """depth x [conv3x3(width) -> norm -> act -> pool] -> linear, as DC/DSA/DM/MTT define it.

    For 28x28 input the first conv pads by 3, so the net sees 32x32 (the reference's choice),
    and three poolings leave 4x4 features.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        act: str = "relu",
        pool: str = "avg",
    ):
        super().__init__()
        check_int("width", width, low=1)
        check_int("depth", depth, low=1)
        check_choice("norm", norm, NORMS)
        check_choice("act", act, ACTS)
        check_choice("pool", pool, POOLS)
        self.channels, self.im_size, self.num_classes = channels, tuple(im_size), num_classes
        h, w = self.im_size
        pad = 3 if (h, w) == (28, 28) else 1
        h, w = h + 2 * pad - 2, w + 2 * pad - 2
        self._first_size = (h, w)  # the first conv's output size
        layers, in_ch = [], channels
        for d in range(depth):
            layers += [
                Conv2d(in_ch, width, 3, padding=pad if d == 0 else 1),  # nn.Conv2d, see ddcore/conv.py
                _norm(norm, width),
                _act(act),
                _pool(pool),
            ]
            in_ch = width
            if pool != "none":
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"depth={depth} is too deep for im_size={self.im_size}: "
                    f"the feature map vanishes after {d + 1} poolings"
                )
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        # On the CPU, conv1 + instance norm run as one per-image matmul (conv_instance_norm): the
        # same function up to float rounding, 2-2.5x faster for that block with autograd. False
        # runs the stock modules (count_flops needs their hooks; cuDNN needs no help).
        self.fuse_first_block = FUSE_FIRST_BLOCK and norm == "instance"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (N, width * h * w)."""
        self._check(x)
        if self.fuse_first_block and not x.is_cuda and x.shape[0] > 0:
            conv, norm, act = self.features[:3]
            y = act(conv_instance_norm(x, conv, norm))  # (N, width, H W)
            return self.features[3:](y.view(len(x), y.shape[1], *self._first_size)).flatten(1)
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(_CheckedInput):
    """Two hidden layers of `width` on flattened pixels; a cross-architecture check."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], width: int = 128):
        super().__init__()
        check_int("width", width, low=1)
        self.channels, self.im_size, self.num_classes = channels, tuple(im_size), num_classes
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * im_size[0] * im_size[1], width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ResNet18(_CheckedInput):
    """torchvision's ResNet-18 for small images: 3x3 stem of stride 1 and no max-pool."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], norm: str = "batch"):
        super().__init__()
        from torchvision.models import resnet18

        check_choice("norm", norm, ("batch", "instance"))
        self.channels, self.im_size, self.num_classes = channels, tuple(im_size), num_classes
        norm_layer = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.GroupNorm(c, c))
        net = resnet18(weights=None, num_classes=num_classes, norm_layer=norm_layer)
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.classifier, net.fc = net.fc, nn.Identity()
        self.body = net
        self.feature_dim = 512

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


register_model("convnet")(ConvNet)
register_model("mlp")(MLP)
register_model("resnet18")(ResNet18)


def count_flops(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions and linear layers for one forward of x."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * output.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    fused = [m for m in net.modules() if getattr(m, "fuse_first_block", False)]
    for m in fused:  # the hooks count module calls; the fused first block makes none
        m.fuse_first_block = False
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        for m in fused:
            m.fuse_first_block = True
    return total
