"""A faster `ConvNet.embed` for distribution matching (DM): the same numbers, less CPU time.

DM embeds 2,560 real images through a fresh random ConvNet every iteration, without autograd.
On a CPU the stock modules spend their time moving activations, not multiplying. Here, per chunk
of CHUNK images, activations stay channels-last (N, H, W, C) from the first block to the last:
- first conv + instance norm is one per-image matmul of the 3x3 patches: the mean and variance of
  each output channel follow from the mean and covariance (9 cin x 9 cin) of the image's patches;
  oneDNN's 1-channel conv runs at ~8 GFLOP/s and GroupNorm makes a second pass over its output;
- 3x3 convs with >= WINOGRAD_MIN_CHANNELS inputs are Winograd F(4x4, 3x3): 36 batched matmuls
  with 4x fewer multiplies; narrower ones are oneDNN convs on a channels-last view;
- instance norm, activation and pooling work on (N, H, W, C) without layout changes.
With autograd (the 100 synthetic images), the stock modules in chunks of CHUNK are as fast as
any decomposition measured here, so `embed` uses them. Measured numbers: bench/embed_speed.py.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .models import ConvNet, instance_norm_affine

# 1-thread CPU seconds for 2,560 1x28x28 images, width 128, median of 20 (another job running):
# net.embed in chunks of 16: 5.6-5.9; here, chunks of 8: 2.4-2.6; chunks of 16: 2.5-2.9.
CHUNK = 8  # images per pass: Winograd's tiles (2.25x the input) of 8 images stay in cache
FIRST_PIECE = 4  # the first block's output is 512 KB per image: 4 at a time stay in L2
# Below 128 channels Winograd's transforms cost more than they save: width 64, 2,560 images,
# 1 thread: 1.33 s (Winograd) vs 1.17 s (oneDNN); width 96: a tie; width 128: 2.4 s vs 2.9 s.
WINOGRAD_MIN_CHANNELS = 128

# Winograd F(4x4, 3x3) (Lavin & Gray 2016): y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 input
# tile d, a 3x3 kernel g and a 4x4 output tile y; it computes cross-correlation, as conv2d does.
_BT = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
_G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


@functools.cache
def _winograd_mats(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """kron(M, M) for M = B^T, G, A^T: (36, 36), (36, 9), (16, 36); each maps a flattened tile.

    One dense 36x36 matmul beats two 6x6 passes (1.9 vs 4.3 ms per 16 images' tiles)."""
    mats = [torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT)]
    return tuple(torch.kron(m, m).to(dtype) for m in mats)


def embed(net: nn.Module, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """`net.embed(x)`, in chunks of `chunk` images; fast on the CPU for ConvNet without autograd."""
    chunk = chunk or CHUNK
    if x.is_cuda:  # cuDNN wants whole batches; channels_last suits its conv kernels
        return net.embed(x.contiguous(memory_format=torch.channels_last))
    if len(x) == 0 or any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()):
        return net.embed(x)  # chunks would change the batch statistics
    frozen = not any(p.requires_grad for p in net.parameters())
    if torch.is_grad_enabled() and (x.requires_grad or not frozen):
        # stock modules: with autograd they beat every decomposition tried here
        if frozen:  # DM's synthetic images
            return _ChunkedEmbed.apply(x, net, chunk)
        return torch.cat([net.embed(xc) for xc in x.split(chunk)])
    if not _supported(net, x):
        return torch.cat(_map(net.embed, x.split(chunk)))
    net._check(x)
    blocks = [_prepare(net.features[i : i + 4]) for i in range(0, len(net.features), 4)]
    return torch.cat(_map(lambda xc: _forward(blocks, xc), x.split(chunk)))


def _map(fn, items, grad: bool = False) -> list:
    """[fn(item) for item in items] on torch.get_num_threads() threads of one core each."""
    # A chunk is 20-40 small ops. With 2 OpenMP threads every op ends at a barrier, and when
    # another job holds a core each barrier waits for the scheduler: 2,560 images took 9.7 s, vs
    # 2.5 s on 1 thread. Threads that run whole chunks never wait for each other.
    items, threads = list(items), torch.get_num_threads()
    out = [None] * len(items)

    def work(first: int, step: int) -> None:
        with torch.set_grad_enabled(grad):  # grad mode is per thread
            for i in range(first, len(items), step):
                out[i] = fn(items[i])

    if threads == 1 or len(items) == 1:
        work(0, 1)
        return out
    lock = threading.Lock()

    def alone(first: int) -> None:
        with lock:  # OpenMP's thread count is per thread; MKL's is global, restored below
            torch.set_num_threads(1)
        work(first, threads)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(alone, range(threads)))
    finally:
        torch.set_num_threads(threads)
    return out


class _ChunkedEmbed(torch.autograd.Function):
    """net.embed(x) of a frozen net and its gradient w.r.t. x, chunk by chunk on _map's threads."""

    @staticmethod
    def forward(ctx, x, net, chunk):
        def run(xc):  # each chunk gets its own graph, from a leaf copy of its images
            xc = xc.detach().requires_grad_(True)
            return xc, net.embed(xc)

        ctx.graphs = _map(run, x.split(chunk), grad=True)
        return torch.cat([out.detach() for _, out in ctx.graphs])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        graphs, ctx.graphs = ctx.graphs, None  # freed after this backward, as autograd does
        grads = grad.split([len(xc) for xc, _ in graphs])
        dx = _map(lambda k: torch.autograd.grad(graphs[k][1], graphs[k][0], grads[k])[0], range(len(graphs)))
        return torch.cat(dx), None, None


