"""A hand-derived training step for the plain MLP VAE: forward and backward of estimator B without autograd.

`FusedStep` computes the same loss, ELBO and parameter gradients as `Objective` followed by `loss.backward()` for
the model it covers: the "mlp" architecture (any number of hidden layers, tanh, relu or elu), q(z|x) normal with
the paper's [mu, log sigma^2] outputs, the N(0, I) prior, the Bernoulli likelihood (grey levels or binarized),
estimator sgvb_b with the standard gradient, any number of samples L and a KL weight (beta, warm-up), in one process
with one shard. Every matrix product is an `addmm`/`mm`/`addmv` writing into a buffer allocated once per batch size
(bias adds and the 1/(M L) scale ride along as the products' beta and alpha), the elementwise work is done in
place, the input gradient of the first layer is never formed, and the gradients land in each parameter's `.grad`,
so the optimizers, the weight average, the gradient-norm guard and checkpoints work unchanged. The noise eps is the
same `normal_()` draw of shape (L, M, Nz) from the same global generator as `Normal.rsample`, so with the same seed
both paths see the same z.

With `precision="bf16"` the backward's matrix products and the forward's output-layer product (the logits) take
bfloat16 operands, accumulate in float32 and round their results to bfloat16; on CPUs with native bf16
(AVX512-BF16, AMX) such a product runs about twice as fast. The other forward products stay float32 (with them in
bfloat16 too, one 1e6-datapoint run of the paper's MNIST model ended 0.7-0.95 nats below its float32 twin), and so
do the elementwise work, the parameters, the optimizer and every evaluation.

`resolve_step` turns the `step` option ("auto", "fused", "autograd") into the path a run takes.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ..estimators import resolve_estimator
from ..likelihoods import product_group
from ..nets import INPLACE, inplace_activation, mlp_stack
from .schedule import kl_weight

STEPS = ("auto", "fused", "autograd")
PRECISIONS = ("float32", "bf16")
ACTIVATIONS = INPLACE  # the hidden activations it differentiates by hand


def _stack(seq, activation: str) -> list[nn.Linear] | None:
    """The Linear layers of an `nets.mlp` stack whose activation is `activation`; None otherwise."""
    found = mlp_stack(seq)
    return found[0] if found is not None and found[1] in ("", activation) else None


def uncovered(model, cfg, world_size: int = 1) -> str | None:
    """What keeps this model and training config off the fused step, in a few words; None when it is covered."""
    from ..models.mlp import VAE

    c = getattr(model, "config", None)
    if type(model) is not VAE or c is None:
        return f"the model {type(model).__name__} (only the plain mlp VAE)"
    checks = [
        (c.activation in ACTIVATIONS, f"activation {c.activation} (only {', '.join(ACTIVATIONS)})"),
        (c.posterior == "normal", f"posterior {c.posterior} (only normal)"),
        (c.prior == "normal", f"prior {c.prior} (only normal)"),
        (model.flow is None and model.learned_prior is None, "a flow posterior or a learned prior"),
        (c.likelihood == "bernoulli", f"likelihood {c.likelihood} (only bernoulli)"),
        (getattr(c, "stochastic_layers", 1) == 1, "a hierarchical model"),
    ]
    for ok, why in checks:
        if not ok:
            return why
    enc, dec = _stack(model.encoder, c.activation), _stack(model.decoder, c.activation)
    head = getattr(model.dec_head, "out", None)
    if enc is None or dec is None or type(model.enc_head) is not nn.Linear or type(head) is not nn.Linear \
            or model.dec_head.dist.__name__ != "GreyLevelBernoulli":
        return "networks other than nets.mlp stacks with linear heads"
    name = resolve_estimator(cfg.estimator, model)
    steps = [
        (name == "sgvb_b", f"estimator {name} (only sgvb_b)"),
        (cfg.gradient == "standard", f"gradient {cfg.gradient} (only standard)"),
        (not cfg.free_bits, "free bits"),
        (not cfg.compile, "--compile"),
        (world_size == 1 and (cfg.shards or 1) == 1, "more than one process or shard"),
    ]
    for ok, why in steps:
        if not ok:
            return why
    return None


def bf16_supported(device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively: a CPU with AVX512-BF16 or AMX (as oneDNN detects
    it), or a CUDA GPU with bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def require_bf16(device, flag: str) -> None:
    """ValueError (naming `flag`, e.g. "--precision") unless `device` multiplies bfloat16 natively."""
    if not bf16_supported(device):
        raise ValueError(f"{flag} bf16 needs native bf16 matrix products (a CPU with AVX512-BF16 or AMX, or a CUDA "
                         f"GPU with bf16); the {torch.device(device).type} device here has none: use {flag} float32")


def resolve_step(cfg, model, world_size: int = 1) -> str:
    """The training step a run takes: "fused" or "autograd". `cfg.step` "auto" takes the fused step where it covers
    the model and config; "fused" where it does not is a ValueError naming what is not covered, and so is
    `cfg.precision` "bf16" on any run that does not take the fused step or on hardware without native bf16."""
    asked, precision = getattr(cfg, "step", "auto"), getattr(cfg, "precision", "float32")
    if asked not in STEPS:
        raise ValueError(f"unknown step {asked!r}; choose from {', '.join(STEPS)}")
    why = uncovered(model, cfg, world_size) if asked != "autograd" else "--step autograd"
    if precision == "bf16":
        if why is not None:
            raise ValueError(f"--precision bf16 needs the fused step, which does not cover {why}; use --precision "
                             "float32")
        require_bf16(next(model.parameters()).device, "--precision")
    if asked == "autograd":
        return "autograd"
    if why is None:
        return "fused"
    if asked == "fused":
        raise ValueError(f"--step fused does not cover {why}; use --step auto or --step autograd")
    return "autograd"


def _addmm_bf16(bias, a, b, *, beta=1.0, alpha=1.0, out: torch.Tensor) -> None:
    """out = beta bias + alpha a @ b from bfloat16 operands (float32 accumulation, a bfloat16 result) into the
    float32 `out`; beta 0 ignores bias."""
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    if beta == 0:
        torch.mul(torch.mm(a16, b16), alpha, out=out)
    else:
        out.copy_(torch.addmm(bias.to(torch.bfloat16), a16, b16, beta=beta, alpha=alpha))


class _Buffers:
    """Everything one step writes, for one batch size M: activations, their gradients, z, its noise, the logits."""

    def __init__(self, step: "FusedStep", b: int):
        L, dz = step.num_samples, step.dz
        n = L * b
        new = lambda *shape: torch.empty(*shape, dtype=step.dtype, device=step.device)  # noqa: E731
        self.b, self.n = b, n
        self.enc_h = [new(b, w.shape[0]) for w, _ in step.enc]  # each hidden layer's output
        self.enc_dh = [new(b, w.shape[0]) for w, _ in step.enc]  # and the loss's gradient there
        self.raw = new(b, 2 * dz)  # [mu, log sigma^2]
        self.draw = new(b, 2 * dz)
        self.sigma = new(b, dz)
        self.var = new(b, dz)
        self.kl = new(b, dz)
        self.eps = new(L, b, dz)
        self.es = new(L, b, dz)  # eps sigma
        self.z = new(L, b, dz)
        self.dz = new(n, dz)
        self.dec_h = [new(n, w.shape[0]) for w, _ in step.dec]
        self.dec_dh = [new(n, w.shape[0]) for w, _ in step.dec]
        d = step.out[0].shape[0]
        self.a = new(n, d)  # the logits
        self.s = new(n, d)  # sigmoid(a), then sigmoid(a) - x
        self.t = new(n, d)
        self.mu, self.lv = self.raw[:, :dz], self.raw[:, dz:]
        self.dmu, self.dlv = self.draw[:, :dz], self.draw[:, dz:]
        self.es0 = self.es[0]
        self.z_flat = self.z.view(n, dz)
        self.a_flat, self.a_rows = self.a.view(-1), self.a.view(L, b * d)
        self.s_t, self.draw_t = self.s.t(), self.draw.t()
        self.enc_dh_t = [g.t() for g in self.enc_dh]
        self.dec_dh_t = [g.t() for g in self.dec_dh]
        self.r = step._tensor(1.0 / n)  # d loss / d rec term: 1 / (M L)
        self.s_3d = self.s.view(L, b, d)
        self.t_groups = self.t.view(-1, step.group) if step.group else self.t
        self.kv = new(b, dz)
        # for the KL weight w: (w, C, c, -w / (2 M), w / (2 M)) with (loss, elbo sum) = C parts + c, parts = (sum x a,
        # sum max(a, 0), sum log sigmoid(|a|), sum sigma^2 + mu^2 - log sigma^2)
        self.weights: tuple | None = None


class FusedStep:
    """One training step of `objective`'s model without autograd: `step(xs, samples_seen) -> (loss, elbo_sum)`.

    The same return values as `Objective.forward` (the loss -mean ELBO per datapoint, or with a KL weight w
    w KL - rec averaged over the minibatch, and the summed per-datapoint ELBO), with every parameter's `.grad` set to
    the gradient of that loss (views of one buffer owned by the step, overwritten at the next one). The parameters
    are read through views made once, so loading a state dict or a checkpoint into the model (which copies into
    them) needs nothing more. Check coverage with `uncovered` first.
    """

    def __init__(self, objective, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        model = objective.model
        self.objective, self.model = objective, model
        self.streams = objective.streams
        self.num_samples = objective.num_samples
        self.dz = model.config.latent_dim
        act = model.config.activation
        enc, dec = _stack(model.encoder, act), _stack(model.decoder, act)
        modules = [*enc, model.enc_head, *dec, model.dec_head.out]
        self.params = [p for m in modules for p in (m.weight, m.bias)]
        if len(self.params) != len(list(model.parameters())):
            raise ValueError("the model has parameters the fused step does not know")
        first = self.params[0]
        self.dtype, self.device = first.dtype, first.device
        pair = lambda lin: (lin.weight.detach(), lin.bias.detach())  # noqa: E731
        self.enc, self.head = [pair(m) for m in enc], pair(model.enc_head)
        self.dec, self.out = [pair(m) for m in dec], pair(model.dec_head.out)
        # the weights transposed, as the forward products take them (views, made once)
        self.enc_t = [w.t() for w, _ in self.enc]
        self.dec_t = [w.t() for w, _ in self.dec]
        self.head_t = self.head[0].t()
        # every gradient is a view of one flat buffer: one pass gives the gradient norm
        self.flat = torch.empty(sum(p.numel() for p in self.params), dtype=self.dtype, device=self.device)
        self.grads, at = [], 0
        for p in self.params:
            self.grads.append(self.flat[at:at + p.numel()].view(p.shape))
            at += p.numel()
        g = iter(self.grads)
        self.enc_g = [(next(g), next(g)) for _ in self.enc]
        self.head_g = (next(g), next(g))
        self.dec_g = [(next(g), next(g)) for _ in self.dec]
        self.out_g = (next(g), next(g))
        self.group = product_group(self.out[0].shape[0])
        # tanh(u) = 2 sigmoid(2 u) - 1: the products deliver 2 u (alpha = beta = 2) and sigmoid is cheaper than tanh
        self.scale, self.act_forward = inplace_activation(act, first)
        self.act_backward = {"tanh": self._tanh_backward, "relu": self._relu_backward,
                             "elu": self._elu_backward}[act]
        # 0-dim constants: an in-place op with a Python number converts it to a tensor at every call
        self.one, self.half = self._tensor(1.0), self._tensor(0.5)
        self.buffers: _Buffers | None = None
        # the products in bfloat16 (see the module docstring): the backward's and the logits'
        bf16 = precision == "bf16"
        self.mm = functools.partial(_addmm_bf16, None, beta=0) if bf16 else torch.mm  # mm(a, b, out=)
        self.addmm = _addmm_bf16 if bf16 else torch.addmm
        # the weights as those products take them: bfloat16 copies, refreshed at each step, or the weights themselves
        low = (lambda w: torch.empty_like(w, dtype=torch.bfloat16)) if bf16 else (lambda w: w)
        self.enc_w = [w if k == 0 else low(w) for k, (w, _) in enumerate(self.enc)]  # no input gradient at layer 0
        self.head_w, self.dec_w, self.out_w = low(self.head[0]), [low(w) for w, _ in self.dec], low(self.out[0])
        self.mirrors = [(m, w) for m, (w, _) in zip([*self.enc_w, self.head_w, *self.dec_w, self.out_w],
                                                     [*self.enc, self.head, *self.dec, self.out]) if m is not w]
        self.out_w_t = self.out_w.t()

    def _tensor(self, value) -> torch.Tensor:
        """A constant (a number or nested lists of them) in the parameters' dtype and device."""
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    # -- activations: backward in place on the gradient (the forward: nets.inplace_activation) -----------------------
    @staticmethod
    def _tanh_backward(dh: torch.Tensor, h: torch.Tensor) -> None:
        torch.ops.aten.tanh_backward.grad_input(dh, h, grad_input=dh)

    @staticmethod
    def _relu_backward(dh: torch.Tensor, h: torch.Tensor) -> None:
        torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)

    @staticmethod
    def _elu_backward(dh: torch.Tensor, h: torch.Tensor) -> None:
        torch.ops.aten.elu_backward.grad_input(dh, 1.0, 1.0, 1.0, True, h, grad_input=dh)

    def grad_norm(self) -> torch.Tensor:
        """The 2-norm of all gradients of the last step, from one dot product over the flat buffer."""
        return torch.dot(self.flat, self.flat).sqrt_()

    def _weights(self, buf: _Buffers, w: float) -> tuple:
        """The constants that depend on the KL weight w (made again when w changes)."""
        if buf.weights is None or buf.weights[0] != w:
            b, L, dz = buf.b, self.num_samples, self.dz
            # rec = parts[0] - parts[1] + parts[2] (summed over the L samples), KL = (parts[3] - M Nz) / 2
            rows = [[-1 / (L * b), 1 / (L * b), -1 / (L * b), 0.5 * w / b], [1 / L, -1 / L, 1 / L, -0.5]]
            consts = [-0.5 * w * dz, 0.5 * b * dz]
            new = self._tensor
            buf.weights = (w, new(rows), new(consts), new(-0.5 * w / b), new(0.5 * w / b))
        return buf.weights

    def __call__(self, xs: list[torch.Tensor], samples_seen: int = 0):
        if len(xs) != 1:
            raise ValueError("the fused step takes one shard")
        x = xs[0]
        self.streams.use(0)
        o = self.objective
        w_kl = kl_weight(o.beta, o.kl_warmup, samples_seen)
        buf = self.buffers
        if buf is None or buf.b != x.shape[0]:
            buf = self.buffers = _Buffers(self, x.shape[0])
        for mirror, w in self.mirrors:
            mirror.copy_(w)
        h = self._forward(buf, x)
        loss, elbo = self._bound(buf, x, w_kl)
        self._backward(buf, x, h, w_kl)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return loss, elbo

    def _forward(self, buf: _Buffers, x: torch.Tensor) -> torch.Tensor:
        """Encoder, q(z|x) = N(mu, sigma^2), z = mu + eps sigma, decoder and the logits a (in buf); returns the
        decoder's last hidden layer (z without hidden layers)."""
        act, k2 = self.act_forward, self.scale
        h = x
        for (_, b), wt, out in zip(self.enc, self.enc_t, buf.enc_h):
            torch.addmm(b, h, wt, beta=k2, alpha=k2, out=out)
            act(out)
            h = out
        torch.addmm(self.head[1], h, self.head_t, out=buf.raw)
        torch.mul(buf.lv, self.half, out=buf.sigma).exp_()
        torch.exp(buf.lv, out=buf.var)
        buf.eps.normal_()  # Normal.rsample's draw: the same shape from the same generator
        torch.mul(buf.eps, buf.sigma, out=buf.es)
        torch.add(buf.es, buf.mu, out=buf.z)
        h = buf.z_flat
        for (_, b), wt, out in zip(self.dec, self.dec_t, buf.dec_h):
            torch.addmm(b, h, wt, beta=k2, alpha=k2, out=out)
            act(out)
            h = out
        self.addmm(self.out[1], h, self.out_w_t, out=buf.a)
        return h

    def _bound(self, buf: _Buffers, x: torch.Tensor, w_kl: float):
        """(loss, elbo sum) from the logits: rec = sum x a - softplus(a) with softplus(a) = max(a, 0) - log
        sigmoid(|a|), and Appendix B's KL; leaves sigmoid(a) in buf.s."""
        a, s, t, mu = buf.a, buf.s, buf.t, buf.mu
        torch.sigmoid(a, out=s)
        x_flat = x.reshape(-1)
        xa = torch.dot(buf.a_flat, x_flat) if self.num_samples == 1 else torch.mv(buf.a_rows, x_flat).sum()
        torch.maximum(s, torch.sub(self.one, s, out=t), out=t)  # sigmoid(|a|), in [1/2, 1)
        if self.group is not None:  # a log per product of `group` factors instead of one per logit
            log_sig = buf.t_groups.prod(-1).log_().sum()
        else:
            log_sig = t.log_().sum()
        relu = torch.clamp(a, min=0, out=t).sum()
        kl3 = torch.addcmul(buf.var, mu, mu, out=buf.kl).sub_(buf.lv).sum()
        _, weights, consts, _, _ = self._weights(buf, w_kl)
        res = torch.addmv(consts, weights, torch.stack((xa, relu, log_sig, kl3)))
        return res[0], res[1]

    def _backward(self, buf: _Buffers, x: torch.Tensor, h: torch.Tensor, w_kl: float) -> None:
        """Every gradient into self.grads: d loss / d a = (sigmoid(a) - x) / (M L), the 1/(M L) carried by the
        products' alpha; then d mu = sum_l dz_l + w mu / M, d lv = (sum_l dz_l eps_l sigma + w (sigma^2 - 1) / M) / 2;
        no input gradient for the first layer."""
        L, bsz, s = self.num_samples, buf.b, buf.s
        mm, addmm = self.mm, self.addmm
        act_backward, r = self.act_backward, 1.0 / buf.n
        buf.s_3d.sub_(x)
        gw, gb = self.out_g
        addmm(gw, buf.s_t, h, beta=0, alpha=r, out=gw)
        torch.sum(s, 0, out=gb).mul_(buf.r)
        dnext, wnext, scale = s, self.out_w, r
        for k in range(len(self.dec) - 1, -1, -1):
            dh = buf.dec_dh[k]
            addmm(dh, dnext, wnext, beta=0, alpha=scale, out=dh)
            act_backward(dh, buf.dec_h[k])
            gw, gb = self.dec_g[k]
            mm(buf.dec_dh_t[k], buf.dec_h[k - 1] if k else buf.z_flat, out=gw)
            torch.sum(dh, 0, out=gb)
            dnext, wnext, scale = dh, self.dec_w[k], 1.0
        dzb = buf.dz
        addmm(dzb, dnext, wnext, beta=0, alpha=scale, out=dzb)
        _, _, _, neg_half_c, half_c = self._weights(buf, w_kl)
        dmu, dlv, mu = buf.dmu, buf.dlv, buf.mu
        torch.addcmul(neg_half_c, buf.var, half_c, out=buf.kv)  # w (sigma^2 - 1) / (2 M)
        if L == 1:
            torch.add(dzb, mu, alpha=w_kl / bsz, out=dmu)
            torch.addcmul(buf.kv, dzb, buf.es0, value=0.5, out=dlv)
        else:
            dzv = dzb.view(L, bsz, -1)
            torch.sum(dzv, 0, out=dmu).add_(mu, alpha=w_kl / bsz)
            torch.sum(dzv.mul_(buf.es), 0, out=dlv)
            torch.add(buf.kv, dlv, alpha=0.5, out=dlv)
        gw, gb = self.head_g
        mm(buf.draw_t, buf.enc_h[-1] if self.enc else x, out=gw)
        torch.sum(buf.draw, 0, out=gb)
        dnext, wnext = buf.draw, self.head_w
        for k in range(len(self.enc) - 1, -1, -1):
            dh = buf.enc_dh[k]
            mm(dnext, wnext, out=dh)
            act_backward(dh, buf.enc_h[k])
            gw, gb = self.enc_g[k]
            mm(buf.enc_dh_t[k], buf.enc_h[k - 1] if k else x, out=gw)
            torch.sum(dh, 0, out=gb)
            dnext, wnext = dh, self.enc_w[k]
