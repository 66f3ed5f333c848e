"""D3: distributional dataset distillation (Qin, Deng & Alvarez-Melis, 2024).

Instead of images, each class keeps `lpc` latent Gaussian priors; one decoder, trained from
scratch jointly with them, turns latent draws into images (ddcore.decoder). One iteration takes
TWO optimizer steps, as the authors' run scripts do (FACTS.md, "D3: the authors' own run settings"):
1. matching step: decode every prior's mean image and `samples_per_prior` draws per prior (what a
   student sees in an epoch) and take a step on the matching loss: trajectory matching against
   expert trajectories (`matching='mtt'`, the authors'), or, cheaper and NOT the authors' objective,
   mean-embedding matching on a random network (`'dm'`, i.e. "DM + MMD"); `'none'` skips this step;
2. MMD step: decode the means and `mmd_samples // lpc` draws per prior and take a step on
   `mmd_weight` x the per-class unbiased squared MMD between the draws' penultimate features and
   those of `mmd_real` real images of the class, features from an expert at its final epoch.
Priors and the student step size use SGD (momentum 0.5), the decoder Adam. Decoded images are not
augmented (the authors' choice) unless `dsa_distill=True`. At the end every prior gets one soft
label: the labeller's softmax on its mean image (`labeller_source`: a network trained on the full
training set, or an expert at its last epoch as the authors do); meta["label_mismatch"] is the share
of priors whose soft label's argmax is not their class.

Every decode puts the mean images and the samples in one batch (`decode_with_means`): the decoder's
batch norm uses batch statistics, and the means must get the same ones as the samples they are
trained and evaluated with.

The SyntheticSet holds the decoded mean images (for plots and as a fixed view), the labels, and in
`extras` the priors (`mu`, `logvar`) and the decoder weights (`decoder.*`): the only tensors
`ddcore.storage` counts. Evaluation decodes fresh samples every epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..accel import AccelConfig, autocast, to_memory_format
from ..augment import apply_dsa, dsa_for, sample_dsa
from ..checks import check_choice, check_float, check_int
from ..cluster import voronoi_cells
from ..decoder import Decoder, DecoderConfig, decode_with_means
from ..experts import ExpertConfig, final_network
from ..labels import LabellerConfig, label_mismatch, soft_labels, train_labeller
from ..robust import RobustConfig, Subpopulations, cvar
from ..synthetic import SyntheticSet
from . import register_method
from .common import Run, class_indices, fresh_net, make_set, optimize, sample_real
from .dm import dm_loss, embed_features
from .mtt import cache_root, check_trajectory_memory, experts_for, student_network, trajectory_matching_loss

MATCHINGS = ("mtt", "dm", "none")
LABELLER_SOURCES = ("train", "expert")
BANDWIDTHS = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class D3Config:
    """D3's options. Learning rates, latent size (decoder.latent_dim = 64) and MMD sizes are in the
    ranges of the authors' run scripts as summarised in FACTS.md ("D3: the authors' own run settings").
    The matching step's student steps use MTT's memory options (ddcore/distill/mtt.py's docstring):
    by default they are recomputed in the backward above 1,000 image-steps (IPC 50 on the CIFAR-10
    shape: 2.9 GiB instead of more than 22)."""

    iterations: int = 1000  # the authors: 8,000-10,000
    lpc: int | None = None  # latent priors per class; None: the run's ipc
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # latent_dim 64: the authors' smallest
    samples_per_prior: int | None = None  # draws per prior in the matching step, next to the means; None: 1
    matching: str = "mtt"  # mtt (the authors') | dm ("DM + MMD": cheaper, not the authors') | none (MMD only)
    mmd_weight: float = 1.0  # weight of the MMD step's loss (the paper: 1)
    mmd_samples: int = 24  # decoded images per class in the MMD, mmd_samples // lpc per prior (>= 1);
    # the authors: 12-30 (FACTS.md)
    mmd_real: int = 32  # real images per class the MMD compares them with; the authors: about 30
    batch_real: int = 256  # real images per class for matching='dm' only
    lr_prior: float = 1e-3  # SGD (momentum 0.5) on mu and logvar; the authors: about 3e-4 to 5e-3
    lr_decoder: float = 1e-4  # Adam (weight decay 1e-5) on the decoder; the authors: about 8e-5 to 3e-4
    # (their argparse default 1e-2 is not what their runs use)
    # trajectory matching (matching='mtt'); the paper: 10 student steps, 2 expert epochs ahead
    syn_steps: int = 10
    expert_epochs: int = 2
    max_start_epoch: int = 10
    lr_lr: float = 1e-5  # SGD (momentum 0.5) on the learnable student step size
    lr_init: float = 0.01
    batch_syn: int | None = None  # as MTTConfig's: images per student step; None: all (means and draws)
    recompute_steps: bool | None = None  # as MTTConfig's; None: when syn_steps x batch > RECOMPUTE_ABOVE
    recompute_chunk: int = 128  # as MTTConfig's: images per pass of a recomputed step
    dsa_distill: bool = False  # DSA on decoded and real images during distillation; the authors: none
    dsa: bool | None = None  # older name of dsa_distill, still accepted (bench/run.py passes it); wins if set
    experts: ExpertConfig = field(default_factory=ExpertConfig)  # also the matching/feature network
    experts_dir: str | None = None  # None: the checkpoint's folder, else trained in memory
    soft_labels: bool = True  # False: each prior's class (labels.with_hard_labels does it after the fact)
    labeller_source: str = "train"  # train: a ConvNet trained on all training images (`labeller`);
    # expert: the first expert at its last epoch (the authors'; no extra training)
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
        check_int("mmd_samples", self.mmd_samples, low=2)  # the unbiased MMD needs 2 per class
        check_int("mmd_real", self.mmd_real, low=2)
        check_int("batch_real", self.batch_real, low=2)
        for name in ("lr_prior", "lr_decoder", "lr_init"):
            check_float(name, getattr(self, name), low=0.0, low_open=True)
        check_float("lr_lr", self.lr_lr, low=0.0)
        self._check_trajectory()
        _check_bool("dsa_distill", self.dsa_distill)
        if self.dsa is not None:
            _check_bool("dsa", self.dsa)
        _check_bool("soft_labels", self.soft_labels)
        check_choice("labeller_source", self.labeller_source, LABELLER_SOURCES)
        if self.robust is not None and self.mmd_weight == 0:
            raise ValueError("robust=... acts on the MMD term; it needs mmd_weight > 0")

    def _check_trajectory(self):
        check_int("syn_steps", self.syn_steps, low=1)
        check_int("expert_epochs", self.expert_epochs, low=1)
        check_int("max_start_epoch", self.max_start_epoch, low=0)
        check_trajectory_memory(self)
        if self.matching == "mtt" and self.max_start_epoch + self.expert_epochs > self.experts.epochs:
            raise ValueError(
                f"max_start_epoch + expert_epochs = {self.max_start_epoch + self.expert_epochs} "
                f"must be <= experts.epochs = {self.experts.epochs}"
            )

    @property
    def augment(self) -> bool:
        """Whether distillation applies DSA: `dsa` when given (the older name), else `dsa_distill`."""
        return self.dsa_distill if self.dsa is None else self.dsa

    @property
    def expert_labeller(self) -> bool:
        return self.soft_labels and self.labeller_source == "expert"

    @property
    def needs_experts(self) -> bool:
        return self.matching == "mtt" or self.mmd_weight > 0 or self.expert_labeller


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def mmd_draws(lpc: int, mmd_samples: int) -> int:
    """Draws per prior in the MMD step: mmd_samples // lpc, at least 1, and at least 2 when lpc = 1
    (the unbiased MMD needs 2 decoded images per class)."""
    check_int("lpc", lpc, low=1)
    check_int("mmd_samples", mmd_samples, low=1)
    return max(mmd_samples // lpc, 2 if lpc == 1 else 1)


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
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def mmd_loss(
    feature_net, images_real, groups_real, images_syn, groups_syn, num_classes, draw, accel: AccelConfig | None = None
) -> torch.Tensor:
    """Sum over classes of the unbiased MMD^2 between real and decoded features (one DSA draw per class).

    Features come from dm.embed_features (fastpath.embed's faster CPU kernels; accel's autocast),
    always as fp32: the MMD's kernels and distances are computed in fp32.
    """
    with torch.no_grad():
        feat_real = embed_features(feature_net, apply_dsa(images_real, draw, groups_real), accel)
    feat_syn = embed_features(feature_net, apply_dsa(images_syn, draw, groups_syn), accel)
    groups_real, groups_syn = groups_real.to(feat_real.device), groups_syn.to(feat_syn.device)
    return torch.stack(
        [mmd2_unbiased(feat_syn[groups_syn == c], feat_real[groups_real == c]) for c in range(num_classes)]
    ).sum()


def priors_per_class(run: Run, cfg: D3Config) -> tuple[int, int, int]:
    """(lpc, draws per prior in the matching step, draws per prior in the MMD step)."""
    lpc = cfg.lpc if cfg.lpc is not None else run.ipc
    draws = cfg.samples_per_prior if cfg.samples_per_prior is not None else 1
    return lpc, draws, mmd_draws(lpc, cfg.mmd_samples)


def robust_mmd_loss(
    feature_net,
    images_real,
    groups_real,
    images_syn,
    groups_syn,
    num_classes,
    draw,
    robust: RobustConfig,
    cluster_fn,
    accel: AccelConfig | None = None,
) -> torch.Tensor:
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
        per_cluster = [
            mmd2_unbiased(syn_c, feat_real[ids == j])
            for j in ids[groups_real == c].unique().tolist()
            if int((ids == j).sum()) >= 2
        ]
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
        decoder = to_memory_format(
            Decoder(cfg.decoder, run.dataset.channels, run.dataset.im_size).to(run.device), run.accel
        )
    prior_class = torch.arange(run.num_classes, device=run.device).repeat_interleave(lpc)
    return mu, logvar, decoder, prior_class


@dataclass
class _Learned:
    """What a D3 run learns (priors, decoder, student step size) and the optimizers that move it."""

    mu: torch.Tensor
    logvar: torch.Tensor
    decoder: Decoder
    prior_class: torch.Tensor  # (P,) class of each prior
    syn_lr: torch.Tensor
    optimizers: dict[str, torch.optim.Optimizer]

    @classmethod
    def create(cls, run: Run, cfg: D3Config, lpc: int, gen: torch.Generator) -> _Learned:
        mu, logvar, decoder, prior_class = init_generator(run, cfg, lpc, gen)
        mu.requires_grad_(True)
        logvar.requires_grad_(True)
        syn_lr = torch.tensor(cfg.lr_init, device=run.device).requires_grad_(True)
        optimizers = {
            "prior": torch.optim.SGD([mu, logvar], lr=cfg.lr_prior, momentum=0.5),
            "decoder": torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder, weight_decay=1e-5),
            "lr": torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=0.5),
        }
        return cls(mu, logvar, decoder, prior_class, syn_lr, optimizers)

    def decode(self, run: Run, per_prior: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, samples) decoded in one batch, as fp32 (the losses take fp32; a no-op without autocast)."""
        with autocast(run.device, run.accel):
            means, samples = decode_with_means(
                self.decoder, self.mu, self.logvar, per_prior, run.dataset.normalize, gen
            )
        return means.float(), samples.float()

    def step(self, loss: torch.Tensor, names: tuple[str, ...]) -> float:
        """One optimizer step of the named optimizers on `loss`."""
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            self.optimizers[name].step()
        return loss.item()

    def params(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint restores in place."""
        return {
            "mu": self.mu,
            "logvar": self.logvar,
            "syn_lr": self.syn_lr,
            **{f"decoder.{k}": v for k, v in self.decoder.state_dict(keep_vars=True).items()},
        }


@dataclass
class _Context:
    """What a D3 run reads but does not learn."""

    run: Run
    cfg: D3Config
    gen: torch.Generator
    draws: int  # per prior in the matching step
    mmd_draws: int  # per prior in the MMD step
    trajectories: list | None
    feature_net: torch.nn.Module | None  # an expert at its last epoch: MMD features (and the 'expert' labeller)
    per_class: list
    dsa: object
    subpops: Subpopulations | None

    @classmethod
    def create(cls, run: Run, cfg: D3Config, gen: torch.Generator) -> _Context:
        _, draws, mmd = priors_per_class(run, cfg)
        trajectories = experts_for(run, cfg.experts, cfg.experts_dir) if cfg.needs_experts else None
        feature_net = None
        if cfg.mmd_weight > 0 or cfg.expert_labeller:
            feature_net = to_memory_format(
                final_network(trajectories[0], run.dataset, cfg.experts.model, run.device), run.accel
            )
        return cls(
            run,
            cfg,
            gen,
            draws,
            mmd,
            trajectories,
            feature_net,
            class_indices(run),
            dsa_for(run.dataset.name) if cfg.augment else None,
            Subpopulations(cfg.robust, run.seed) if cfg.robust else None,
        )

    def dsa_draw(self):
        """One DSA draw per class (real and decoded images of a class share it), or None."""
        if self.dsa is None:
            return None
        return sample_dsa(self.dsa, self.run.num_classes, self.run.dataset.im_size, self.gen)


def matching_step(ctx: _Context, st: _Learned, student) -> float:
    """Step 1: the matching loss on what a student sees in an epoch (means and draws, one batch)."""
    run, cfg = ctx.run, ctx.cfg
    means, samples = st.decode(run, ctx.draws, ctx.gen)
    images = torch.cat([means, samples])
    labels = torch.cat([st.prior_class, st.prior_class.repeat_interleave(ctx.draws)])
    if cfg.matching == "mtt":
        loss = trajectory_matching_loss(
            student, ctx.trajectories, images, labels, st.syn_lr, cfg, ctx.dsa, ctx.gen, run.accel
        )
        value = st.step(loss, ("prior", "decoder", "lr"))
        with torch.no_grad():
            st.syn_lr.clamp_(min=1e-6)  # a negative step size would ascend the loss
        return value
    images_real, groups_real = sample_real(run, ctx.per_class, cfg.batch_real, ctx.gen)
    net = fresh_net(run, cfg.experts.model, ctx.gen).requires_grad_(False)
    loss = dm_loss(net, images_real, groups_real, images, labels, run.num_classes, ctx.dsa_draw(), run.accel)
    return st.step(loss, ("prior", "decoder"))


def mmd_step(ctx: _Context, st: _Learned, it: int) -> float:
    """Step 2: mmd_weight x the MMD between mmd_draws draws per prior and mmd_real real images per class.

    The means are decoded with the draws (batch norm statistics, see the module's docstring) but are
    not compared: the MMD is about each class's distribution of samples.
    """
    run, cfg = ctx.run, ctx.cfg
    _, samples = st.decode(run, ctx.mmd_draws, ctx.gen)
    groups_syn = st.prior_class.repeat_interleave(ctx.mmd_draws)
    images_real, groups_real = sample_real(run, ctx.per_class, cfg.mmd_real, ctx.gen)
    args = (ctx.feature_net, images_real, groups_real, samples, groups_syn, run.num_classes, ctx.dsa_draw())
    if cfg.robust is None:
        loss = mmd_loss(*args, run.accel)
    else:
        loss = robust_mmd_loss(*args, cfg.robust, _cluster_fn(ctx, it, images_real, groups_real, groups_syn), run.accel)
    return st.step(cfg.mmd_weight * loss, ("prior", "decoder"))


def _cluster_fn(ctx: _Context, it: int, images_real, groups_real, groups_syn):
    """Subpopulation ids of the real images: the nearest decoded image of the class, or K-means."""
    groups_real = groups_real.to(ctx.run.device)

    def ids(feat_real, feat_syn):
        if ctx.cfg.robust.clustering == "synthetic":
            return voronoi_cells(feat_real, groups_real, feat_syn, groups_syn)
        return ctx.subpops(it, ctx.feature_net, images_real, groups_real)

    return ids


@register_method("d3", D3Config)
def distributional_distillation(run: Run, cfg: D3Config) -> SyntheticSet:
    gen = torch.Generator().manual_seed(run.seed)
    lpc = priors_per_class(run, cfg)[0]
    ctx = _Context.create(run, cfg, gen)
    st = _Learned.create(run, cfg, lpc, gen)
    student = student_network(run, cfg.experts) if cfg.matching == "mtt" else None

    def step(it: int) -> float:  # two optimizer steps, as the authors' scripts take
        loss = matching_step(ctx, st, student) if cfg.matching != "none" else 0.0
        return loss + (mmd_step(ctx, st, it) if cfg.mmd_weight > 0 else 0.0)

    losses = optimize(run, "d3", cfg, cfg.iterations, step, st.params(), st.optimizers, gen)
    return _finish(ctx, st, losses)


def label_priors(ctx: _Context, mean_images: torch.Tensor, prior_class: torch.Tensor) -> torch.Tensor:
    """One label per prior: the labeller's softmax on its mean image, or its class (soft_labels=False)."""
    run, cfg = ctx.run, ctx.cfg
    if not cfg.soft_labels:
        return prior_class
    if cfg.labeller_source == "expert":
        labeller = ctx.feature_net
    else:
        labeller = train_labeller(
            run.dataset, cfg.labeller, seed=run.seed, device=run.device, root=cache_root(run, cfg.experts_dir)
        )
    return soft_labels(labeller, mean_images)


def _finish(ctx: _Context, st: _Learned, losses) -> SyntheticSet:
    run, cfg = ctx.run, ctx.cfg
    with torch.no_grad():  # the means as a student's epoch decodes them: with one draw per prior (seeded)
        mean_images, _ = decode_with_means(
            st.decoder, st.mu, st.logvar, 1, run.dataset.normalize, torch.Generator().manual_seed(run.seed)
        )
    labels = label_priors(ctx, mean_images, st.prior_class)
    # contiguous: channels_last decoder weights would be refused by safetensors (a no-op otherwise)
    extras = {
        "mu": st.mu.detach().cpu(),
        "logvar": st.logvar.detach().cpu(),
        **{f"decoder.{k}": v.detach().cpu().contiguous() for k, v in st.decoder.state_dict().items()},
    }
    syn = make_set(run, "d3", cfg, mean_images, labels, losses, extras)
    syn.meta["lpc"] = len(st.prior_class) // run.num_classes
    syn.meta["generative"] = "d3"
    syn.meta["decoder"] = asdict(cfg.decoder)
    syn.meta["label_mismatch"] = label_mismatch(labels, st.prior_class)
    syn.meta["syn_lr"] = float(st.syn_lr.detach())
    return syn