def _supported(net: nn.Module, x: torch.Tensor) -> bool:
    """A ConvNet of 3x3 stride-1 convs, instance or no norm, float32/64 input of its dtype."""
    if not isinstance(net, ConvNet) or x.dtype not in (torch.float32, torch.float64):
        return False
    convs, norms = net.features[0::4], net.features[1::4]
    return (
        all(
            isinstance(c, nn.Conv2d)
            and c.kernel_size == (3, 3)
            and c.stride == (1, 1)
            and c.dilation == (1, 1)
            and c.groups == 1
            and c.padding_mode == "zeros"
            and c.bias is not None
            and c.weight.dtype == x.dtype
            for c in convs
        )
        and all(_is_instance_norm(n) or isinstance(n, nn.Identity) for n in norms)
        and all(isinstance(a, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)) for a in net.features[2::4])
        and all(isinstance(p, (nn.AvgPool2d, nn.MaxPool2d, nn.Identity)) for p in net.features[3::4])
    )


def _is_instance_norm(norm: nn.Module) -> bool:
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine


def _prepare(block: nn.Sequential) -> dict:
    """One [conv, norm, act, pool] block, with its Winograd weights (36, cin, cout) if it uses them."""
    conv, norm, act, pool = block
    cout, cin = conv.weight.shape[:2]
    b = dict(conv=conv, norm=norm if _is_instance_norm(norm) else None, act=act, pool=pool, U=None)
    if cin >= WINOGRAD_MIN_CHANNELS:  # per call: DM draws a fresh net every iteration
        kg = _winograd_mats(conv.weight.dtype)[1]
        b["U"] = (kg @ conv.weight.permute(2, 3, 1, 0).reshape(9, cin * cout)).view(36, cin, cout)
    return b


def _forward(blocks: list[dict], x: torch.Tensor) -> torch.Tensor:
    """Embed one chunk of NCHW images; activations are (N, H, W, C) between blocks."""
    b = blocks[0]
    x = torch.cat(
        [_pool(b["act"](_first_conv(piece, b["conv"], b["norm"])), b["pool"]) for piece in x.split(FIRST_PIECE)]
    )
    for b in blocks[1:]:
        pad = b["conv"].padding[0]
        if b["U"] is not None:
            x = _winograd(x, b["U"], pad)
        else:  # oneDNN on the channels-last view; its output is channels-last too
            x = F.conv2d(x.permute(0, 3, 1, 2), b["conv"].weight, None, padding=pad).permute(0, 2, 3, 1)
        x = _instance_norm(x, b["norm"]) if b["norm"] else x + b["conv"].bias  # norm cancels bias
        x = _pool(b["act"](x), b["pool"])
    return x.permute(0, 3, 1, 2).flatten(1)  # the (C, H, W) order of net.embed


def _first_conv(x: torch.Tensor, conv: nn.Conv2d, norm: nn.GroupNorm | None) -> torch.Tensor:
    """conv (+ instance norm) of NCHW x as one per-image matmul of its patches -> (N, H, W, C)."""
    n, pad = len(x), conv.padding[0]
    h, w = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    if norm is None:
        patches = F.unfold(x, 3, padding=pad)  # (N, 9 cin, H W)
        return (patches.transpose(1, 2) @ conv.weight.flatten(1).t() + conv.bias).view(n, h, w, -1)
    patches, w_img, shift = instance_norm_affine(x, conv, norm)  # the map models.ConvNet uses too
    # channels-last out: (N, H W, cout) = patches^T w_img^T + shift^T; uncentred patches and a
    # materialised shift: 2.2 ms per 16 images, vs 5.6 ms with centred patches and an expanded beta
    return torch.baddbmm(shift.transpose(1, 2), patches.transpose(1, 2), w_img.transpose(1, 2)).view(n, h, w, -1)


def _winograd(x: torch.Tensor, U: torch.Tensor, pad: int) -> torch.Tensor:
    """3x3 conv (no bias) of (N, H, W, cin) x by Winograd F(4x4, 3x3) -> (N, H', W', cout)."""
    n, h, w, cin = x.shape
    kb, _, ka = _winograd_mats(x.dtype)
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = -(-ho // 4), -(-wo // 4)  # 4x4 output tiles per image
    x = F.pad(x, (0, 0, pad, 4 * tw + 2 - w - pad, pad, 4 * th + 2 - h - pad))
    tiles = x.unfold(1, 6, 4).unfold(2, 6, 4)  # (N, th, tw, cin, 6, 6), a view
    d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, -1)  # (36, N th tw cin)
    v = (kb @ d).view(36, n * th * tw, cin)  # B^T d B
    m = torch.bmm(v, U)  # (36, N th tw, cout)
    y = (ka @ m.view(36, -1)).view(4, 4, n, th, tw, -1)  # A^T m A
    return y.permute(2, 3, 0, 4, 1, 5).reshape(n, 4 * th, 4 * tw, -1)[:, :ho, :wo]


def _instance_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel of (N, H, W, C) x."""
    # two passes (centre, then square): var_mean over H, W is 20x slower on this layout
    x = x - x.mean((1, 2), keepdim=True)
    var = x.square().mean((1, 2), keepdim=True)
    return torch.addcmul(norm.bias, x, norm.weight * torch.rsqrt(var + norm.eps))


def _pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """The pooling module on (N, H, W, C) x, seen as a channels-last NCHW tensor."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
