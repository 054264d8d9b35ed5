"""SMPLify-X-style batched fit of SMPL-X bodies to 2D body keypoints (the body annotator's fallback when a
sample has no SMPL label).

**Keypoint layouts** (:data:`KEYPOINT_LAYOUTS`) say which SMPL-X point each 2D keypoint of a layout is:
a skeleton joint (``layouts.SMPLX_JOINTS``) or one of smplx's vertex keypoints (nose, eyes, ears, toes,
heels: :data:`model.body_models.SMPLX_KEYPOINT_NAMES`). Keypoints whose definition differs much between
datasets and SMPL-X (neck, head top, pelvis, thorax) are left out.

**The fit** (:func:`fit_smplx_to_keypoints`), per sample, with fixed iteration budgets:

1. *Camera from the torso.* The rest-pose body is turned to face the camera (and, as a second
   hypothesis, away from it); for each, the translation that best projects its shoulders and hips onto
   the keypoints comes from :func:`fitting.camera.solve_translation` (all confident keypoints if the torso
   is not visible, the box otherwise). ``orient_iterations`` Adam steps then fit the global orientation
   and translation to the torso keypoints.
2. *Body.* For both hypotheses, ``iterations`` Adam steps on global orientation, body pose, betas and
   translation minimise :func:`smplify_objective`: a Geman-McClure robust reprojection term over the
   confident keypoints (in units of the person box's longer side, so that the weights do not depend on
   the image resolution), plus the pose prior, joint limits (:mod:`fitting.priors`) and a shape prior.
   The robust scale is annealed over ``sigma_phases`` phases (:func:`sigma_schedule`), from a wide one
   that still pulls limbs far from their keypoints to the final one that ignores outliers. The
   hypothesis with the lower final objective is kept.

The intrinsics are fixed (the record's ``cam_intrinsics``); the result is in the OpenCV camera frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fitting.camera import project, solve_translation, translation_from_box
from fitting.priors import joint_limit_penalty, pose_prior, shape_prior
from fitting.solvers import minimize_adam
from model.assets.layouts import SMPLX_JOINTS
from model.body_models import SMPLX, SMPLX_KEYPOINT_NAMES
from model.partial import PartialModel
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat

MODEL_POINTS: tuple[str, ...] = tuple(SMPLX_JOINTS) + SMPLX_KEYPOINT_NAMES
"""The SMPL-X points keypoints can name: the 55 joints, then the 21 vertex keypoints."""
TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
"""Points the camera stage fits."""


@dataclass(frozen=True)
class KeypointLayout:
    """A 2D keypoint layout and the SMPL-X point of each keypoint it shares with SMPL-X."""

    name: str
    size: int
    """Keypoints in the layout."""
    pairs: tuple[tuple[int, str], ...]
    """(keypoint index, SMPL-X point name in :data:`MODEL_POINTS`)."""

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Keypoint indices ``[P]`` and the matching :data:`MODEL_POINTS` indices ``[P]``."""
        return (np.array([i for i, _ in self.pairs], np.int64),
                np.array([MODEL_POINTS.index(n) for _, n in self.pairs], np.int64))


def _pairs(names: list[str | None]) -> tuple[tuple[int, str], ...]:
    return tuple((i, n) for i, n in enumerate(names) if n is not None)


_COCO17 = ["nose", "leye", "reye", "lear", "rear", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
           "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
_FEET6 = ["LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"]
_OPENPOSE25 = ["nose", None, "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
               "left_wrist", None, "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
               "reye", "leye", "rear", "lear"] + _FEET6
_SPIN24 = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
           "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
           None, None, None, None, None, None, None,  # neck, head top, pelvis, thorax, spine, jaw, head
           "nose", "leye", "reye", "lear", "rear"]

