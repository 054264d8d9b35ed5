"""Batched solvers with fixed iteration budgets.

A **batched problem** is a set of independent per-sample problems solved together: the parameters are
tensors whose first dimension is the sample (``[B, ...]``) and the objective returns one loss per sample
(``[B]``). The solvers minimise the *sum* of the per-sample losses; because samples share no parameter,
the gradient of the sum with respect to sample ``b``'s parameters is the gradient of its own loss, so
every first-order step is the per-sample step. (L-BFGS shares its line search across the batch: one step
length for all samples. Levenberg-Marquardt solves each sample's normal equations on its own.)

Every solver runs exactly its iteration budget (no early stop, no data-dependent branching), so a run
costs the same for every batch and gives the same numbers for the same inputs on the same device; none
of them draws random numbers. ``seed_everything`` fixes torch's generators for callers whose
initialisation is random.

:data:`SOLVERS` registers the solvers of problems given as per-sample losses (gradients by autograd) by
name, for configs that choose one: ``adam``, ``adamw`` and ``lbfgs``, all called as
``SOLVERS.get(name).minimize(params, loss_fn, iterations, options)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

LossFn = Callable[[], Tensor]
"""Objective of a batched problem: reads the parameters, returns per-sample losses ``[B]``."""
ResidualFn = Callable[[Sequence[Tensor]], Tensor]
"""Residuals of a batched least-squares problem: parameters -> ``[B, R]``."""


@dataclass(frozen=True)
class SolverResult:
    """What a solver reports besides the parameters it updated in place."""

    loss: Tensor
    """[B] per-sample loss after the last iteration (detached)."""
    first_loss: Tensor
    """[B] per-sample loss before the first iteration (detached)."""
    iterations: int
    """Iterations run (always the budget)."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's CPU (and CUDA) generators and return a CPU generator seeded with ``seed``."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _check_params(params: Sequence[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params: nothing to optimise (empty list)")
    for i, p in enumerate(params):
        if not p.is_leaf or not p.requires_grad:
            raise ValueError(f"params[{i}]: must be a leaf tensor with requires_grad=True (shape {list(p.shape)})")
    return params


def _evaluate(loss_fn: LossFn) -> Tensor:
    loss = loss_fn()
    if loss.dim() != 1:
        raise ValueError(f"loss_fn must return per-sample losses [B], got shape {list(loss.shape)}")
    return loss


def minimize_adam(params: Sequence[Tensor], loss_fn: LossFn, *, iterations: int, lr: float,
                  lr_final: float | None = None, weight_decay: float = 0.0) -> SolverResult:
    """Adam for ``iterations`` steps on the summed per-sample losses, parameters updated in place.

    ``lr_final``: when given, the step size decays geometrically from ``lr`` to ``lr_final`` over the budget.
    ``weight_decay``: when > 0, AdamW (``torch.optim.AdamW``): every step also shrinks each parameter by
    ``lr * weight_decay`` times itself, apart from the gradient step (decoupled weight decay).
    """
    params = _check_params(params)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay > 0
           else torch.optim.Adam(params, lr=lr))
    gamma = 1.0 if lr_final is None or iterations < 2 else (lr_final / lr) ** (1.0 / (iterations - 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    first = None
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = _evaluate(loss_fn)
        if first is None:
            first = loss.detach()
        loss.sum().backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        last = _evaluate(loss_fn).detach()
    return SolverResult(loss=last, first_loss=last if first is None else first, iterations=iterations)


def minimize_lbfgs(params: Sequence[Tensor], loss_fn: LossFn, *, iterations: int, lr: float = 1.0,
                   history: int = 10) -> SolverResult:
    """L-BFGS with a strong-Wolfe line search on the summed per-sample losses, ``iterations`` iterations
    (torch's ``max_iter``, no tolerance stop; the line search may evaluate the objective several times
    per iteration), parameters updated in place."""
    params = _check_params(params)
    with torch.no_grad():
        first = _evaluate(loss_fn).detach()
    if iterations > 0:
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=iterations, max_eval=25 * iterations, history_size=history,
                                line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            total = _evaluate(loss_fn).sum()
            total.backward()
            return total

        opt.step(closure)
    with torch.no_grad():
        last = _evaluate(loss_fn).detach()
    return SolverResult(loss=last, first_loss=first, iterations=iterations)


def minimize_gauss_newton(params: Sequence[Tensor], residual_fn: ResidualFn, *, iterations: int,
                          damping: float = 1e-3) -> SolverResult:
    """Damped Gauss-Newton for batched least squares with an automatic Jacobian, parameters updated in place.

    residual_fn  # params -> [B, R] residuals; the loss of sample b is sum_r residual[b, r]^2

    Each iteration builds every sample's Jacobian ``[R, P]`` with one forward-mode pass per parameter
    component and solves its damped normal equations ``(J^T J + damping * diag(J^T J) + damping * I) dx =
    -J^T r``. A step that raises a sample's loss is not taken for that sample, so losses never increase.
    Suits small ``P``; with a closed-form Jacobian use :func:`minimize_levenberg_marquardt`.
    """
    params = _check_params(params)
    shapes = [p.shape for p in params]
    batch = shapes[0][0]
    for i, s in enumerate(shapes):
        if len(s) == 0 or s[0] != batch:
            raise ValueError(f"params[{i}]: first dimension must be the batch ({batch}), got shape {list(s)}")
    sizes = [p[0].numel() for p in params]
    flat = torch.cat([p.detach().reshape(batch, -1) for p in params], dim=1)  # [B, P]

    def residuals(x: Tensor) -> Tensor:
        r = residual_fn([c.reshape(s) for c, s in zip(torch.split(x, sizes, dim=1), shapes)])
        if r.dim() != 2 or r.shape[0] != batch:
            raise ValueError(f"residual_fn must return [B, R] residuals, got shape {list(r.shape)}")
        return r

    with torch.no_grad():
        r = residuals(flat)
    first = loss = (r * r).sum(1)
    n = flat.shape[1]
    eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
    for _ in range(iterations):
        cols = []
        for k in range(n):
            tangent = torch.zeros_like(flat)
            tangent[:, k] = 1.0
            cols.append(torch.func.jvp(residuals, (flat,), (tangent,))[1])
        jac = torch.stack(cols, dim=2)  # [B, R, P]
        with torch.no_grad():
            jtj = jac.transpose(1, 2) @ jac
            jtr = (jac.transpose(1, 2) @ r[..., None])[..., 0]
            system = jtj + damping * torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2)) + damping * eye
            trial = flat + torch.linalg.solve(system, -jtr)
            r_trial = residuals(trial)
            loss_trial = (r_trial * r_trial).sum(1)
            better = loss_trial <= loss
            flat = torch.where(better[:, None], trial, flat)
            r = torch.where(better[:, None], r_trial, r)
            loss = torch.where(better, loss_trial, loss)
    with torch.no_grad():
        for p, value in zip(params, torch.split(flat, sizes, dim=1)):
            p.copy_(value.reshape(p.shape))
    return SolverResult(loss=loss.detach(), first_loss=first.detach(), iterations=iterations)


State = dict[str, Tensor]
"""Parameters of a batched least-squares problem: tensors whose first dimension is the sample."""
Linearize = Callable[[State, bool], tuple[Tensor, Tensor | None]]
"""``(state, with_jacobian) -> (residuals [B, R], Jacobian [B, R, P] or None)``."""
Retract = Callable[[State, Tensor], State]
"""``(state, step [B, P]) -> state moved by the step`` (e.g. rotations right-multiplied by ``exp(step)``)."""


def minimize_levenberg_marquardt(state: State, linearize: Linearize, retract: Retract, *, iterations: int,
                                 damping: float = 1e-3) -> tuple[State, SolverResult]:
    """Levenberg-Marquardt for batched least squares (loss of sample b: ``sum_r residual[b, r]^2``).

    Each iteration solves every sample's damped normal equations
    ``(J^T J + lambda_b (diag(J^T J) + 1e-9)) step = -J^T r`` and moves by :func:`Retract`; a sample whose
    loss does not fall keeps its parameters and multiplies its ``lambda_b`` by 4, one whose loss falls
    divides it by 3 (start: ``damping``). One linearisation per iteration plus a final residual
    evaluation; losses never increase.
    """
    r, jac = linearize(state, True)
    if r.dim() != 2 or jac is None or jac.dim() != 3 or jac.shape[:2] != r.shape:
        raise ValueError(f"linearize must return residuals [B, R] and a Jacobian [B, R, P], got "
                         f"{list(r.shape)} and {None if jac is None else list(jac.shape)}")
    loss = (r * r).sum(1)
    first = loss
    lam = torch.full_like(loss, damping)

    def normal_equations(r: Tensor, jac: Tensor) -> tuple[Tensor, Tensor]:
        return jac.transpose(1, 2) @ jac, (jac.transpose(1, 2) @ r[..., None])[..., 0]

    hess, grad = normal_equations(r, jac)
    for it in range(iterations):
        diag = torch.diagonal(hess, dim1=1, dim2=2) + 1e-9
        step = torch.linalg.solve(hess + torch.diag_embed(lam[:, None] * diag), -grad)
        trial = retract(state, step)
        last = it == iterations - 1
        r_new, jac_new = linearize(trial, not last)
        loss_new = (r_new * r_new).sum(1)
        better = loss_new < loss
        state = {k: torch.where(better.reshape(-1, *([1] * (v.dim() - 1))), trial[k], v) for k, v in state.items()}
        loss = torch.where(better, loss_new, loss)
        lam = torch.where(better, lam / 3.0, lam * 4.0)
        if not last:
            hess_new, grad_new = normal_equations(r_new, jac_new)
            hess = torch.where(better[:, None, None], hess_new, hess)
            grad = torch.where(better[:, None], grad_new, grad)
    return state, SolverResult(loss=loss.detach(), first_loss=first.detach(), iterations=iterations)


def least_squares(
    residual_fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    iterations: int,
    damping: float = 1e-3,
    chunk: int = 4096,
    known_jacobian: Callable[[Tensor], Tensor] | None = None,
    known_columns: int = 0,
) -> tuple[Tensor, SolverResult]:
    """Minimise every sample's ``sum residual_fn(x)[b]^2`` from ``x0  # [B, P]`` with
    :func:`minimize_levenberg_marquardt` (additive steps).

    The Jacobian ``[B, R, P]`` is built in one vectorised forward-mode pass (``torch.func.vmap`` over the
    tangents, at most ``chunk`` sample-tangent pairs at a time) instead of ``P`` sequential ones; its last
    ``known_columns`` columns come from ``known_jacobian(x)  # [B, R, known_columns]`` instead, for
    parameters whose derivative is cheap in closed form.

    residual_fn  # [B, P] -> [B, R]; must treat samples independently (no mixing across the batch)
    returns      # the solution [B, P] and the solver's report
    """
    batch, n = x0.shape
    automatic = n - known_columns
    if known_columns and known_jacobian is None or not 0 <= known_columns <= n:
        raise ValueError(f"known_columns={known_columns} needs a known_jacobian and at most {n} columns")
    eye = torch.eye(automatic, dtype=x0.dtype, device=x0.device)
    per_call = max(1, chunk // max(batch, 1))

    def linearize(state: dict[str, Tensor], with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
        x = state["x"]
        known = x[:, automatic:]  # constant in the pass: no tangent flows through the known columns

        def column(tangent: Tensor) -> Tensor:  # [P - known] -> J @ tangent for every sample, [B, R]
            def partial(head: Tensor) -> Tensor:
                return residual_fn(torch.cat([head, known], dim=1))

            return torch.func.jvp(partial, (x[:, :automatic],), (tangent.expand(batch, automatic),))[1]

        if not with_jacobian:
            return residual_fn(x), None
        blocks = [torch.func.vmap(column, out_dims=2)(eye[k:k + per_call]) for k in range(0, automatic, per_call)]
        if known_columns:
            blocks.append(known_jacobian(x))
        return residual_fn(x), torch.cat(blocks, 2)

    state, result = minimize_levenberg_marquardt({"x": x0}, linearize, lambda s, step: {"x": s["x"] + step},
                                                 iterations=iterations, damping=damping)
    return state["x"], result


# --------------------------------------------------------------------------------------------------
# Named solvers of per-sample losses
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverOptions:
    """Settings of the registered solvers; each solver reads only the fields that name it."""

    lr: float = 1.0
    """Adam / AdamW: the step size; L-BFGS: the first trial step of its line search."""
    lr_final: float | None = None
    """Adam / AdamW: the step size decays geometrically from ``lr`` to this over the budget (None: constant)."""
    weight_decay: float = 0.0
    """AdamW: decoupled weight decay."""
    history: int = 10
    """L-BFGS: curvature pairs kept."""


MinimizeFn = Callable[[list[Tensor], LossFn, int, SolverOptions], SolverResult]
"""``(params, loss_fn, iterations, options) -> SolverResult``; parameters are updated in place."""


@dataclass(frozen=True)
class NamedSolver:
    """One entry of :data:`SOLVERS`."""

    name: str
    minimize: MinimizeFn
    line_search: bool
    """The step length comes from a line search (``options.lr`` is only its first trial)."""


class SolverRegistry:
    """Name -> :class:`NamedSolver` for the solvers of per-sample losses a config can choose."""

    def __init__(self) -> None:
        self._entries: dict[str, NamedSolver] = {}

    def register(self, name: str, *, line_search: bool = False) -> Callable[[MinimizeFn], MinimizeFn]:
        """Decorator registering ``minimize`` under ``name``."""

        def deco(minimize: MinimizeFn) -> MinimizeFn:
            if name in self._entries:
                raise ValueError(f"solver {name!r} is registered twice")
            self._entries[name] = NamedSolver(name, minimize, line_search)
            return minimize

        return deco

    def get(self, name: str, owner: str = "solver") -> NamedSolver:
        """The entry called ``name``; ``ValueError`` naming ``owner`` (the config field) and listing the
        known solvers otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{owner}: unknown solver {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


SOLVERS = SolverRegistry()
"""The solvers of per-sample losses, by name (see the module docstring)."""


@SOLVERS.register("adam")
def _adam(params: list[Tensor], loss_fn: LossFn, iterations: int, options: SolverOptions) -> SolverResult:
    """Adam (:func:`minimize_adam`; ``lr``, ``lr_final``)."""
    return minimize_adam(params, loss_fn, iterations=iterations, lr=options.lr, lr_final=options.lr_final)


@SOLVERS.register("adamw")
def _adamw(params: list[Tensor], loss_fn: LossFn, iterations: int, options: SolverOptions) -> SolverResult:
    """AdamW (:func:`minimize_adam` with ``weight_decay``; ``lr``, ``lr_final``)."""
    return minimize_adam(params, loss_fn, iterations=iterations, lr=options.lr, lr_final=options.lr_final,
                         weight_decay=options.weight_decay)


@SOLVERS.register("lbfgs", line_search=True)
def _lbfgs(params: list[Tensor], loss_fn: LossFn, iterations: int, options: SolverOptions) -> SolverResult:
    """L-BFGS with a strong-Wolfe line search (:func:`minimize_lbfgs`; ``lr``, ``history``)."""
    return minimize_lbfgs(params, loss_fn, iterations=iterations, lr=options.lr, history=options.history)

