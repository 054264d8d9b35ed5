"""Adaptive wrist integration (PyMAF-X §3.2) and the hand visibility gate.

A hand annotator gives each hand's global orientation ``R_hand`` (camera frame); the body gives the
elbow's world rotation ``G_elbow``. Pasting the hand onto the body ("copy-paste") sets the wrist's local
rotation to ``R_wrist = G_elbow^T R_hand``. The forearm's twist about its own axis is close to invisible
in body keypoints, so a wrong body elbow leaves that error in ``R_wrist`` as an implausible wrist twist.

**Swing-twist** (:func:`swing_twist`): ``R_wrist = T(a, theta) S`` where ``a`` is the unit elbow->wrist
axis in the elbow's frame (the rest-pose bone direction), ``T(a, theta)`` a rotation by the signed angle
``theta in [-pi, pi]`` about ``a`` (right-hand rule), and ``S`` a swing whose axis is perpendicular to
``a``. With the quaternion ``q = (v, w)`` of ``R_wrist`` (``w >= 0``) the twist is the normalised
``(a (v . a), w)``, so ``theta = 2 atan2(v . a, w)``.

**Adaptive integration** (:func:`integrate_wrist`): the twist beyond ``+-max_twist`` (90 degrees by
default), ``e = theta - clamp(theta)``, moves into the elbow: ``R_elbow' = R_elbow T(a, e)`` and
``R_wrist' = T(a, -e) R_wrist = T(a, clamp(theta)) S``. Because ``T(a, e)`` spins the forearm about its
own axis, the wrist joint stays where it was, and the hand's global orientation is unchanged exactly:
``G_elbow T(a, e) T(a, -e) R_wrist = G_elbow R_wrist = R_hand``. ``max_twist=None`` is copy-paste.

**Visibility gate** (:func:`hand_gate`): a hand that was not detected, or whose confidence is under the
gate, is not integrated: the body keeps its own wrist and the hand gets the mean hand pose (flagged
``LEFT_HAND_GATED`` / ``RIGHT_HAND_GATED``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from model.rotations import rotmat_to_quat, rotvec_to_rotmat


def _check(name: str, tensor: Tensor, trailing: tuple[int, ...]) -> None:
    if tensor.dim() < len(trailing) or tuple(tensor.shape[tensor.dim() - len(trailing):]) != trailing:
        shape = ", ".join(["..."] + [str(d) for d in trailing])
        raise ValueError(f"{name}: expected shape [{shape}], got {list(tensor.shape)}")


def twist_rotmat(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotations by ``angle`` (rad, right-hand rule) about unit ``axis``.

    axis     # [..., 3] unit vectors
    angle    # [...]
    returns  # [..., 3, 3]
    """
    _check("axis", axis, (3,))
    return rotvec_to_rotmat(axis * angle[..., None])


def swing_twist(rotmat: Tensor, axis: Tensor) -> tuple[Tensor, Tensor]:
    """Split rotations into ``rotmat = T(axis, twist) @ swing``.

    rotmat   # [..., 3, 3]
    axis     # [..., 3] unit twist axis, in the frame ``rotmat`` maps into (its parent's)
    returns  (swing [..., 3, 3] with its rotation axis perpendicular to ``axis``,
              twist [...] signed angle in [-pi, pi] rad)
    """
    _check("rotmat", rotmat, (3, 3))
    _check("axis", axis, (3,))
    quat = rotmat_to_quat(rotmat)  # (x, y, z, w), w >= 0
    along = (quat[..., :3] * axis).sum(-1)
    twist = 2.0 * torch.atan2(along, quat[..., 3])
    swing = twist_rotmat(axis, -twist) @ rotmat
    return swing, twist


@dataclass(frozen=True)
class WristIntegration:
    """Result of :func:`integrate_wrist`; every tensor has the inputs' leading dims ``...``."""

    elbow_local: Tensor
    """[..., 3, 3] new local rotation of the elbow (the old one times the twist moved into it)."""
    wrist_local: Tensor
    """[..., 3, 3] new local rotation of the wrist."""
    twist: Tensor
    """[...] signed twist of the pasted wrist rotation before clamping (rad)."""
    clamped: Tensor
    """[...] bool: the twist exceeded ``max_twist`` and its excess went into the elbow."""


def integrate_wrist(
    elbow_world: Tensor,  # [..., 3, 3] world rotation of the elbow joint (body chain)
    elbow_local: Tensor,  # [..., 3, 3] local rotation of the elbow (relative to the shoulder)
    hand_world: Tensor,  # [..., 3, 3] global orientation of the hand (same world frame)
    axis: Tensor,  # [..., 3] unit elbow->wrist axis in the elbow's frame
    max_twist: float | None = math.pi / 2,
) -> WristIntegration:
    """Paste ``hand_world`` onto the body's wrist, moving wrist twist beyond ``+-max_twist`` (rad) into
    the elbow (see the module docstring); ``max_twist=None`` pastes without clamping (copy-paste).

    The hand's world orientation ``elbow_world' @ wrist_local`` equals ``hand_world`` exactly (up to
    rounding) and the wrist joint does not move.
    """
    for name, value in (("elbow_world", elbow_world), ("elbow_local", elbow_local), ("hand_world", hand_world)):
        _check(name, value, (3, 3))
    _check("axis", axis, (3,))
    if max_twist is not None and not 0.0 <= max_twist <= math.pi:
        raise ValueError(f"max_twist must be in [0, pi] rad (or None for copy-paste), got {max_twist}")
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    wrist = elbow_world.transpose(-1, -2) @ hand_world
    swing, twist = swing_twist(wrist, axis)
    if max_twist is None:
        return WristIntegration(elbow_local, wrist, twist, torch.zeros_like(twist, dtype=torch.bool))
    kept = twist.clamp(-max_twist, max_twist)
    excess = twist - kept
    return WristIntegration(
        elbow_local=elbow_local @ twist_rotmat(axis, excess),
        wrist_local=twist_rotmat(axis, kept) @ swing,
        twist=twist,
        clamped=excess != 0,
    )


def hand_gate(has_hand: Tensor, confidence: Tensor, threshold: float) -> Tensor:
    """Hands that are integrated: detected and at least ``threshold`` confident.

    has_hand    # [..., 2] bool ([..., 0] left, [..., 1] right)
    confidence  # [..., 2] in [0, 1]
    returns     # [..., 2] bool; False means gated (body wrist kept, mean hand pose)
    """
    if has_hand.shape != confidence.shape:
        raise ValueError(f"has_hand {list(has_hand.shape)} and confidence {list(confidence.shape)} must have one shape")
    return has_hand.bool() & (confidence >= threshold)
