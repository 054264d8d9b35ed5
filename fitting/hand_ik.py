"""Hand inverse kinematics: MANO pose, wrist orientation, shape and scale from 21 3D hand landmarks.

The landmarks are in MediaPipe's hand order (wrist; thumb CMC, MCP, IP, tip; index, middle, ring and
pinky MCP, PIP, DIP, tip). MANO's counterparts are its 16 joints plus five fingertip vertices
(:data:`MANO_TIP_VERTICES`, the ids HaMeR and 4D-Humans use), see :data:`MANO_TO_MEDIAPIPE`.

The model of the landmarks ``y`` (metres, any frame) is a **similarity-transformed right MANO hand**::

    y_k = s * K_k(R, theta, beta) + t

with ``K`` the 21 keypoints of MANO posed with wrist rotation ``R`` (about MANO's root joint) and finger
rotations ``theta`` (15 x axis-angle, relative to the flat hand), shape ``beta``, scale ``s`` (the
record's ``hand_scale``) and translation ``t``.

Solving (:func:`solve_hand_ik`), batched over hands:

1. **Analytic initialisation** (:func:`analytic_hand_pose`): the wrist and the five finger-root joints are
   rigid in the wrist frame, so a similarity Procrustes fit of those six points gives ``R``, ``s``, ``t``;
   then, level by level down the fingers, each joint's rotation is the smallest rotation that turns its
   rest bone (joint to child joint or fingertip) onto the landmarks' bone direction. That rotation has
   no twist about the bone, and it is exact for joints that bend without twisting.
2. **Levenberg-Marquardt** (:func:`least_squares`, fixed iterations) on all of
   ``R, theta, beta, log s, t`` with the data residual ``(s K + t - y) / point_sigma`` and priors:
   ``twist_weight`` on the twist of each joint about its rest bone (unobservable from points, so kept
   near zero), ``pose_weight`` on ``theta`` (towards the flat hand) and ``shape_weight`` on ``beta``.

**Left hands** are mirrored: the landmarks' x is negated, the mirror image (a right hand) is solved with
the right MANO model, and the result is mirrored back, axis-angle ``(x, y, z) -> (x, -y, -z)`` for the
wrist and finger rotations and ``t_x -> -t_x``; the betas are kept. This gives the MANO *left* model's
parameters exactly when the left model is the mirror image of the right one (as in MANO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fitting.solvers import least_squares
from model.body_models import MANO, blend_skinning, pose_feature, skinning_transforms
from model.metrics import similarity_align
from model.rotations import mirror_rotvec, rotation_between, rotmat_to_rotvec, rotvec_to_rotmat

NUM_HAND_LANDMARKS = 21

MANO_TIP_VERTICES: tuple[int, ...] = (745, 317, 444, 556, 673)
"""MANO fingertip vertices: thumb, index, middle, ring, pinky (``model.assets.layouts.MANO_TIPS_COMMON``)."""

MANO_TO_MEDIAPIPE: tuple[int, ...] = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
"""For each MediaPipe hand landmark, its MANO point: an index into the 16 MANO joints (wrist; index,
middle, pinky, ring, thumb 1-3) followed by the 5 fingertips of :data:`MANO_TIP_VERTICES` (16-20)."""

PALM_LANDMARKS: tuple[int, ...] = (0, 1, 5, 9, 13, 17)
"""MediaPipe landmarks rigid in the wrist frame: the wrist and the root joint of each finger."""

_LEVELS: tuple[tuple[int, ...], ...] = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))
"""MANO finger joints by depth below the wrist (root of each finger first)."""
_BONE_CHILD: tuple[int, ...] = (2, 3, 17, 5, 6, 18, 8, 9, 20, 11, 12, 19, 14, 15, 16)
"""For MANO finger joint ``j`` (1..15), the MANO point (joint or tip, as in :data:`MANO_TO_MEDIAPIPE`)
its bone points at: the next joint of the finger, or the fingertip after the third joint."""
_MIRROR = (-1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Small pure functions
# --------------------------------------------------------------------------------------------------


def mirror_points(points: Tensor) -> Tensor:
    """Mirror ``points  # [..., 3]`` through the x = 0 plane (a left hand's landmarks -> a right hand's);
    rotations mirror with :func:`model.rotations.mirror_rotvec`."""
    return points * points.new_tensor(_MIRROR)


def fit_confidence(rmse: Tensor, residual_scale: float) -> Tensor:
    """``exp(-(rmse / residual_scale)^2)`` in (0, 1]: 1 for a perfect fit (``rmse  # [...]``, same unit)."""
    return torch.exp(-((rmse / residual_scale) ** 2))


# --------------------------------------------------------------------------------------------------
# MANO's 21 hand keypoints
# --------------------------------------------------------------------------------------------------


class HandKeypoints(nn.Module):
    """The 21 keypoints of a MANO hand in MediaPipe order, from its joints and five fingertip vertices
    only (the whole mesh is never skinned)."""

    def __init__(self, mano: MANO, tip_vertices: Sequence[int] = MANO_TIP_VERTICES) -> None:
        super().__init__()
        if len(tip_vertices) != 5 or max(tip_vertices) >= mano.num_vertices:
            raise ValueError(f"tip_vertices: expected 5 vertex ids below {mano.num_vertices}, got {list(tip_vertices)}")
        self.mano = mano
        cols = torch.tensor([3 * v + c for v in tip_vertices for c in range(3)])
        self.register_buffer("tip_template", mano.v_template[list(tip_vertices)].clone())  # [5, 3]
        self.register_buffer("tip_shapedirs", mano.shapedirs[:, cols].clone())  # [S, 15]
        self.register_buffer("tip_posedirs", mano.posedirs[:, cols].clone())  # [P, 15]
        self.register_buffer("tip_weights", mano.lbs_weights[list(tip_vertices)].clone())  # [5, J]
        self.register_buffer("order", torch.tensor(MANO_TO_MEDIAPIPE))

    @property
    def num_betas(self) -> int:
        return self.tip_shapedirs.shape[0]

    def forward(
        self,
        betas: Tensor,  # [N, S]
        rotmats: Tensor,  # [N, 16, 3, 3] wrist rotation (about MANO's root joint), then finger joints
    ) -> Tensor:
        """Keypoints ``[N, 21, 3]`` (MANO frame, metres, MediaPipe order)."""
        rest = self.mano.rest_joints(betas)
        world_rot, joints = self.mano.tree.chain(rotmats, rest)
        transforms = skinning_transforms(world_rot, joints, rest)
        tips_rest = (self.tip_template.reshape(-1) + betas @ self.tip_shapedirs
                     + pose_feature(rotmats) @ self.tip_posedirs).reshape(-1, 5, 3)
        tips = blend_skinning(tips_rest, self.tip_weights, transforms)
        return torch.cat([joints, tips], dim=1)[:, self.order]

    def rest(self) -> Tensor:
        """Keypoints of the mean-shape flat hand, ``[21, 3]``."""
        eye = torch.eye(3, dtype=self.tip_template.dtype, device=self.tip_template.device)
        return self(self.tip_template.new_zeros(1, self.num_betas), eye.expand(1, 16, 3, 3))[0]

    def rest_bones(self) -> Tensor:
        """Unit rest bone directions ``[15, 3]`` of the finger joints (joint to child), mean shape."""
        rest = self.rest()
        mp_of = {m: i for i, m in enumerate(MANO_TO_MEDIAPIPE)}
        joints = [mp_of[j] for j in range(1, 16)]
        children = [mp_of[c] for c in _BONE_CHILD]
        bones = rest[children] - rest[joints]
        return bones / bones.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandIkOptions:
    """Weights and budget of :func:`solve_hand_ik`."""

    iterations: int = 3
    """Levenberg-Marquardt iterations after the analytic initialisation."""
    point_sigma: float = 0.005
    """Landmark error (metres) that costs as much as one unit of prior."""
    twist_weight: float = 1.0
    """Weight of the squared twist (rad^2) of each finger joint about its rest bone."""
    pose_weight: float = 0.02
    """Weight of the squared finger rotations (rad^2), towards the flat hand."""
    shape_weight: float = 1.0
    """Weight of the squared betas."""
    fit_shape: bool = True
    """Fit the betas (else they stay zero and only ``s`` fits the hand's size)."""
    damping: float = 1e-3
    """Initial Levenberg-Marquardt damping."""

    def __post_init__(self) -> None:
        weights = (self.twist_weight, self.pose_weight, self.shape_weight)
        if self.iterations < 0 or self.point_sigma <= 0 or min(weights) < 0:
            raise ValueError(f"HandIkOptions: iterations and weights must be >= 0 and point_sigma > 0, got {self}")


@dataclass(frozen=True)
class HandIkResult:
    """MANO parameters of a batch of hands (``N`` hands)."""

    global_orient: Tensor
    """[N, 3] wrist axis-angle (about MANO's root joint), in the landmarks' frame."""
    hand_pose: Tensor
    """[N, 15, 3] finger axis-angle relative to the flat hand, MANO / SMPL-X joint order."""
    betas: Tensor
    """[N, S] MANO shape."""
    scale: Tensor
    """[N] scale ``s`` of the MANO hand."""
    transl: Tensor
    """[N, 3] translation ``t`` (metres, landmarks' frame)."""
    keypoints: Tensor
    """[N, 21, 3] fitted keypoints ``s K + t`` in the landmarks' frame (MediaPipe order)."""
    rmse: Tensor
    """[N] root-mean-square landmark error (metres)."""


def analytic_hand_pose(layer: HandKeypoints, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-form initial fit of right hands (see the module docstring, step 1).

    target   # [N, 21, 3] landmarks (MediaPipe order)
    returns  # wrist rotation [N, 3, 3], finger rotations [N, 15, 3] (axis-angle), scale [N], translation [N, 3]
    """
    n = target.shape[0]
    rest = layer.rest()  # [21, 3]
    palm = list(PALM_LANDMARKS)
    rot, scale, _ = similarity_align(rest[palm].expand(n, -1, -1), target[:, palm])
    mp_of = {m: i for i, m in enumerate(MANO_TO_MEDIAPIPE)}
    world = {0: rot}
    local = target.new_zeros(n, 16, 3)
    for level in _LEVELS:
        for j in level:
            parent = layer.mano.parents[j]
            child = _BONE_CHILD[j - 1]
            bone_rest = rest[mp_of[child]] - rest[mp_of[j]]
            bone_target = target[:, mp_of[child]] - target[:, mp_of[j]]
            in_parent = (world[parent].transpose(1, 2) @ bone_target[..., None])[..., 0]
            local[:, j] = rotation_between(bone_rest.expand_as(in_parent), in_parent)
            world[j] = world[parent] @ rotvec_to_rotmat(local[:, j])
    rotmats = torch.cat([rot[:, None], rotvec_to_rotmat(local[:, 1:])], dim=1)
    posed = layer(target.new_zeros(n, layer.num_betas), rotmats)
    shift = (target - scale[:, None, None] * posed)[:, palm].mean(1)
    return rot, local[:, 1:], scale, shift


def solve_right_hand_ik(layer: HandKeypoints, target: Tensor, options: HandIkOptions = HandIkOptions()) -> HandIkResult:
    """Fit right MANO hands to landmarks ``target  # [N, 21, 3]`` (metres, MediaPipe order)."""
    _check_target(target, layer)
    n = target.shape[0]
    rot0, pose0, scale0, shift0 = analytic_hand_pose(layer, target)
    bones = layer.rest_bones()  # [15, 3]
    num_betas = layer.num_betas
    w_twist, w_pose, w_shape = (options.twist_weight ** 0.5, options.pose_weight ** 0.5, options.shape_weight ** 0.5)

    names, sizes = ["delta", "pose", "log_scale", "shift", "betas"], [3, 45, 1, 3, num_betas]
    if not options.fit_shape:
        names, sizes = names[:-1], sizes[:-1]
    zero_betas = target.new_zeros(n, num_betas)

    def unpack(x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p = dict(zip(names, torch.split(x, sizes, dim=1)))
        wrist = rotvec_to_rotmat(p["delta"]) @ rot0
        rotmats = torch.cat([wrist[:, None], rotvec_to_rotmat(p["pose"].reshape(-1, 15, 3))], 1)
        scale = torch.exp(p["log_scale"])[:, :, None]
        fitted = scale * layer(p.get("betas", zero_betas), rotmats) + p["shift"][:, None]
        return fitted, p

    def residuals(x: Tensor) -> Tensor:
        fitted, p = unpack(x)
        pose = p["pose"].reshape(-1, 15, 3)
        terms = [(fitted - target).reshape(n, -1) / options.point_sigma,
                 (pose * bones).sum(-1) * w_twist, p["pose"] * w_pose]
        if options.fit_shape:
            terms.append(p["betas"] * w_shape)
        return torch.cat(terms, dim=1)

    start = {"delta": torch.zeros_like(shift0), "pose": pose0.reshape(n, -1), "log_scale": torch.log(scale0)[:, None],
             "shift": shift0, "betas": zero_betas}
    x, _ = least_squares(residuals, torch.cat([start[k] for k in names], 1), iterations=options.iterations,
                         damping=options.damping)
    with torch.no_grad():
        fitted, p = unpack(x)
        rmse = (fitted - target).square().sum(-1).mean(-1).sqrt()
        orient = rotmat_to_rotvec(rotvec_to_rotmat(p["delta"]) @ rot0)
    return HandIkResult(orient, p["pose"].reshape(n, 15, 3), p.get("betas", zero_betas),
                        torch.exp(p["log_scale"][:, 0]), p["shift"], fitted, rmse)


def solve_hand_ik(
    layer: HandKeypoints,
    target: Tensor,  # [N, 21, 3] landmarks, metres, MediaPipe order
    is_left: Tensor,  # [N] bool: the hand is a left hand
    options: HandIkOptions = HandIkOptions(),
) -> HandIkResult:
    """Fit MANO hands of either side with the right model ``layer``; left hands are mirrored (module
    docstring) and come back as the MANO left model's parameters."""
    _check_target(target, layer)
    if is_left.shape != target.shape[:1] or is_left.dtype != torch.bool:
        raise ValueError(f"is_left: expected a bool tensor of shape [{target.shape[0]}], got {is_left.dtype} "
                         f"{list(is_left.shape)}")
    flip = is_left[:, None, None]
    right = solve_right_hand_ik(layer, torch.where(flip, mirror_points(target), target), options)
    return HandIkResult(
        global_orient=torch.where(is_left[:, None], mirror_rotvec(right.global_orient), right.global_orient),
        hand_pose=torch.where(flip, mirror_rotvec(right.hand_pose), right.hand_pose),
        betas=right.betas,
        scale=right.scale,
        transl=torch.where(is_left[:, None], mirror_points(right.transl), right.transl),
        keypoints=torch.where(flip, mirror_points(right.keypoints), right.keypoints),
        rmse=right.rmse,
    )


PALM_TRIANGLE: tuple[int, ...] = (0, 5, 17)
"""MediaPipe landmarks a pose-only hand is oriented from: wrist, index and pinky knuckles (BlazePose's
wrist, index and pinky points stand for them)."""


def orient_hand_from_palm(
    layer: HandKeypoints,
    palm: Tensor,  # [N, 3, 3] wrist, index knuckle, pinky knuckle (PALM_TRIANGLE), any units, x right, y down
    is_left: Tensor,  # [N] bool
) -> Tensor:
    """MANO wrist rotations ``[N, 3]`` (axis-angle, the frame of ``palm``) turning the mean-shape hand's
    wrist and index and pinky knuckles onto ``palm`` in the least-squares sense (a similarity fit: only
    the rotation is kept). Left hands are mirrored as in :func:`solve_hand_ik` and come back in the MANO
    left model's convention. The three points fix the palm plane, so the result is only as good as
    their depths: a hand seen edge-on, or with the three points nearly collinear, is poorly oriented."""
    if palm.dim() != 3 or palm.shape[1:] != (3, 3):
        raise ValueError(f"palm: expected [N, 3, 3] (wrist, index and pinky knuckles), got {list(palm.shape)}")
    if is_left.shape != palm.shape[:1] or is_left.dtype != torch.bool:
        raise ValueError(f"is_left: expected a bool tensor of shape [{palm.shape[0]}], got {is_left.dtype} "
                         f"{list(is_left.shape)}")
    if not torch.isfinite(palm).all():
        raise ValueError("palm: points contain NaN or infinity")
    target = torch.where(is_left[:, None, None], mirror_points(palm), palm).to(layer.tip_template)
    source = layer.rest()[list(PALM_TRIANGLE)].expand_as(target)
    rot, _, _ = similarity_align(source, target)
    orient = rotmat_to_rotvec(rot)
    return torch.where(is_left[:, None], mirror_rotvec(orient), orient)


def _check_target(target: Tensor, layer: HandKeypoints) -> None:
    if target.dim() != 3 or target.shape[1:] != (NUM_HAND_LANDMARKS, 3):
        raise ValueError(f"target: expected hand landmarks [N, {NUM_HAND_LANDMARKS}, 3], got {list(target.shape)}")
    if target.dtype != layer.tip_template.dtype or target.device != layer.tip_template.device:
        raise ValueError(f"target: {target.dtype} on {target.device}, but the MANO model is "
                         f"{layer.tip_template.dtype} on {layer.tip_template.device}; convert one of them")
    if not torch.isfinite(target).all():
        raise ValueError("target: hand landmarks contain NaN or infinity")