KEYPOINT_LAYOUTS: dict[str, KeypointLayout] = {
    layout.name: layout for layout in (
        KeypointLayout("coco_wholebody", 133, _pairs(_COCO17 + _FEET6)),
        KeypointLayout("coco17", 17, _pairs(_COCO17)),
        KeypointLayout("openpose25", 25, _pairs(_OPENPOSE25)),
        KeypointLayout("openpose25+19", 44, _pairs(_OPENPOSE25 + _SPIN24[:12] + [None] * 7)),
        KeypointLayout("spin24", 24, _pairs(_SPIN24)),
    )
}
"""Layouts by name: ``coco_wholebody`` (the record's ``kp2d_wholebody``: body 17 and feet 6), ``coco17``,
``openpose25`` (BODY_25), ``openpose25+19`` (4D-Humans / SPIN: BODY_25 then 19 ground-truth joints, of which
the 12 limb joints are used) and ``spin24`` (SPIN's 24 ground-truth joints, the ``part`` array of SPIN npz
files: limbs and face points)."""


def keypoint_layout(name: str) -> KeypointLayout:
    """The layout called ``name``; ``KeyError`` listing the known ones."""
    try:
        return KEYPOINT_LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown keypoint layout {name!r}; known: {', '.join(KEYPOINT_LAYOUTS)}") from None


@dataclass
class SmplifyConfig:
    """Settings of the keypoint fit."""

    orient_iterations: int = 40
    """Adam steps of the torso stage (global orientation and translation)."""
    iterations: int = 300
    """Adam steps of the body stage."""
    lr: float = 0.03
    """Adam step size of both stages (radians, metres and beta units per step), decayed to a tenth."""
    min_confidence: float = 0.3
    """Keypoints with a lower confidence are ignored."""
    robust_sigma: float = 0.1
    """Geman-McClure scale, as a fraction of the person box's longer side (of the body stage's last phase)."""
    robust_sigma_start: float = 0.5
    """Geman-McClure scale of the body stage's first phase. The robust cost gives almost no gradient to
    residuals a few ``sigma`` long, so a limb that starts far from its keypoints (an arm raised to the face
    from the T-pose) stays where it is under a small ``sigma``; the body stage therefore anneals ``sigma``
    from this value down to :attr:`robust_sigma` (graduated non-convexity)."""
    sigma_phases: int = 3
    """Phases of the body stage, each ``iterations / sigma_phases`` Adam steps at one ``sigma`` of a
    geometric sequence from :attr:`robust_sigma_start` to :attr:`robust_sigma`."""
    pose_prior_weight: float = 1e-3
    """Weight of :func:`fitting.priors.pose_prior`."""
    joint_limit_weight: float = 1.0
    """Weight of :func:`fitting.priors.joint_limit_penalty`."""
    shape_prior_weight: float = 1e-3
    """Weight of :func:`fitting.priors.shape_prior`."""
    default_height_m: float = 1.7
    """Body height assumed to place the body from its box when no torso keypoint is confident."""

    def __post_init__(self) -> None:
        if not (0 < self.robust_sigma <= self.robust_sigma_start):
            raise ValueError(f"SmplifyConfig needs 0 < robust_sigma <= robust_sigma_start, got "
                             f"{self.robust_sigma} and {self.robust_sigma_start}")
        if self.sigma_phases < 1 or self.iterations < self.sigma_phases:
            raise ValueError(f"SmplifyConfig needs 1 <= sigma_phases <= iterations, got {self.sigma_phases} "
                             f"phases for {self.iterations} iterations")


# --------------------------------------------------------------------------------------------------
# Objective (small pure functions; the refinement reuses them)
# --------------------------------------------------------------------------------------------------


def geman_mcclure(residual_sq: Tensor, sigma: float) -> Tensor:
    """Geman-McClure robust cost ``sigma^2 r^2 / (sigma^2 + r^2)`` of squared residuals (same shape)."""
    s2 = sigma * sigma
    return s2 * residual_sq / (s2 + residual_sq)


def keypoint_data_term(projected: Tensor, observed: Tensor, weights: Tensor, scale: Tensor, sigma: float) -> Tensor:
    """Weighted mean robust reprojection cost ``[B]``.

    projected  # [B, K, 2] model points in pixels
    observed   # [B, K, 2] keypoints in pixels
    weights    # [B, K] confidences (0: ignored)
    scale      # [B] pixels per unit residual (the person box's longer side)
    """
    r2 = ((projected - observed) ** 2).sum(-1) / (scale[:, None] ** 2)
    return (weights * geman_mcclure(r2, sigma)).sum(-1) / weights.sum(-1).clamp(min=1e-6)


