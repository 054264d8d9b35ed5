"""Priors on SMPL / SMPL-X bodies: joint limits, a pose prior, a shape prior, and a sampler of plausible
poses built from the same limits.

Every prior is a small pure function returning one value per sample (``[...]``), so that objectives add
them with their weights. Rotations are axis-angle in the models' rest frame (SMPL and SMPL-X share it: y
up, x towards the person's left, z forward); the limits are boxes on the three axis-angle components of
each body joint, a cheap stand-in for anatomical ranges that is exact for one-axis joints (knees,
elbows) and conservative elsewhere.

Joint limits (radians, per component ``x, y, z``) of the 21 body joints 1..21 (SMPL-X ``body_pose``
order; SMPL's ``body_pose`` has the same first 21 joints):

========================  =================  =================  =================
joint                     x                  y                  z
========================  =================  =================  =================
hips (1 left, 2 right)    -2.2 .. 0.6        -0.9 .. 0.9        -0.5 .. 1.1 (left; right mirrored)
spine1/2/3 (3, 6, 9)      -0.4 .. 0.6        -0.5 .. 0.5        -0.4 .. 0.4
knees (4, 5)              0.0 .. 2.5         -0.2 .. 0.2        -0.15 .. 0.15
ankles (7, 8)             -0.7 .. 0.9        -0.5 .. 0.5        -0.4 .. 0.4
feet (10, 11)             -0.4 .. 0.6        -0.25 .. 0.25      -0.25 .. 0.25
neck (12)                 -0.6 .. 0.8        -0.8 .. 0.8        -0.5 .. 0.5
collars (13, 14)          -0.3 .. 0.3        -0.4 .. 0.4        -0.3 .. 0.5 (left; right mirrored)
head (15)                 -0.6 .. 0.7        -0.8 .. 0.8        -0.5 .. 0.5
shoulders (16, 17)        -1.2 .. 1.2        -1.6 .. 0.9        -1.6 .. 1.3 (left; right mirrored)
elbows (18, 19)           -1.0 .. 1.0        -2.6 .. 0.0        -0.2 .. 0.2 (left; right mirrored)
wrists (20, 21)           -1.2 .. 1.2        -0.6 .. 0.6        -1.2 .. 1.2
========================  =================  =================  =================

"Mirrored" means the right joint's range of ``y`` and ``z`` is the left one negated (a reflection through
the x = 0 plane keeps axis-angle ``x`` and negates ``y`` and ``z``).
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_BODY_JOINTS = 21
"""Body joints 1..21 (pelvis excluded): SMPL-X ``body_pose``; SMPL's ``body_pose[:21]``."""

# left-side / centre limits: joint index (1-based, SMPL order) -> ((x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi))
_LEFT_LIMITS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((-2.2, 0.6), (-0.9, 0.9), (-0.5, 1.1)),
    3: ((-0.4, 0.6), (-0.5, 0.5), (-0.4, 0.4)),
    4: ((0.0, 2.5), (-0.2, 0.2), (-0.15, 0.15)),
    6: ((-0.4, 0.6), (-0.5, 0.5), (-0.4, 0.4)),
    7: ((-0.7, 0.9), (-0.5, 0.5), (-0.4, 0.4)),
    9: ((-0.4, 0.6), (-0.5, 0.5), (-0.4, 0.4)),
    10: ((-0.4, 0.6), (-0.25, 0.25), (-0.25, 0.25)),
    12: ((-0.6, 0.8), (-0.8, 0.8), (-0.5, 0.5)),
    13: ((-0.3, 0.3), (-0.4, 0.4), (-0.3, 0.5)),
    15: ((-0.6, 0.7), (-0.8, 0.8), (-0.5, 0.5)),
    16: ((-1.2, 1.2), (-1.6, 0.9), (-1.6, 1.3)),
    18: ((-1.0, 1.0), (-2.6, 0.0), (-0.2, 0.2)),
    20: ((-1.2, 1.2), (-0.6, 0.6), (-1.2, 1.2)),
}
_RIGHT_OF = {2: 1, 5: 4, 8: 7, 11: 10, 14: 13, 17: 16, 19: 18, 21: 20}


def _mirror(limits: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    (xl, xh), (yl, yh), (zl, zh) = limits
    return (xl, xh), (-yh, -yl), (-zh, -zl)


def joint_limits(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Lower and upper axis-angle limits of the 21 body joints, each ``[21, 3]`` (see the module table)."""
    rows = []
    for joint in range(1, NUM_BODY_JOINTS + 1):
        rows.append(_mirror(_LEFT_LIMITS[_RIGHT_OF[joint]]) if joint in _RIGHT_OF else _LEFT_LIMITS[joint])
    limits = torch.tensor(rows, dtype=dtype, device=device)  # [21, 3, 2]
    return limits[..., 0], limits[..., 1]


def _check_body_pose(body_pose: Tensor) -> None:
    if body_pose.dim() < 2 or tuple(body_pose.shape[-2:]) != (NUM_BODY_JOINTS, 3):
        raise ValueError(f"body_pose: expected shape [..., {NUM_BODY_JOINTS}, 3], got {list(body_pose.shape)}")


def joint_limit_penalty(body_pose: Tensor) -> Tensor:
    """Sum of squared excursions (rad^2) of the axis-angle components outside :func:`joint_limits`.

    body_pose  # [..., 21, 3]
    returns    # [...]
    """
    _check_body_pose(body_pose)
    lo, hi = joint_limits(body_pose.dtype, body_pose.device)
    below = torch.relu(lo - body_pose)
    above = torch.relu(body_pose - hi)
    return (below * below + above * above).sum((-2, -1))


def pose_prior(body_pose: Tensor) -> Tensor:
    """Quadratic pose prior: squared distance (rad^2) of each joint's rotation from the middle of its range,
    scaled per component by the half-width of the range (so a wide range costs less to use).

    body_pose  # [..., 21, 3]
    returns    # [...]
    """
    _check_body_pose(body_pose)
    lo, hi = joint_limits(body_pose.dtype, body_pose.device)
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    z = (body_pose - centre) / half.clamp(min=0.1)
    return (z * z).sum((-2, -1))


def shape_prior(betas: Tensor) -> Tensor:
    """Squared norm of the shape coefficients (unit Gaussian prior of SMPL-family shape spaces).

    betas    # [..., S]
    returns  # [...]
    """
    return (betas * betas).sum(-1)


def sample_body_pose(batch: int, generator: torch.Generator, *, scale: float = 0.6,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Random plausible body poses ``[batch, 21, 3]``: each component uniform in its joint limit range
    scaled by ``scale`` (every range contains zero, so the scaled range stays inside the limits). Uses only
    ``generator``, so a seed gives the same poses on every machine."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    lo, hi = joint_limits(dtype)
    u = torch.rand(batch, NUM_BODY_JOINTS, 3, generator=generator, dtype=dtype)
    return (lo + u * (hi - lo)) * scale


def sample_rotvec(batch: int, generator: torch.Generator, *, max_angle: float = torch.pi,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Random rotations ``[batch, 3]`` (axis-angle): uniform axis, angle uniform in ``[0, max_angle]``."""
    axis = torch.randn(batch, 3, generator=generator, dtype=dtype)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    angle = torch.rand(batch, 1, generator=generator, dtype=dtype) * max_angle
    return axis * angle
