"""Optimizers for Algorithm 1: the paper's Adagrad (section 5 and the authors' code), Adam and AdamW.

Each runs torch's fused kernels (`torch._fused_adagrad_`, `_fused_adam_`, `_fused_adamw_`: one pass over all
parameters per step), the kernels `torch.optim`'s classes run with `fused=True`, so the updates are bit-identical to
theirs. They are called here directly because every `torch.optim` optimizer imports torch._dynamo when it is built
or stepped, about a second of a short run's start; these classes import nothing beyond torch.

The classes keep `torch.optim`'s interface as the trainer uses it (`param_groups` with a settable "lr",
`zero_grad`, `step`, `state`) and its `state_dict` layout (state by parameter index: a float32 `step` tensor and
`sum`, or `exp_avg` and `exp_avg_sq`), so checkpoints written with either load into the other.
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("adagrad", "adam", "adamw")


def make_optimizer(name: str, params, *, lr: float, n_train: int, weight_decay: str | float):
    """Build an optimizer by name.

    "adagrad" is the paper's: p <- p - lr g / (sqrt(sum of g^2) + 1e-8). Its warm-up (minibatches that only
    accumulate squared gradients) is a step size of 0 for those steps, set by the trainer's schedule.
    weight_decay="prior" adds p / N to each per-datapoint gradient: a N(0, I) prior on the weights scaled by M/N per
    minibatch of M, the paper's MAP estimate.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    decay = 1.0 / n_train if weight_decay == "prior" else float(weight_decay)
    if name == "adagrad":
        return Adagrad(params, lr=lr, eps=1e-8, weight_decay=decay)
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=decay)
    if name == "adamw":
        return Adam(params, lr=lr, weight_decay=decay, decoupled=True)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


class _Fused:
    """One parameter group updated by a fused kernel; subclasses name their state buffers and call the kernel."""

    buffers: tuple[str, ...] = ()

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError("the optimizer got an empty parameter list")
        for p in params:
            if not (p.is_floating_point() and p.device.type in ("cpu", "cuda")):
                raise ValueError(f"the fused optimizers take float parameters on the CPU or CUDA, got {p.dtype} on "
                                 f"{p.device}")
        self.param_groups = [{**hyper, "params": params}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def _state(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(i)
        if st is None:
            st = {"step": torch.zeros((), dtype=torch.float32, device=p.device)}
            st.update({k: torch.zeros_like(p, memory_format=torch.preserve_format) for k in self.buffers})
            self.state[i] = st
        return st

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (grouped by device and dtype for the kernel)."""
        groups: dict[tuple, list[tuple[torch.Tensor, dict]]] = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                groups.setdefault((p.device, p.dtype), []).append((p, self._state(i, p)))
        hyper = self.param_groups[0]
        for members in groups.values():
            ps = [p for p, _ in members]
            steps = [st["step"] for _, st in members]
            torch._foreach_add_(steps, 1)
            self._kernel(ps, [p.grad for p in ps], [[st[k] for _, st in members] for k in self.buffers], steps,
                         hyper)

    def _kernel(self, params, grads, buffers, steps, hyper) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(st) for i, st in sorted(self.state.items())}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of this class or of the matching `torch.optim` class with fused=True.

        Raises:
            ValueError: the state does not belong to these parameters or to this optimizer.
        """
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"the optimizer state has {sum(len(g['params']) for g in groups)} parameters in "
                             f"{len(groups)} groups, this optimizer {len(self.params)} in 1")
        hyper = self.param_groups[0]
        for k in hyper:
            if k != "params" and k in groups[0]:
                hyper[k] = groups[0][k]
        state = {}
        for i, st in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(self.params):
                raise ValueError(f"the optimizer state names parameter {i} of {len(self.params)}")
            p = self.params[i]
            missing = [k for k in ("step", *self.buffers) if k not in st]
            if missing:
                raise ValueError(f"the optimizer state of parameter {i} lacks {', '.join(missing)}: it is not "
                                 f"{type(self).__name__}'s")
            step = st["step"]
            new = {"step": (step.detach().clone() if torch.is_tensor(step) else torch.tensor(float(step))).to(
                device=p.device, dtype=torch.float32).reshape(())}
            for k in self.buffers:
                if st[k].shape != p.shape:
                    raise ValueError(f"the optimizer state {k} of parameter {i} has shape {tuple(st[k].shape)}, "
                                     f"the parameter {tuple(p.shape)}")
                new[k] = st[k].detach().to(device=p.device, dtype=p.dtype).clone()
            state[i] = new
        self.state = state


class Adagrad(_Fused):
    """Adagrad, as torch.optim.Adagrad(fused=True) with lr_decay 0 and initial accumulator 0."""

    buffers = ("sum",)

    def __init__(self, params, *, lr: float, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, lr_decay=0, eps=eps, weight_decay=weight_decay)

    def _kernel(self, params, grads, buffers, steps, hyper) -> None:
        torch._fused_adagrad_(params, grads, buffers[0], steps, lr=hyper["lr"], lr_decay=hyper["lr_decay"],
                              weight_decay=hyper["weight_decay"], eps=hyper["eps"], maximize=False)


class Adam(_Fused):
    """Adam, as torch.optim.Adam(fused=True); with decoupled=True AdamW, as torch.optim.AdamW(fused=True)."""

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled)

    def _kernel(self, params, grads, buffers, steps, hyper) -> None:
        kernel = torch._fused_adamw_ if hyper["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = hyper["betas"]
        kernel(params, grads, buffers[0], buffers[1], [], steps, lr=hyper["lr"], beta1=beta1, beta2=beta2,
               weight_decay=hyper["weight_decay"], eps=hyper["eps"], amsgrad=False, maximize=False)