def smplify_objective(projected: Tensor, observed: Tensor, weights: Tensor, scale: Tensor, body_pose: Tensor,
                      betas: Tensor, config: SmplifyConfig, sigma: float | None = None) -> Tensor:
    """Data term plus weighted priors, ``[B]`` (``body_pose  # [B, 21, 3]``, ``betas  # [B, S]``);
    ``sigma`` (default ``config.robust_sigma``) is the Geman-McClure scale."""
    sigma = config.robust_sigma if sigma is None else sigma
    return (keypoint_data_term(projected, observed, weights, scale, sigma)
            + config.pose_prior_weight * pose_prior(body_pose)
            + config.joint_limit_weight * joint_limit_penalty(body_pose)
            + config.shape_prior_weight * shape_prior(betas))


def sigma_schedule(config: SmplifyConfig) -> list[float]:
    """Geman-McClure scales of the body stage's phases: geometric from ``robust_sigma_start`` to
    ``robust_sigma`` (one phase: ``robust_sigma`` alone)."""
    n = config.sigma_phases
    if n == 1:
        return [config.robust_sigma]
    ratio = config.robust_sigma / config.robust_sigma_start
    return [config.robust_sigma_start * ratio ** (i / (n - 1)) for i in range(n)]


def reprojection_px(projected: Tensor, observed: Tensor, weights: Tensor) -> Tensor:
    """Mean pixel distance over keypoints with weight ``[B]`` (NaN where none has)."""
    used = weights > 0
    dist = (projected - observed).norm(dim=-1)
    count = used.sum(-1)
    mean = (dist * used).sum(-1) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


# --------------------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmplifyResult:
    """SMPL-X bodies fitted to keypoints (OpenCV camera frame)."""

    params: dict[str, Tensor]
    """``global_orient [B, 3]``, ``body_pose [B, 21, 3]``, ``betas [B, S]``, ``transl [B, 3]``."""
    reprojection_px: Tensor
    """[B] mean pixel distance of the used keypoints after the fit."""
    initial_reprojection_px: Tensor
    """[B] the same after the torso stage (before the body stage)."""
    loss: Tensor
    """[B] final :func:`smplify_objective`."""


