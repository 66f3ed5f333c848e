"""D3: distributional dataset distillation (Qin, Deng & Alvarez-Melis, 2024).

Instead of images, each class keeps `lpc` latent Gaussian priors; one decoder, trained from
scratch jointly with them, turns latent draws into images (ddcore.decoder). One iteration:
1. draw `samples_per_prior` latents from every prior and decode them (one batch, all classes);
2. matching loss on the decoded images: trajectory matching against expert trajectories
   (`matching='mtt'`, the paper's choice), mean-embedding matching on a random network
   (`'dm'`, cheaper: no unrolled steps), or nothing (`'none'`: MMD only);
3. plus `mmd_weight` x the per-class unbiased squared MMD between penultimate features of the
   decoded images and of real images, features from an expert at its final epoch;
4. priors and the student step size step with SGD (momentum 0.5), the decoder with Adam.
At the end every prior gets one soft label: the labeller's softmax on its mean image.

The SyntheticSet holds the decoded mean images (for plots and as a fixed view), the soft labels,
and in `extras` the priors (`mu`, `logvar`) and the decoder weights (`decoder.*`): the only
tensors `ddcore.storage` counts. Evaluation decodes fresh samples every epoch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..accel import AccelConfig, autocast, to_memory_format
from ..augment import apply_dsa, dsa_for, sample_dsa
from ..checks import check_choice, check_float, check_int
from ..decoder import Decoder, DecoderConfig, decode, sample_latents
from ..experts import ExpertConfig, final_network
from ..cluster import voronoi_cells
from ..robust import RobustConfig, Subpopulations, cvar
from ..labels import LabellerConfig, soft_labels, train_labeller
from ..synthetic import SyntheticSet
from . import register_method
from .common import Run, class_indices, fresh_net, make_set, optimize, sample_real
from .dm import class_means, dm_loss, embed_features
from .mtt import cache_root, experts_for, student_network, trajectory_matching_loss

MATCHINGS = ("mtt", "dm", "none")
BANDWIDTHS = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class D3Config:
    iterations: int = 1000
    lpc: int | None = None         # latent priors per class; None: the run's ipc
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    samples_per_prior: int | None = None  # decoded draws per prior per iteration; None: 1, or 2 when lpc=1 (MMD needs 2)
    matching: str = "mtt"          # mtt | dm | none (MMD only)
    mmd_weight: float = 1.0        # weight of the MMD term (the paper: 1)
    batch_real: int = 256          # real images per class for the MMD (and DM) term
    lr_prior: float = 0.1          # SGD (momentum 0.5) on mu and logvar
    lr_decoder: float = 1e-2       # Adam on the decoder, weight decay 1e-5
    # trajectory matching (matching='mtt'); the paper: 10 student steps, 2 expert epochs ahead
    syn_steps: int = 10
    expert_epochs: int = 2
    max_start_epoch: int = 10
    lr_lr: float = 1e-5
    lr_init: float = 0.01
    batch_syn: int | None = None
    dsa: bool = True
    experts: ExpertConfig = field(default_factory=ExpertConfig)   # also the matching/feature network
    experts_dir: str | None = None  # None: the checkpoint's folder, else trained in memory
    soft_labels: bool = True
    labeller: LabellerConfig = field(default_factory=LabellerConfig)
    robust: RobustConfig | None = None  # our extension: the MMD term as the CVaR over each class's subpopulations

    def __post_init__(self):
        check_int("iterations", self.iterations, low=0)
        if self.lpc is not None:
            check_int("lpc", self.lpc, low=1)
        if self.samples_per_prior is not None:
            check_int("samples_per_prior", self.samples_per_prior, low=1)
        check_choice("matching", self.matching, MATCHINGS)
        check_float("mmd_weight", self.mmd_weight, low=0.0)
        if self.matching == "none" and self.mmd_weight == 0:
            raise ValueError("matching='none' needs mmd_weight > 0: there would be nothing to optimise")
        check_int("batch_real", self.batch_real, low=2)
        check_float("lr_prior", self.lr_prior, low=0.0, low_open=True)
        check_float("lr_decoder", self.lr_decoder, low=0.0, low_open=True)
        check_int("syn_steps", self.syn_steps, low=1)
        if self.matching == "mtt" and self.max_start_epoch + self.expert_epochs > self.experts.epochs:
            raise ValueError(f"max_start_epoch + expert_epochs = {self.max_start_epoch + self.expert_epochs} "
                             f"must be <= experts.epochs = {self.experts.epochs}")

        if self.robust is not None and self.mmd_weight == 0:
            raise ValueError("robust=... acts on the MMD term; it needs mmd_weight > 0")

    @property
    def needs_experts(self) -> bool:
        return self.matching == "mtt" or self.mmd_weight > 0


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidths=BANDWIDTHS) -> torch.Tensor:
    """Unbiased squared MMD between samples x (n, D) and y (m, D), n, m >= 2.

    Kernel: sum over b of exp(-||u - v||^2 / (b * s)), where s is the mean squared distance
    within the joint batch (detached). The scale s makes the bandwidths 1..16 mean the same for
    features of any size; on raw 2,048-dimensional features fixed bandwidths would give kernels of 0.
    """
    n, m = x.shape[0], y.shape[0]
    joint = torch.cat([x, y])
    d2 = torch.cdist(joint, joint).pow(2)
    scale = d2.detach().sum() / (joint.shape[0] * (joint.shape[0] - 1))
    k = sum(torch.exp(-d2 / (b * scale.clamp(min=1e-12))) for b in bandwidths)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def mmd_loss(feature_net, images_real, groups_real, images_syn, groups_syn, num_classes, draw,
             accel: AccelConfig | None = None) -> torch.Tensor:
    """Sum over classes of the unbiased MMD^2 between real and decoded features (one DSA draw per class).

    Features come from dm.embed_features (fastpath.embed's faster CPU kernels; accel's autocast),
    always as fp32: the MMD's kernels and distances are computed in fp32.
    """
    with torch.no_grad():
        feat_real = embed_features(feature_net, apply_dsa(images_real, draw, groups_real), accel)
    feat_syn = embed_features(feature_net, apply_dsa(images_syn, draw, groups_syn), accel)
    groups_real, groups_syn = groups_real.to(feat_real.device), groups_syn.to(feat_syn.device)
    return torch.stack([mmd2_unbiased(feat_syn[groups_syn == c], feat_real[groups_real == c])
                        for c in range(num_classes)]).sum()


def priors_per_class(run: Run, cfg: D3Config) -> tuple[int, int]:
    """(lpc, samples_per_prior): cfg's, or the run's ipc and enough draws for the MMD."""
    lpc = cfg.lpc if cfg.lpc is not None else run.ipc
    draws = cfg.samples_per_prior if cfg.samples_per_prior is not None else (2 if lpc == 1 else 1)
    if cfg.mmd_weight > 0 and lpc * draws < 2:
        raise ValueError("the unbiased MMD needs lpc * samples_per_prior >= 2 decoded images per class, "
                         f"got lpc={lpc}, samples_per_prior={draws}")
    return lpc, draws


def robust_mmd_loss(feature_net, images_real, groups_real, images_syn, groups_syn, num_classes, draw,
                    robust: RobustConfig, cluster_fn, accel: AccelConfig | None = None) -> torch.Tensor:
    """Sum over classes of the CVaR (level robust.alpha), over the class's subpopulations, of the
    MMD^2 between the class's decoded features and that subpopulation's real features.

    cluster_fn(features_real, features_syn) gives each real image a subpopulation id, unique across
    classes; subpopulations of fewer than 2 images are skipped (the unbiased MMD needs 2).
    With one subpopulation per class and alpha = 1 this is mmd_loss.
    """
    with torch.no_grad():
        feat_real = embed_features(feature_net, apply_dsa(images_real, draw, groups_real), accel)
    feat_syn = embed_features(feature_net, apply_dsa(images_syn, draw, groups_syn), accel)
    groups_real, groups_syn = groups_real.to(feat_real.device), groups_syn.to(feat_syn.device)
    ids = cluster_fn(feat_real, feat_syn.detach()).to(feat_real.device)
    losses = []
    for c in range(num_classes):
        syn_c = feat_syn[groups_syn == c]
        per_cluster = [mmd2_unbiased(syn_c, feat_real[ids == j]) for j in ids[groups_real == c].unique().tolist()
                       if int((ids == j).sum()) >= 2]
        losses.append(cvar(torch.stack(per_cluster), robust.alpha))
    return torch.stack(losses).sum()


def init_generator(run: Run, cfg: D3Config, lpc: int, generator: torch.Generator):
    """Priors (mu ~ N(0, 1), logvar = 0) and a freshly initialised decoder, seeded from `generator`."""
    num_priors = run.num_classes * lpc
    mu = torch.randn(num_priors, cfg.decoder.latent_dim, generator=generator).to(run.device)
    logvar = torch.zeros(num_priors, cfg.decoder.latent_dim, device=run.device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = to_memory_format(Decoder(cfg.decoder, run.dataset.channels, run.dataset.im_size).to(run.device),
                                   run.accel)
    prior_class = torch.arange(run.num_classes, device=run.device).repeat_interleave(lpc)
    return mu, logvar, decoder, prior_class


@register_method("d3", D3Config)
def distributional_distillation(run: Run, cfg: D3Config) -> SyntheticSet:
    gen = torch.Generator().manual_seed(run.seed)
    lpc, draws = priors_per_class(run, cfg)
    trajectories = experts_for(run, cfg.experts, cfg.experts_dir) if cfg.needs_experts else None
    feature_net = (to_memory_format(final_network(trajectories[0], run.dataset, cfg.experts.model, run.device),
                                    run.accel) if cfg.mmd_weight > 0 else None)
    mu, logvar, decoder, prior_class = init_generator(run, cfg, lpc, gen)
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    syn_lr = torch.tensor(cfg.lr_init, device=run.device).requires_grad_(True)
    opt_prior = torch.optim.SGD([{"params": [mu, logvar]}, {"params": [syn_lr], "lr": cfg.lr_lr}],
                                lr=cfg.lr_prior, momentum=0.5)
    opt_dec = torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, weight_decay=1e-5)
    student = student_network(run, cfg.experts) if cfg.matching == "mtt" else None
    per_class, dsa = class_indices(run), dsa_for(run.dataset.name) if cfg.dsa else None
    labels_draw = prior_class.repeat_interleave(draws)
    subpops = Subpopulations(cfg.robust, run.seed) if cfg.robust else None

    def step(it: int) -> float:
        with autocast(run.device, run.accel):
            images_syn = decode(decoder, sample_latents(mu, logvar, draws, gen), run.dataset.normalize)
        images_syn = images_syn.float()  # the losses below take fp32 images; a no-op without autocast
        loss = torch.zeros((), device=run.device)
        if cfg.matching == "mtt":
            loss = loss + trajectory_matching_loss(student, trajectories, images_syn, labels_draw, syn_lr, cfg,
                                                   dsa, gen, run.accel)
        if cfg.matching == "dm" or cfg.mmd_weight > 0:
            images_real, groups_real = sample_real(run, per_class, cfg.batch_real, gen)
            draw = sample_dsa(dsa, run.num_classes, run.dataset.im_size, gen) if dsa else None
            if cfg.matching == "dm":
                net = fresh_net(run, cfg.experts.model, gen).requires_grad_(False)
                loss = loss + dm_loss(net, images_real, groups_real, images_syn, labels_draw, run.num_classes, draw,
                                      run.accel)
            if cfg.mmd_weight > 0 and cfg.robust is None:
                loss = loss + cfg.mmd_weight * mmd_loss(feature_net, images_real, groups_real, images_syn,
                                                        labels_draw, run.num_classes, draw, run.accel)
            elif cfg.mmd_weight > 0:
                def cluster_fn(feat_real, feat_syn):  # the nearest decoded image of the class, or K-means
                    if cfg.robust.clustering == "synthetic":
                        return voronoi_cells(feat_real, groups_real.to(run.device), feat_syn, labels_draw)
                    return subpops(it, feature_net, images_real, groups_real.to(run.device))
                loss = loss + cfg.mmd_weight * robust_mmd_loss(feature_net, images_real, groups_real, images_syn,
                                                               labels_draw, run.num_classes, draw, cfg.robust,
                                                               cluster_fn, run.accel)
        opt_prior.zero_grad(set_to_none=True)
        opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        opt_prior.step()
        opt_dec.step()
        with torch.no_grad():
            syn_lr.clamp_(min=1e-6)
        return loss.item()

    params = {"mu": mu, "logvar": logvar, "syn_lr": syn_lr,
              **{f"decoder.{k}": v for k, v in decoder.state_dict(keep_vars=True).items()}}
    losses = optimize(run, "d3", cfg, cfg.iterations, step, params, {"prior": opt_prior, "decoder": opt_dec}, gen)
    return _finish(run, cfg, decoder, mu, logvar, prior_class, losses)


def _finish(run, cfg, decoder, mu, logvar, prior_class, losses) -> SyntheticSet:
    with torch.no_grad():
        mean_images = decode(decoder, mu, run.dataset.normalize)
    if cfg.soft_labels:
        root = cache_root(run, cfg.experts_dir)
        labeller = train_labeller(run.dataset, cfg.labeller, seed=run.seed, device=run.device, root=root)
        labels = soft_labels(labeller, mean_images)
    else:
        labels = prior_class
    # contiguous: channels_last decoder weights would be refused by safetensors (a no-op otherwise)
    extras = {"mu": mu.detach().cpu(), "logvar": logvar.detach().cpu(),
              **{f"decoder.{k}": v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}}
    syn = make_set(run, "d3", cfg, mean_images, labels, losses, extras)
    syn.meta["lpc"] = len(prior_class) // run.num_classes
    syn.meta["generative"] = "d3"
    syn.meta["decoder"] = asdict(cfg.decoder)
    return syn


def load_decoder(syn: SyntheticSet, channels: int, im_size: tuple[int, int]) -> Decoder:
    """Rebuild the decoder of a D3 set from its stored weights."""
    decoder = Decoder(DecoderConfig(**syn.meta["decoder"]), channels, im_size)
    state = {k[len("decoder."):]: v for k, v in syn.extras.items() if k.startswith("decoder.")}
    decoder.load_state_dict(state)
    return decoder
