"""Batched solvers: fixed budgets, per-sample independence, monotone least squares."""

from __future__ import annotations

import pytest
import torch

from fitting.solvers import (
    SOLVERS,
    SolverOptions,
    SolverRegistry,
    least_squares,
    minimize_adam,
    minimize_gauss_newton,
    minimize_lbfgs,
    minimize_levenberg_marquardt,
    seed_everything,
)

F64 = torch.float64


def _quadratic(target: torch.Tensor):
    x = torch.zeros_like(target, requires_grad=True)
    return x, lambda: ((x - target) ** 2).sum(-1)


@pytest.mark.parametrize("solve", [
    lambda p, f: minimize_adam(p, f, iterations=400, lr=0.1, lr_final=0.001),
    lambda p, f: minimize_lbfgs(p, f, iterations=20),
])
def test_first_order_solvers_solve_each_sample(solve) -> None:
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0], [0.0, 0.0]])
    x, loss = _quadratic(target)
    result = solve([x], loss)
    torch.testing.assert_close(x.detach(), target, atol=1e-3, rtol=0)
    assert result.loss.shape == (3,) and torch.all(result.loss <= result.first_loss)


@pytest.mark.parametrize("name, options, iterations", [
    ("adam", SolverOptions(lr=0.1, lr_final=0.001), 400),
    ("adamw", SolverOptions(lr=0.1, lr_final=0.001, weight_decay=1e-4), 400),
    ("lbfgs", SolverOptions(), 20),
])
def test_registered_solvers_run_their_minimizer_with_the_options(name, options, iterations) -> None:
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)
    x, loss = _quadratic(target)
    result = SOLVERS.get(name).minimize([x], loss, iterations, options)
    torch.testing.assert_close(x.detach(), target, atol=2e-3, rtol=0)
    assert result.iterations == iterations and SOLVERS.get(name).line_search == (name == "lbfgs")
    # the registry entry is the plain solver with these settings: the same numbers
    y, loss_y = _quadratic(target)
    if name == "lbfgs":
        minimize_lbfgs([y], loss_y, iterations=iterations, lr=options.lr, history=options.history)
    else:
        minimize_adam([y], loss_y, iterations=iterations, lr=options.lr, lr_final=options.lr_final,
                      weight_decay=options.weight_decay if name == "adamw" else 0.0)
    assert torch.equal(x, y)


def test_solver_registry_names_the_known_solvers() -> None:
    assert SOLVERS.names() == ("adam", "adamw", "lbfgs") and "adam" in SOLVERS and "sgd" not in SOLVERS
    with pytest.raises(ValueError, match=r"SolverConfig.name: unknown solver 'sgd'; known: adam, adamw, lbfgs"):
        SOLVERS.get("sgd", "SolverConfig.name")
    registry = SolverRegistry()
    registry.register("mine")(lambda p, f, n, o: None)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("mine")(lambda p, f, n, o: None)


def test_adam_is_deterministic_and_per_sample() -> None:
    """Sample 0 ends in the same place whether or not other samples are in the batch."""
    target = torch.tensor([[1.0, -2.0], [5.0, 7.0]])
    runs = []
    for t in (target, target[:1]):
        x, loss = _quadratic(t)
        minimize_adam([x], loss, iterations=50, lr=0.1)
        runs.append(x.detach()[0])
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


def test_adam_weight_decay_is_decoupled() -> None:
    """With a flat loss (zero gradient) AdamW only decays: x_n = x_0 (1 - lr wd)^n; plain Adam leaves x alone."""
    for decay, factor in ((0.5, (1 - 0.1 * 0.5) ** 20), (0.0, 1.0)):
        x = torch.tensor([[2.0, -3.0]], dtype=torch.float64, requires_grad=True)
        minimize_adam([x], lambda: (0.0 * x).sum(-1), iterations=20, lr=0.1, weight_decay=decay)
        torch.testing.assert_close(x.detach(), torch.tensor([[2.0, -3.0]], dtype=torch.float64) * factor)
    with pytest.raises(ValueError, match="weight_decay"):
        minimize_adam([x], lambda: (x ** 2).sum(-1), iterations=1, lr=0.1, weight_decay=-1.0)


def test_solvers_check_their_inputs() -> None:
    with pytest.raises(ValueError, match="leaf"):
        minimize_adam([torch.zeros(2)], lambda: torch.zeros(1), iterations=1, lr=0.1)
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"\[B\]"):
        minimize_adam([x], lambda: (x ** 2).sum(), iterations=1, lr=0.1)


def _rosenbrock_residuals(x: torch.Tensor) -> torch.Tensor:  # [B, 2] -> [B, 2]
    return torch.stack([1.0 - x[:, 0], 10.0 * (x[:, 1] - x[:, 0] ** 2)], -1)


def test_levenberg_marquardt_converges_and_never_increases() -> None:
    start = torch.tensor([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)

    def linearize(s, with_jacobian):
        x = s["x"]
        r = _rosenbrock_residuals(x)
        if not with_jacobian:
            return r, None
        jac = torch.zeros(len(x), 2, 2, dtype=x.dtype)
        jac[:, 0, 0] = -1.0
        jac[:, 1, 0] = -20.0 * x[:, 0]
        jac[:, 1, 1] = 10.0
        return r, jac

    state, result = minimize_levenberg_marquardt({"x": start}, linearize, lambda s, step: {"x": s["x"] + step},
                                                 iterations=30)
    torch.testing.assert_close(state["x"], torch.ones_like(start), atol=1e-6, rtol=0)
    assert torch.all(result.loss <= result.first_loss)


def test_gauss_newton_with_automatic_jacobian() -> None:
    x = torch.tensor([[1.5, 2.0], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    result = minimize_gauss_newton([x], lambda p: _rosenbrock_residuals(p[0]), iterations=40)
    torch.testing.assert_close(x.detach(), torch.ones_like(x), atol=1e-5, rtol=0)
    assert torch.all(result.loss <= result.first_loss)


def test_seed_everything_repeats_draws() -> None:
    a = torch.rand(3, generator=seed_everything(7))
    b = torch.rand(3, generator=seed_everything(7))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_least_squares_solves_independent_samples_with_a_vectorised_jacobian():
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(14), dtype=F64)

    def residuals_to(goal):  # [B, 6]: x[:, :5] * x[:, 5] should equal the goal, x[:, 5] near 2
        return lambda x: torch.cat([x[:, :5] * x[:, 5:] - goal, 10.0 * (x[:, 5:] - 2.0)], dim=1)

    start = torch.ones(3, 6, dtype=F64)
    x, report = least_squares(residuals_to(target), start, iterations=8, chunk=4)  # chunks smaller than the batch
    torch.testing.assert_close(x[:, :5] * x[:, 5:], target, atol=1e-6, rtol=0)
    assert (report.loss < 1e-8).all() and (report.first_loss > 1.0).all()
    alone, _ = least_squares(residuals_to(target[1:2]), start[1:2], iterations=8)  # samples do not interact
    torch.testing.assert_close(alone, x[1:2])