class KeypointFitter(torch.nn.Module):
    """The model points of SMPL-X (joints and vertex keypoints), posed cheaply, and the fit."""

    def __init__(self, smplx: SMPLX, config: SmplifyConfig | None = None) -> None:
        super().__init__()
        self.config = config or SmplifyConfig()
        self.part = PartialModel(smplx, smplx.keypoint_ids)

    def points(self, params: Mapping[str, Tensor]) -> Tensor:
        """Camera-frame :data:`MODEL_POINTS` ``[B, 76, 3]`` of SMPL-X bodies (missing pose parts are zero)."""
        model = self.part.model
        n = params["global_orient"].shape[0]
        rot = model.local_rotmats({k: params[k] for k in ("global_orient", "body_pose") if k in params}, n)
        coeffs = model.shape_coefficients({"betas": params["betas"]}, n)
        verts, joints, _ = self.part(coeffs, rot, params["transl"])
        return torch.cat([joints, verts], dim=1)

    def fit(self, keypoints: Tensor, layout: KeypointLayout, intrinsics: Tensor, boxes: Tensor) -> SmplifyResult:
        """Fit SMPL-X to ``keypoints [B, layout.size, 3]`` (x px, y px, confidence) seen through
        ``intrinsics [B, 3, 3]``; ``boxes [B, 4]`` (xyxy px) set the residual scale and the fallback placement."""
        cfg = self.config
        if keypoints.dim() != 3 or keypoints.shape[1:] != (layout.size, 3):
            raise ValueError(f"keypoints: expected shape [B, {layout.size}, 3] ({layout.name}), "
                             f"got {list(keypoints.shape)}")
        model = self.part.model
        dtype, device = model.v_template.dtype, model.v_template.device
        b = keypoints.shape[0]
        kp_idx, model_idx = (torch.as_tensor(a, device=device) for a in layout.index_arrays())
        observed = keypoints[:, kp_idx, :2].to(dtype)
        conf = keypoints[:, kp_idx, 2].to(dtype)
        weights = torch.where(conf >= cfg.min_confidence, conf, torch.zeros_like(conf))
        scale = (boxes[:, 2:] - boxes[:, :2]).amax(-1).to(dtype).clamp(min=1.0)
        torso = torch.tensor([MODEL_POINTS.index(n) for n in TORSO], device=device)
        torso_w = weights * torch.isin(model_idx, torso).to(dtype)[None]
        nb = model.shape_sizes["betas"]

        # -- stage 1: camera from the torso, two orientation hypotheses ----------------------------
        front = torch.tensor([torch.pi, 0.0, 0.0], dtype=dtype, device=device)
        away = rotmat_to_rotvec(rotvec_to_rotmat(torch.tensor([0.0, torch.pi, 0.0], dtype=dtype, device=device))
                                @ rotvec_to_rotmat(front))
        orient = torch.cat([front.expand(b, 3), away.expand(b, 3)])
        zeros = {"betas": torch.zeros(2 * b, nb, dtype=dtype, device=device),
                 "transl": torch.zeros(2 * b, 3, dtype=dtype, device=device)}
        two = lambda x: torch.cat([x, x])  # noqa: E731 - both hypotheses share the observations
        with torch.no_grad():
            rest = self.points({"global_orient": orient} | zeros)[:, model_idx]
            use_w = torch.where((torso_w > 0).sum(1, keepdim=True) >= 2, torso_w, weights)
            t, ok = solve_translation(rest, two(observed), two(use_w), two(intrinsics.to(dtype)))
            height = torch.full((2 * b,), cfg.default_height_m, dtype=dtype, device=device)
            placed = translation_from_box(height, two(boxes.to(dtype)), two(intrinsics.to(dtype)))
            t = torch.where(ok[:, None], t, placed)
        global_orient = orient.clone().requires_grad_(True)
        transl = t.clone().requires_grad_(True)

        def torso_loss() -> Tensor:
            pts = self.points({"global_orient": global_orient, "transl": transl, "betas": zeros["betas"]})[:, model_idx]
            return keypoint_data_term(project(pts, two(intrinsics.to(dtype))), two(observed), two(use_w), two(scale),
                                      cfg.robust_sigma)

        minimize_adam([global_orient, transl], torso_loss, iterations=cfg.orient_iterations, lr=cfg.lr,
                      lr_final=cfg.lr * 0.1)
        # Both hypotheses go through the body stage: a torso seen from the side fits either way round,
        # and only the limbs tell which one is right.
        params = {"global_orient": global_orient.detach().clone().requires_grad_(True),
                  "body_pose": torch.zeros(2 * b, 21, 3, dtype=dtype, device=device, requires_grad=True),
                  "betas": torch.zeros(2 * b, nb, dtype=dtype, device=device, requires_grad=True),
                  "transl": transl.detach().clone().requires_grad_(True)}
        intr2, obs2, w2, scale2 = two(intrinsics.to(dtype)), two(observed), two(weights), two(scale)

        def projected() -> Tensor:
            return project(self.points(params)[:, model_idx], intr2)

        with torch.no_grad():
            initial = reprojection_px(projected(), obs2, w2)

        # -- stage 2: the body, sigma annealed -------------------------------------------------------
        sigmas = sigma_schedule(cfg)
        steps = [cfg.iterations // len(sigmas) + (i < cfg.iterations % len(sigmas)) for i in range(len(sigmas))]
        for sigma, n_steps in zip(sigmas, steps):
            def body_loss(sigma: float = sigma) -> Tensor:
                return smplify_objective(projected(), obs2, w2, scale2, params["body_pose"], params["betas"], cfg,
                                         sigma)

            minimize_adam(list(params.values()), body_loss, iterations=n_steps, lr=cfg.lr,
                          lr_final=cfg.lr * 0.1)
        with torch.no_grad():
            loss = smplify_objective(projected(), obs2, w2, scale2, params["body_pose"], params["betas"], cfg)
            final = reprojection_px(projected(), obs2, w2)
        pick = loss[b:] < loss[:b]
        choose = lambda x: torch.where(pick.reshape(-1, *([1] * (x.dim() - 1))), x[b:], x[:b])  # noqa: E731
        return SmplifyResult(params={k: choose(v.detach()) for k, v in params.items()},
                             reprojection_px=choose(final), initial_reprojection_px=choose(initial), loss=choose(loss))
