"""D3's generator: per-class latent Gaussian priors and one shared decoder.

A prior is a diagonal Gaussian (mu, logvar) in a `latent_dim`-dimensional space. Images are
x = decoder(mu + exp(logvar / 2) * eps); the prior's "mean image" is decoder(mu). The decoder is
a small transposed-convolution network (linear -> feature map at 1/4 size -> two x2
up-samplings with batch norm and leaky ReLU -> 3x3 conv -> tanh), trained from scratch.

Its tanh output is read as [0, 1] pixels ((t + 1) / 2) and normalised like the data set, so a
decoded image goes wherever a real one goes. Batch norm always uses the statistics of the batch
being decoded (no running averages: nothing to keep beyond the weights, and the authors' decoder
runs in train mode). So every decode goes through `decode_with_means`: the mean images and the
samples in ONE batch, in distillation, in evaluation and for the labeller alike. Decoded alone,
the means would be normalised with other statistics, hence be other images than the ones the
decoder was trained to produce, and they are half of every student epoch and what the labeller
labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .checks import check_int


@dataclass
class DecoderConfig:
    latent_dim: int = 64  # z: size of each prior's mean (and of its log-variance); 64 is the
    # authors' smallest (their run scripts, as summarised in FACTS.md)
    width: int = 32  # channels of the decoder's feature maps

    def __post_init__(self):
        check_int("latent_dim", self.latent_dim, low=1)
        check_int("width", self.width, low=1)


class Decoder(nn.Module):
    """z (N, latent_dim) -> tanh images (N, channels, H, W)."""

    def __init__(self, cfg: DecoderConfig, channels: int, im_size: tuple[int, int]):
        super().__init__()
        self.im_size = tuple(im_size)
        h0, w0 = -(-im_size[0] // 4), -(-im_size[1] // 4)  # ceil: two x2 up-samplings reach >= im_size
        self.start = (cfg.width, h0, w0)
        self.fc = nn.Linear(cfg.latent_dim, cfg.width * h0 * w0)

        def up(ch):  # kernel 4, stride 2, padding 1 doubles the size exactly
            return [
                nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1),
                nn.BatchNorm2d(ch, track_running_stats=False),
                nn.LeakyReLU(0.2),
            ]

        self.body = nn.Sequential(
            nn.BatchNorm2d(cfg.width, track_running_stats=False),
            nn.LeakyReLU(0.2),
            *up(cfg.width),
            *up(cfg.width),
            nn.Conv2d(cfg.width, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.fc(z).view(-1, *self.start))
        h, w = self.im_size
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2  # centre crop when not a multiple of 4
        return x[..., top : top + h, left : left + w]


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sample_latents(mu: torch.Tensor, logvar: torch.Tensor, per_prior: int, generator: torch.Generator) -> torch.Tensor:
    """per_prior draws from each prior: (P, z) -> (P * per_prior, z), grouped by prior."""
    mu_rep = mu.repeat_interleave(per_prior, 0)
    std_rep = torch.exp(logvar / 2).repeat_interleave(per_prior, 0)
    eps = torch.randn(mu_rep.shape, generator=generator).to(mu.device)
    return mu_rep + std_rep * eps


def decode(decoder: Decoder, z: torch.Tensor, normalize) -> torch.Tensor:
    """Decoder output as images normalised like the data set (`normalize` maps [0, 1] pixels)."""
    return normalize((decoder(z) + 1) / 2)


def decode_with_means(
    decoder: Decoder, mu: torch.Tensor, logvar: torch.Tensor, per_prior: int, normalize, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prior's mean image and `per_prior` draws from it, decoded in one batch.

    Returns means (P, C, H, W) and samples (P * per_prior, C, H, W), grouped by prior. One batch,
    so batch norm normalises the means with the same statistics as the samples (see the module's
    docstring); differentiable, so distillation uses it too.
    """
    check_int("per_prior", per_prior, low=0)
    z = torch.cat([mu, sample_latents(mu, logvar, per_prior, generator)])
    images = decode(decoder, z, normalize)
    return images[: len(mu)], images[len(mu) :]


@torch.no_grad()
def epoch_images(
    decoder: Decoder,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    labels: torch.Tensor,
    normalize,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a student sees in one epoch: every prior's mean image and one fresh sample per prior.

    Returns (2P, C, H, W) images and their labels (each prior's label, hard or soft, twice).
    Means and samples are decoded in one batch (decode_with_means), as in distillation.
    """
    means, samples = decode_with_means(decoder, mu, logvar, 1, normalize, generator)
    return torch.cat([means, samples]), torch.cat([labels, labels])


def load_decoder(syn, channels: int, im_size: tuple[int, int]) -> Decoder:
    """Rebuild the decoder of a D3 set (a SyntheticSet) from the weights it stores in its extras.

    Here, beside the decoder, so that evaluation can draw a generative set's epoch images without
    importing a distillation method.
    """
    decoder = Decoder(DecoderConfig(**syn.meta["decoder"]), channels, im_size)
    state = {k[len("decoder.") :]: v for k, v in syn.extras.items() if k.startswith("decoder.")}
    decoder.load_state_dict(state)
    return decoder
