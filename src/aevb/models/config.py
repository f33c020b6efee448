"""`ModelConfig`: the one frozen config of every registered architecture ("mlp", "conv"), its options declared once.

A run's config.json stores `to_dict()`; `from_dict` takes a section written before a field existed (the field gets
its default), so old run folders still load.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import options as opt
from ..distributions.families import POSTERIORS, PRIORS, check_pair
from ..likelihoods import LIKELIHOODS
from ..nets import ACTIVATIONS
from .flows import DEFAULT_HIDDEN, DEFAULT_STEPS, FLOWS
from .priors import DEFAULT_COMPONENTS, LEARNED_PRIORS
from .registry import DEFAULT_ARCH, MODELS

INITS = ("paper", "torch")
INFERENCE = ("bottom-up", "top-down")  # --stochastic-layers L > 1: the two inference models (hierarchical.py)
DEFAULT_UPPER_HIDDEN = (100, 100)  # the IWAE paper's widths between its two stochastic layers
# log sigma^2 of every Gaussian of a hierarchy is clamped from below here (Tomczak & Welling's HVAE clamps at -6):
# unbounded, a top-down MNIST hierarchy had p(z_1|z_2) at variances near e^-21 before its loss turned NaN
DEFAULT_MIN_LOG_VAR = -6.0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VAE: the data dimension `x_dim`, the image shape (C, H, W) or (H, W) of one datapoint
    where the caller knows it (the conv architecture needs it), and the options declared below (each with its help,
    as `aevb train --help` shows it). init="paper" draws all weights from N(0, 0.01^2) and zeroes the encoder's
    log-variance weights and bias and the decoder's output bias (MLP only); prior=None is the posterior family's
    standard member (N(0, I) for "normal"). The fields after `levels` came later; positional arguments stop
    there."""

    x_dim: int
    latent_dim: int = opt.option(
        20, "Nz, the dimension of z (default 20); with --stochastic-layers L > 1 each layer's, unless --latent-dims")
    hidden: tuple[int, ...] = opt.option(
        (500,), "comma-separated hidden widths of the encoder (decoder mirrors)", parse=opt.widths)
    activation: str = opt.option("tanh", "the hidden layers' nonlinearity", choices=lambda: sorted(ACTIVATIONS))
    likelihood: str = opt.option(
        "bernoulli", "p(x|z): bernoulli (MNIST grey levels), gaussian(-sigmoid) (Frey), categorical, "
        "continuous-bernoulli, discretized-logistic (8-bit images)", choices=lambda: sorted(LIKELIHOODS))
    init: str = opt.option("torch", "paper: N(0, 0.01^2) weights; torch: PyTorch's default", choices=INITS)
    posterior: str = opt.option(
        "normal", "family of q(z|x) (default normal)", choices=lambda: sorted(POSTERIORS),
        apply=lambda v: {"posterior": v, "prior": None})  # a new posterior brings its own default prior
    prior: str | None = opt.option(
        None, "p(z), of matching support (default: the posterior's standard member); mog (a mixture of learned "
        "Gaussians) or vamp (the VampPrior) with the normal posterior",
        choices=lambda: sorted([*PRIORS, *LEARNED_PRIORS]))
    levels: int = opt.option(16, "K grey levels of the categorical likelihood (default 16)")
    arch: str = opt.option(DEFAULT_ARCH, "network: mlp (the paper's) or conv (strided convolutions with residual "
                           "blocks; needs image data)", choices=lambda: sorted(MODELS))
    image_shape: tuple[int, ...] | None = opt.option(None, "(C, H, W) or (H, W) of one datapoint", flag=False)
    mixtures: int = opt.option(1, "K logistics of the discretized-logistic likelihood (default 1; K > 1: a mixture "
                               "over each pixel's channels, PixelCNN++'s)", parse=opt.positive_int)
    conv_widths: tuple[int, ...] = opt.option(
        (32, 64), "--arch conv: channels at each halved resolution, comma-separated (default 32,64)",
        parse=opt.widths)
    conv_blocks: int = opt.option(1, "--arch conv: residual blocks at each resolution (default 1)",
                                  parse=opt.non_negative_int)
    prior_components: int | None = opt.option(
        None, "--prior mog|vamp: K mixture components or pseudo-inputs (default 10 for mog, 500 for vamp)",
        parse=opt.positive_int)
    flow: str | None = opt.option(None, "q(z|x) = the normal posterior followed by --flow-steps invertible maps: "
                                  "planar or iaf (inverse autoregressive)", choices=FLOWS)
    flow_steps: int | None = opt.option(None, "--flow: T maps (default 10 for planar, 4 for iaf)",
                                        parse=opt.positive_int)
    flow_hidden: int | None = opt.option(
        None, f"--flow iaf: width of each step's hidden layers and of the context from the encoder (default "
        f"{DEFAULT_HIDDEN})", parse=opt.positive_int)
    stochastic_layers: int = opt.option(
        1, "L stochastic layers z_1..z_L (default 1: the plain VAE); L > 1: a hierarchical VAE (--arch mlp, normal "
        "posterior; p(z_L) normal, mog or vamp; --flow on the layer q draws first) whose z is the concatenation "
        "[z_1, ..., z_L]", parse=opt.positive_int)
    latent_dims: tuple[int, ...] | None = opt.option(
        None, "--stochastic-layers L > 1: the sizes of z_1..z_L, comma-separated, z_1 (nearest x) first (default: "
        "--latent-dim each); latent_dim becomes their sum", parse=opt.widths)
    upper_hidden: tuple[int, ...] | None = opt.option(
        None, "--stochastic-layers L > 1: comma-separated hidden widths of every network between two stochastic "
        "layers (default 100,100); --hidden is the networks' between x and z_1", parse=opt.widths)
    inference: str | None = opt.option(
        None, "--stochastic-layers L > 1: q(z|x) bottom-up (q(z_1|x) q(z_2|z_1) ..., the IWAE paper's; default) "
        "or top-down (ladder: q(z_L|x) q(z_L-1|z_L, x) ..., precision-weighted; the default with --prior vamp)",
        choices=INFERENCE)
    min_log_var: float | str | None = opt.option(
        None, f"--stochastic-layers L > 1: floor of log sigma^2 of every Gaussian factor of q and p (default "
        f"{DEFAULT_MIN_LOG_VAR:g}; none: unbounded)", parse=opt.log_var_floor)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "conv_widths", tuple(int(w) for w in self.conv_widths))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        if self.posterior in POSTERIORS and self.prior is None:
            object.__setattr__(self, "prior", POSTERIORS[self.posterior].prior)
        if self.prior in LEARNED_PRIORS:
            if self.prior_components is None:
                object.__setattr__(self, "prior_components", DEFAULT_COMPONENTS[self.prior])
        else:
            check_pair(self.posterior, self.prior)
        if self.flow in FLOWS and self.flow_steps is None:
            object.__setattr__(self, "flow_steps", DEFAULT_STEPS[self.flow])
        if self.flow == "iaf" and self.flow_hidden is None:
            object.__setattr__(self, "flow_hidden", DEFAULT_HIDDEN)
        self._layers()
        for ok, message in self._checks() + self._latent_checks() + self._layer_checks():
            if not ok:
                raise ValueError(message)

    def _checks(self) -> list[tuple[bool, str]]:
        shape = self.image_shape
        return [
            (self.x_dim > 0, f"x_dim must be positive, got {self.x_dim}"),
            (self.arch in MODELS, f"unknown architecture {self.arch!r}; choose from {', '.join(sorted(MODELS))}"),
            (self.latent_dim > 0, f"latent_dim must be positive, got {self.latent_dim}"),
            (all(h > 0 for h in self.hidden), f"hidden widths must be positive, got {self.hidden}"),
            (self.activation in ACTIVATIONS,
             f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"),
            (self.likelihood in LIKELIHOODS,
             f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}"),
            (self.init in INITS, f"unknown init {self.init!r}; choose from {', '.join(INITS)}"),
            (self.levels >= 2, f"levels must be >= 2, got {self.levels}"),
            (self.mixtures >= 1, f"mixtures must be >= 1, got {self.mixtures}"),
            (self.mixtures == 1 or self.likelihood == "discretized-logistic",
             f"mixtures > 1 needs --likelihood discretized-logistic, not {self.likelihood}"),
            (shape is None or (len(shape) in (2, 3) and min(shape) > 0),
             f"image_shape must be (H, W) or (C, H, W) of positive sizes, got {shape}"),
            (shape is None or math.prod(shape) == self.x_dim,
             f"image_shape {shape} holds {math.prod(shape or (0,))} values, not x_dim = {self.x_dim}"),
            (self.arch != "conv" or shape is not None,
             "--arch conv needs the data's image shape (image_shape), and these data are not images (a table, or "
             "vectors of no square size): use --arch mlp"),
            (self.arch != "conv" or self.init == "torch", "--init paper is the MLP's; --arch conv takes torch"),
            (all(w > 0 for w in self.conv_widths) and len(self.conv_widths) > 0,
             f"conv widths must be positive, got {self.conv_widths}"),
            (self.conv_blocks >= 0, f"conv_blocks must be >= 0, got {self.conv_blocks}"),
        ]

    def _latent_checks(self) -> list[tuple[bool, str]]:
        """The learned priors' and the flows' options."""
        learned = self.prior in LEARNED_PRIORS
        return [
            (not learned or self.posterior == "normal",
             f"--prior {self.prior} needs --posterior normal, not {self.posterior}"),
            (learned or self.prior_components is None, "--prior-components needs --prior mog or vamp"),
            (self.prior_components is None or self.prior_components >= 1,
             f"prior_components must be >= 1, got {self.prior_components}"),
            (self.flow is None or self.flow in FLOWS, f"unknown flow {self.flow!r}; choose from {', '.join(FLOWS)}"),
            (self.flow is None or self.posterior == "normal",
             f"--flow {self.flow} needs --posterior normal, not {self.posterior}"),
            (self.flow is not None or self.flow_steps is None, "--flow-steps needs --flow planar or iaf"),
            (self.flow == "iaf" or self.flow_hidden is None, "--flow-hidden needs --flow iaf"),
            (self.flow_steps is None or self.flow_steps >= 1, f"flow_steps must be >= 1, got {self.flow_steps}"),
            (self.flow_hidden is None or self.flow_hidden >= 1, f"flow_hidden must be >= 1, got {self.flow_hidden}"),
        ]

    def _layers(self) -> None:
        """L > 1: fill the per-layer sizes (latent_dim each), the widths and the inference model; latent_dim becomes
        the dimension of the concatenated z, so that a config read back from config.json is the same config."""
        if self.latent_dims is not None:
            object.__setattr__(self, "latent_dims", tuple(int(d) for d in self.latent_dims))
        if self.upper_hidden is not None:
            object.__setattr__(self, "upper_hidden", tuple(int(h) for h in self.upper_hidden))
        if self.stochastic_layers <= 1:
            return
        if self.latent_dims is None:
            object.__setattr__(self, "latent_dims", (self.latent_dim,) * self.stochastic_layers)
        if self.upper_hidden is None:
            object.__setattr__(self, "upper_hidden", DEFAULT_UPPER_HIDDEN)
        if self.min_log_var is None:
            object.__setattr__(self, "min_log_var", DEFAULT_MIN_LOG_VAR)
        if self.inference is None:  # the VampPrior needs top-down's q(z_L|x)
            object.__setattr__(self, "inference", INFERENCE[1] if self.prior == "vamp" else INFERENCE[0])
        object.__setattr__(self, "latent_dim", sum(self.latent_dims))

    def _layer_checks(self) -> list[tuple[bool, str]]:
        """The hierarchical VAE's options (--stochastic-layers L > 1)."""
        L, single = self.stochastic_layers, self.stochastic_layers == 1
        what = f"--stochastic-layers {L}"
        return [
            (L >= 1, f"stochastic_layers must be >= 1, got {L}"),
            (not single or self.latent_dims is None, "--latent-dims needs --stochastic-layers 2 or more"),
            (not single or self.upper_hidden is None, "--upper-hidden needs --stochastic-layers 2 or more"),
            (not single or self.inference is None, "--inference needs --stochastic-layers 2 or more"),
            (not single or self.min_log_var is None, "--min-log-var needs --stochastic-layers 2 or more"),
            (self.min_log_var in (None, "none") or isinstance(self.min_log_var, (int, float))
             and math.isfinite(self.min_log_var), f"min_log_var must be a finite number or none, got "
             f"{self.min_log_var!r}"),
            (self.latent_dims is None or len(self.latent_dims) == L,
             f"--latent-dims gives {len(self.latent_dims or ())} sizes for {what}"),
            (self.latent_dims is None or min(self.latent_dims) > 0, f"latent dims must be positive, got "
             f"{self.latent_dims}"),
            (self.upper_hidden is None or all(h > 0 for h in self.upper_hidden),
             f"upper hidden widths must be positive, got {self.upper_hidden}"),
            (self.inference is None or self.inference in INFERENCE,
             f"unknown inference {self.inference!r}; choose from {', '.join(INFERENCE)}"),
            (single or self.arch == "mlp", f"{what} is built on --arch mlp only, not {self.arch}"),
            (single or (self.posterior == "normal" and self.prior in ("normal", *LEARNED_PRIORS)),
             f"{what} needs the normal posterior and a normal, mog or vamp prior (p(z_l|z_l+1) Gaussian), not "
             f"--posterior {self.posterior} --prior {self.prior}"),
            (single or self.prior != "vamp" or self.inference == "top-down",
             f"{what} --prior vamp needs --inference top-down: the VampPrior's components are q(z_L|u_k), and "
             "bottom-up inference has no q(z_L|x) of x alone"),
        ]

    def latent_pair(self) -> str:
        """q(z|x) and p(z) in words, for messages: "q = normal + iaf flow, p = vamp", or the hierarchy."""
        if self.stochastic_layers > 1:
            top = f", p(z_L) {self.prior}" if self.prior in LEARNED_PRIORS else ""
            flow = f", a {self.flow} flow on z_{1 if self.inference == 'bottom-up' else self.stochastic_layers}" \
                if self.flow else ""
            return f"a {self.stochastic_layers}-layer hierarchy{top}{flow}, whose q and p chain the layers,"
        flow = f" + {self.flow} flow" if self.flow else ""
        return f"q = {self.posterior}{flow}, p = {self.prior}"

    @property
    def flow_latent_dim(self) -> int:
        """The size of what --flow transforms: z, or in a hierarchy the layer q draws first (z_1 bottom-up, z_L
        top-down)."""
        if self.stochastic_layers == 1:
            return self.latent_dim
        return self.latent_dims[0] if self.inference == "bottom-up" else self.latent_dims[-1]

    @property
    def chw(self) -> tuple[int, int, int] | None:
        """image_shape as (C, H, W) (one channel for an (H, W) shape), or None when it is not known."""
        if self.image_shape is None:
            return None
        return tuple(self.image_shape) if len(self.image_shape) == 3 else (1, *self.image_shape)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        opt.check_fields(cls, d, "model")
        if d.get("stochastic_layers", 1) > 1 and "min_log_var" not in d:
            d = {**d, "min_log_var": "none"}  # written before the floor existed: trained without one
        return cls(**d)
