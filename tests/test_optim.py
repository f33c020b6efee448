"""aevb's optimizers against torch.optim's fused classes (same kernels: bit-identical), their state_dict layout, and
a short run that never imports torch._dynamo."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from aevb.optim import Adagrad, Adam, make_optimizer

TORCH = {
    "adagrad": lambda ps, lr, wd: torch.optim.Adagrad(ps, lr=lr, eps=1e-8, weight_decay=wd, fused=True),
    "adam": lambda ps, lr, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd, fused=True),
    "adamw": lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True),
}


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((7, 5), (5,), (3, 7))]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * (1 + step)


@pytest.mark.parametrize("name", ["adagrad", "adam", "adamw"])
def test_updates_are_bit_identical_to_torch_optim_fused(name):
    ours, theirs = _params(0), _params(0)
    opt = make_optimizer(name, ours, lr=0.03, n_train=50, weight_decay="prior")
    ref = TORCH[name](theirs, 0.03, 1 / 50)
    for step in range(12):
        lr = 0.03 * (0.5 + step / 12)  # the trainer sets the step size each step
        for o in (opt, ref):
            o.param_groups[0]["lr"] = lr
        _grads(ours, step)
        _grads(theirs, step)
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    mine, other = opt.state_dict(), ref.state_dict()
    assert mine["state"].keys() == other["state"].keys()
    for i in mine["state"]:
        assert mine["state"][i].keys() == other["state"][i].keys()
        for k in mine["state"][i]:
            assert torch.equal(mine["state"][i][k], other["state"][i][k]), (i, k)


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_state_dict_round_trips_and_torch_checkpoints_load(name):
    """A state written by torch.optim (older checkpoints) or by aevb continues the same trajectory."""
    base = _params(1)
    ref = TORCH[name](base, 0.1, 0.0)
    for step in range(3):
        _grads(base, step)
        ref.step()
    saved = ref.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in base]
    opt = make_optimizer(name, resumed, lr=0.5, n_train=1, weight_decay=0.0)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.1  # hyperparameters come from the state, as torch.optim does
    again = make_optimizer(name, [torch.nn.Parameter(p.detach().clone()) for p in base], lr=0.5, n_train=1,
                           weight_decay=0.0)
    again.load_state_dict(opt.state_dict())
    for step in range(3, 6):
        for ps, o in ((base, ref), (resumed, opt), (again.params, again)):
            _grads(ps, step)
            o.step()
    for a, b, c in zip(base, resumed, again.params):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_adagrad_matches_the_paper_update_in_float64():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = Adagrad([p], lr=0.1, eps=1e-8)
    x, acc = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for _ in range(4):
        opt.zero_grad()
        (p**3).sum().backward()
        opt.step()
        g = 3 * x**2
        acc += g**2
        x = x - 0.1 * g / (np.sqrt(acc) + 1e-8)
        np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-14)


def test_bad_states_and_parameters_are_refused():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([], lr=1e-3)
    with pytest.raises(ValueError, match="float parameters"):
        Adam([torch.zeros(2, dtype=torch.long)], lr=1e-3)
    opt = Adam(p, lr=1e-3)
    with pytest.raises(ValueError, match="lacks exp_avg"):
        opt.load_state_dict({"state": {0: {"step": torch.tensor(1.0), "sum": torch.zeros(3)}},
                             "param_groups": [{"lr": 1e-3, "params": [0]}]})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4),
                                           "exp_avg_sq": torch.zeros(4)}},
                             "param_groups": [{"lr": 1e-3, "params": [0]}]})
    with pytest.raises(ValueError, match="2 parameters"):
        opt.load_state_dict({"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]})


def test_a_short_training_run_does_not_import_dynamo(shared_data, tmp_path):
    """torch._dynamo costs about a second to import; a plain training run has no use for it."""
    code = ("import sys; from aevb.cli import main; "
            f"main(['train', '--samples', '200', '--no-progress', '--data-dir', {str(shared_data)!r}, "
            f"'--out', {str(tmp_path / 'run')!r}, '--optimizer', 'adam', '--eval-train-size', '100']); "
            "print('dynamo' if 'torch._dynamo' in sys.modules else 'no dynamo')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "no dynamo"
