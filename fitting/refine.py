"""Batched per-part refinement of EHM fits, after GUAVA's EHM tracker (two stages), with PyMAF-X wrist
integration and identity sharing. ``docs/refinement.md`` lists every term, its weight and why.

Order of work in :meth:`Refiner.refine` (all samples of a batch at once, on one device):

1. **Hands**: the visibility gate, then the hand's global orientation pasted onto the body wrist by
   adaptive integration (:mod:`fitting.wrist`); gated hands keep the body wrist and get the mean hand pose.
2. **Face gate**: a face under the gate keeps FLAME's neutral expression, jaw and eyes.
3. **FLAME stage**: FLAME (shape, expression, jaw, eyes, eyelids) and a rigid head pose in the camera
   frame, started from where the body puts the head, fitted to the 68 face keypoints, the MediaPipe face
   landmarks (through FLAME's MediaPipe embedding) and the irises, with priors.
4. **EHM stage**: SMPL-X pose, root orientation, translation, shape and the head / hand scales of the
   assembled EHM (:class:`model.ehm.EHM`) fitted to the FLAME head (vertices), the MANO hands (wrist-relative
   vertices), the confidence-gated whole-body keypoints, with pose, limit, shape and scale priors and
   terms that keep the pose and depth near the initialisation.

Parameters are optimised as scaled offsets from their initial values, ``value = init + step * delta``
(rotations of the root and of the head as ``exp(step * delta) R_init``), so one learning rate moves every
block by about its ``step`` per iteration. Shape (SMPL-X betas, FLAME shape) and the head / hand scales are
one parameter per identity: rows of one video track share them. Budgets are fixed, nothing is random:
the same inputs give the same outputs on the same device.

The settings are :class:`fitting.refine_config.RefineConfig`. During the solves the objectives run cheap
stand-ins for the full models: :class:`model.ehm_rigid.RigidPartsEHM` in the EHM stage and
:class:`model.partial.LandmarkFLAME` in the FLAME stage.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fitting.camera import project
from fitting.face_fit import IRIS_CENTRES, pupil_vertices
from fitting.objectives import (
    WHOLEBODY_PARTS,
    WHOLEBODY_WEIGHTS,
    confidence_gate,
    ehm_wholebody_points,
    keypoint_box_side,
    mean_square,
    pseudo_huber,
    robust_point_loss,
    trimap_silhouette_loss,
)
from fitting.priors import joint_limit_penalty, pose_prior
from fitting.refine_config import RefineConfig
from fitting.solvers import SOLVERS, seed_everything
from fitting.wrist import hand_gate, integrate_wrist
from model.assets.loaders import load_mean_hand_pose
from model.body_models import SMPLX, BodyModelOutput
from model.ehm import EHM
from model.ehm_rigid import RigidPartsEHM, RigidPartsOutput
from model.partial import LandmarkFLAME
from model.rasterizer import soft_silhouette
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat
from schemas import keypoints as kpl
from schemas.ehm_v1 import QualityFlag

log = logging.getLogger(__name__)

ELBOWS, WRISTS = (18, 19), (20, 21)
"""SMPL-X joints of the left / right elbow and wrist (``body_pose`` rows are ``joint - 1``)."""
TERM_VERTICES = 400
"""About this many head vertices (evenly spaced among the rigid ones) and hand vertices (per hand) enter the
head and hand terms of the EHM stage (GUAVA also uses a vertex subset for its hand term)."""
EHM_PARAMS = (
    "betas", "global_orient", "body_pose", "transl", "mano_hand_pose", "mano_betas", "hand_scale",
    "flame_shape", "flame_expression", "flame_jaw_pose", "flame_eye_pose", "head_scale",
)
"""EHM parameters a refinement needs (``flame_eyelids`` is optional)."""


# --------------------------------------------------------------------------------------------------
# Solving
# --------------------------------------------------------------------------------------------------


class _Block:
    """One optimised parameter per sample, or per identity (``index  # [B]`` picks each sample's row).

    ``init + step * delta``; with ``rotation`` (``init  # [N, 3, 3]``), ``exp(step * delta) @ init`` with
    ``delta  # [N, 3]`` (well conditioned at any angle, unlike adding to an axis-angle vector near pi).
    """

    def __init__(self, init: Tensor, step: float, index: Tensor | None = None, rotation: bool = False) -> None:
        self.init, self.step, self.index, self.rotation = init, step, index, rotation
        shape = init.shape[:-2] + (3,) if rotation else init.shape
        self.delta = torch.zeros(shape, dtype=init.dtype, device=init.device, requires_grad=True)

    def offset(self) -> Tensor:
        """``step * delta`` per sample."""
        off = self.step * self.delta
        return off if self.index is None else off[self.index]

    def value(self) -> Tensor:
        """The parameter per sample (a rotation matrix for rotation blocks)."""
        v = rotvec_to_rotmat(self.step * self.delta) @ self.init if self.rotation else self.init + self.step * self.delta
        return v if self.index is None else v[self.index]


@dataclass
class _Solved:
    """What one stage's solve reports."""

    terms: dict[str, Tensor]
    """Weighted final value of every term, ``[B]``."""
    loss: Tensor
    """[B] final objective."""
    still_falling: Tensor
    """[B] bool: fell by more than the tolerance over the last tenth of the budget."""


def _solve(blocks: Mapping[str, _Block], terms_fn: Callable[[], dict[str, Tensor]], iterations: int,
           config: RefineConfig) -> _Solved:
    """Minimise the sum of ``terms_fn()``'s terms over ``blocks``; report the final terms."""
    history: list[Tensor] = []

    def loss_fn() -> Tensor:
        total = torch.stack(list(terms_fn().values())).sum(0)
        history.append(total.detach())
        return total

    if iterations > 0:
        solver = SOLVERS.get(config.solver.name, "SolverConfig.name")
        solver.minimize([b.delta for b in blocks.values()], loss_fn, iterations, config.solver.options())
    with torch.no_grad():
        terms = {k: v.detach() for k, v in terms_fn().items()}
    loss = torch.stack(list(terms.values())).sum(0)
    if len(history) >= 10:
        before = history[int(0.9 * (len(history) - 1))]
        still_falling = (before - loss) > config.not_converged_tol * loss.abs().clamp(min=1e-8)
    else:
        still_falling = torch.zeros_like(loss, dtype=torch.bool)
    return _Solved(terms, loss, still_falling)


# --------------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------------


def _expect(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(value, Tensor) or tuple(value.shape) != shape:
        got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected shape {list(shape)}, got {got}")


@dataclass
class RefineInputs:
    """One batch of persons to refine; the first dimension of every tensor is the sample ``B``."""

    params: dict[str, Tensor]
    """Initial EHM parameters by :meth:`model.ehm.EHM.forward` name (:data:`EHM_PARAMS`, optionally
    ``flame_eyelids``), camera frame: body from the body annotator, hands and face from theirs."""
    mano_global_orient: Tensor
    """[B, 2, 3] each hand's global orientation (camera frame, axis-angle; [:, 0] left, [:, 1] right)."""
    intrinsics: Tensor
    """[B, 3, 3] pinhole K (image px)."""
    bbox_xyxy: Tensor
    """[B, 4] person box, image px."""
    kp2d: Tensor
    """[B, 133, 3] COCO-WholeBody keypoints (x px, y px, confidence)."""
    mp_face: Tensor
    """[B, 478, 3] MediaPipe face landmarks (x px, y px, z)."""
    has_face: Tensor
    """[B] bool."""
    conf_face: Tensor
    """[B] face confidence."""
    has_hands: Tensor
    """[B, 2] bool."""
    conf_hands: Tensor
    """[B, 2] hand confidences."""
    identity: Tensor | None = None
    """[B] int64 identity of each row (rows of one video track share one); None: every row its own."""
    person_mask: Tensor | None = None
    """[B, M, M] person segmentation in [0, 1] over ``mask_box`` (only for the silhouette term)."""
    mask_box: Tensor | None = None
    """[B, 4] image region (x0, y0, x1, y1) the mask grid covers."""

    def check(self) -> int:
        """Validate every shape; returns ``B``. Raises ``ValueError`` naming the tensor."""
        n = self.intrinsics.shape[0] if isinstance(self.intrinsics, Tensor) and self.intrinsics.dim() else -1
        if n < 1:
            raise ValueError("intrinsics: expected shape [B, 3, 3] with B >= 1")
        missing = [k for k in EHM_PARAMS if k not in self.params]
        if missing:
            raise ValueError(f"params: missing {missing}; give every EHM parameter of the initial fit")
        for name, shape in (("intrinsics", (n, 3, 3)), ("bbox_xyxy", (n, 4)), ("kp2d", (n, kpl.NUM_KEYPOINTS, 3)),
                            ("mp_face", (n, kpl.NUM_FACE_LANDMARKS, 3)), ("has_face", (n,)), ("conf_face", (n,)),
                            ("has_hands", (n, 2)), ("conf_hands", (n, 2)), ("mano_global_orient", (n, 2, 3))):
            _expect(name, getattr(self, name), shape)
        for name, value in self.params.items():
            if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != n:
                raise ValueError(f"params[{name!r}]: expected a tensor with {n} rows")
        if self.identity is not None:
            _expect("identity", self.identity, (n,))
        if (self.person_mask is None) != (self.mask_box is None):
            raise ValueError("person_mask and mask_box go together: give both or neither")
        if self.mask_box is not None:
            _expect("mask_box", self.mask_box, (n, 4))
            if self.person_mask.dim() != 3 or self.person_mask.shape[0] != n:
                raise ValueError(f"person_mask: expected shape [{n}, M, M], got {list(self.person_mask.shape)}")
        side = self.bbox_xyxy[:, 2:] - self.bbox_xyxy[:, :2]
        if not bool((side.max(-1).values > 0).all()):
            raise ValueError("bbox_xyxy: every box needs a positive width or height")
        return n

    def to(self, device: torch.device, dtype: torch.dtype) -> RefineInputs:
        """A copy on ``device`` with floating tensors in ``dtype``."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

        return dataclasses.replace(self, params={k: move(v) for k, v in self.params.items()},
                                   **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)
                                      if f.name != "params"})


@dataclass
class RefineResult:
    """Refined parameters and what the refinement reports per sample."""

    params: dict[str, Tensor]
    """Refined EHM parameters (the same names as :attr:`RefineInputs.params`)."""
    mano_global_orient: Tensor
    """[B, 2, 3] each hand's global orientation on the refined body (camera frame)."""
    flags: Tensor
    """[B] int32 :class:`schemas.ehm_v1.QualityFlag` bits set by the refinement."""
    loss: Tensor
    """[B] final objective: FLAME stage plus EHM stage."""
    terms: dict[str, Tensor]
    """Weighted final value of every term, ``"flame/<term>"`` and ``"ehm/<term>"`` -> ``[B]``."""
    wrist_twist: Tensor
    """[B, 2] signed twist of the pasted wrist rotations before clamping, rad (0 for gated hands)."""
    hands_integrated: Tensor
    """[B, 2] bool: hand passed the gate and was integrated."""
    face_fitted: Tensor
    """[B] bool: face passed the gate and went through the FLAME stage."""


# --------------------------------------------------------------------------------------------------
# The refiner
# --------------------------------------------------------------------------------------------------


def _group_mean(values: Tensor, index: Tensor, count: int, weight: Tensor | None = None) -> Tensor:
    """Per-group mean ``[U, ...]`` of ``values  # [B, ...]`` (weighted rows; a group with no weight uses all)."""
    w = torch.ones(values.shape[0], dtype=values.dtype, device=values.device) if weight is None else weight.to(values)
    shape = (-1,) + (1,) * (values.dim() - 1)
    total = torch.zeros((count,) + values.shape[1:], dtype=values.dtype, device=values.device)
    weighted = total.index_add(0, index, values * w.reshape(shape))
    mass = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, index, w)
    plain = total.index_add(0, index, values) / torch.bincount(index, minlength=count).clamp(min=1).to(values).reshape(shape)
    return torch.where(mass.reshape(shape) > 0, weighted / mass.clamp(min=1e-12).reshape(shape), plain)


def _side_or(side: Tensor, fallback: Tensor) -> Tensor:
    return torch.where(torch.isnan(side), fallback, side)


class Refiner:
    """Batched two-stage refinement on one device (see the module docstring)."""

    def __init__(self, ehm: EHM, smplx: SMPLX, mean_hand_pose: Tensor, config: RefineConfig | None = None) -> None:
        """``ehm``: the assembled model (its dtype and device are the refinement's); ``smplx``: the SMPL-X it
        was assembled from (``num_expression=0``); ``mean_hand_pose  # [2, 15, 3]``."""
        self.config = config or RefineConfig()
        self.ehm = ehm
        self.mean_hand_pose = mean_hand_pose.to(ehm.body_template)
        _expect("mean_hand_pose", self.mean_hand_pose, (2, 15, 3))
        head_weight = ehm.lbs_weights[ehm.head_vertex_ids, SMPLX.HEAD]
        self.head_rigid = torch.nonzero(head_weight > 0.99)[:, 0]  # FLAME vertex ids moved by the head alone
        self.hand_ids = (ehm.left_hand_vertex_ids, ehm.right_hand_vertex_ids)
        pupils = pupil_vertices(ehm.flame)
        if pupils is None:
            raise ValueError("FLAME: no vertex is skinned to an eye joint; the model has no eyeballs for the iris term")
        self.pupils = torch.tensor(pupils, dtype=torch.long, device=ehm.body_template.device)
        self.head_term = self.head_rigid[:: max(1, len(self.head_rigid) // TERM_VERTICES)]
        self.hand_term = torch.arange(0, ehm.mano_left.num_vertices, max(1, ehm.mano_left.num_vertices // TERM_VERTICES),
                                      device=self.head_rigid.device)
        self.parts = RigidPartsEHM(ehm, smplx.to(ehm.body_template), self.head_term, self.hand_term)
        self.face = LandmarkFLAME(ehm.flame, self.pupils)

    @classmethod
    def from_dir(cls, body_models: str | Path, config: RefineConfig | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Refiner:
        """EHM (OpenCV camera frame), its SMPL-X and the mean hand poses from a body-model folder."""
        ehm = EHM.from_dir(body_models, camera_frame="opencv").to(device=device, dtype=dtype)
        smplx = SMPLX.from_dir(body_models, num_betas=ehm.num_betas, num_expression=0)
        return cls(ehm, smplx, torch.as_tensor(load_mean_hand_pose(body_models)), config)

    @property
    def device(self) -> torch.device:
        return self.ehm.body_template.device

    @property
    def dtype(self) -> torch.dtype:
        return self.ehm.body_template.dtype

    def _forward(self, params: Mapping[str, Tensor]) -> BodyModelOutput:
        given = {k: v for k, v in params.items() if k != "flame_eyelids" or self.ehm.flame.has_eyelids}
        return self.ehm(**given)

    # -- 1. hands -----------------------------------------------------------------------------------

    def integrate_hands(self, params: dict[str, Tensor], body: BodyModelOutput, mano_global_orient: Tensor,
                        visible: Tensor) -> tuple[Tensor, Tensor]:
        """Wrist integration of the visible hands and the mean pose for gated ones, in place on ``params``.

        body                # EHM output of ``params`` (joint rotations and positions)
        mano_global_orient  # [B, 2, 3]
        visible             # [B, 2] bool, from :func:`fitting.wrist.hand_gate`
        Returns the twists ``[B, 2]`` (rad) and whether each was clamped ``[B, 2]``.
        """
        cfg = self.config
        max_twist = math.radians(cfg.max_twist_deg) if cfg.wrist == "adaptive" else None
        pose = params["body_pose"].clone()
        twists, clamped = [], []
        for side, (elbow, wrist) in enumerate(zip(ELBOWS, WRISTS)):
            elbow_world = body.joint_rotations[:, elbow]
            bone = body.joints[:, wrist] - body.joints[:, elbow]
            axis = (elbow_world.transpose(-1, -2) @ bone[..., None])[..., 0]  # in the elbow's frame
            res = integrate_wrist(elbow_world, rotvec_to_rotmat(pose[:, elbow - 1]),
                                  rotvec_to_rotmat(mano_global_orient[:, side]), axis, max_twist)
            keep = visible[:, side, None]
            pose[:, elbow - 1] = torch.where(keep, rotmat_to_rotvec(res.elbow_local), pose[:, elbow - 1])
            pose[:, wrist - 1] = torch.where(keep, rotmat_to_rotvec(res.wrist_local), pose[:, wrist - 1])
            twists.append(torch.where(visible[:, side], res.twist, torch.zeros_like(res.twist)))
            clamped.append(res.clamped & visible[:, side])
        params["body_pose"] = pose
        hand_pose = params["mano_hand_pose"]
        params["mano_hand_pose"] = torch.where(visible[..., None, None], hand_pose, self.mean_hand_pose.expand_as(hand_pose))
        return torch.stack(twists, 1), torch.stack(clamped, 1)

    # -- 3. FLAME stage -----------------------------------------------------------------------------

    def _flame_stage(self, params: dict[str, Tensor], inp: RefineInputs, body: BodyModelOutput, face_ok: Tensor,
                     identity: Tensor, count: int) -> tuple[_Solved, Tensor, Tensor]:
        """Fit FLAME and the head pose; updates the FLAME entries of ``params`` in place.

        Returns the solve report, the head vertices :class:`model.ehm_rigid.RigidPartsEHM` uses (camera frame, ``[B, K, 3]``)
        and their eye midpoint ``[B, 3]``: the EHM stage's head target."""
        cfg, flame = self.config.flame, self.ehm.flame
        steps = cfg.steps
        kp = inp.kp2d[:, WHOLEBODY_PARTS["face"]]
        kp_weight = confidence_gate(kp[..., 2], cfg.keypoint_threshold) * face_ok[:, None]
        mp_ids = flame.mediapipe_landmark_indices
        mp_target, iris_target = inp.mp_face[:, mp_ids, :2], inp.mp_face[:, list(IRIS_CENTRES), :2]
        iris_weight = (iris_target.abs().sum(-1) > 0) * face_ok[:, None]
        body_side = (inp.bbox_xyxy[:, 2:] - inp.bbox_xyxy[:, :2]).max(-1).values
        face_side = _side_or(keypoint_box_side(kp[..., :2], kp_weight > 0),
                             _side_or(keypoint_box_side(mp_target, mp_target.abs().sum(-1) > 0), 0.2 * body_side))
        scale = (cfg.reference_px / face_side)[:, None, None]
        head_scale = _group_mean(params["head_scale"], identity, count, face_ok)[identity]
        rot0 = body.joint_rotations[:, SMPLX.HEAD]
        eyes0 = body.joints[:, [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]].mean(1)
        eyes0 = eyes0 + self._image_shift(body.landmarks68, kp, kp_weight, eyes0[:, 2], inp.intrinsics)
        blocks = {
            "head_rotation": _Block(rot0, steps["head_rotation"], rotation=True),
            "head_translation": _Block(eyes0, steps["head_translation"]),
            "flame_shape": _Block(_group_mean(params["flame_shape"], identity, count, face_ok), steps["flame_shape"],
                                  identity),
        }
        for name in ("flame_expression", "flame_jaw_pose", "flame_eye_pose", "flame_eyelids"):
            if name in params and (name != "flame_eyelids" or flame.has_eyelids):
                blocks[name] = _Block(params[name], steps[name])
        k, intr = cfg, inp.intrinsics

        def terms() -> dict[str, Tensor]:
            rot = blocks["head_rotation"].value()
            local, faces, pupils = self.face(
                blocks["flame_shape"].value(), blocks["flame_expression"].value(), blocks["flame_jaw_pose"].value(),
                blocks["flame_eye_pose"].value(), blocks["flame_eyelids"].value() if "flame_eyelids" in blocks else None)
            verts = (local * head_scale[:, None]) @ rot.transpose(-1, -2) + blocks["head_translation"].value()[:, None]
            lmk68, lmk_mp = flame.face_landmarks(verts, rot, faces)
            uv68, uv_mp = project(lmk68, intr), project(lmk_mp, intr)
            uv_iris = project(verts[:, pupils], intr)
            jaw = blocks["flame_jaw_pose"].value()
            out = {
                "landmarks68": k.landmarks68 * robust_point_loss(uv68 * scale, kp[..., :2] * scale, kp_weight, k.delta_px),
                "landmarks_mediapipe": k.landmarks_mediapipe * robust_point_loss(
                    uv_mp * scale, mp_target * scale, face_ok[:, None].to(verts), k.delta_px),
                "iris": k.iris * robust_point_loss(uv_iris * scale, iris_target * scale, iris_weight.to(verts), k.delta_px),
                "shape_prior": k.shape_prior * mean_square(blocks["flame_shape"].value()),
                "expression_prior": k.expression_prior * mean_square(blocks["flame_expression"].value()),
                "jaw_prior": k.jaw_prior * mean_square(jaw[:, 1:]),
                "eye_prior": k.eye_prior * mean_square(blocks["flame_eye_pose"].value()),
                "head_rotation_to_init": k.head_rotation_to_init * mean_square(blocks["head_rotation"].offset()),
                "head_translation_to_init": k.head_translation_to_init * mean_square(
                    blocks["head_translation"].offset()),
            }
            if "flame_eyelids" in blocks:
                out["eyelid_prior"] = k.eyelid_prior * mean_square(blocks["flame_eyelids"].value())
            return out

        solved = _solve(blocks, terms, cfg.iterations, self.config)
        with torch.no_grad():
            for name, block in blocks.items():
                if name.startswith("flame_"):
                    params[name] = block.value().detach()
            local, _ = self.parts.head_frame(params)
            eyes = blocks["head_translation"].value()
            verts = (local * head_scale[:, None]) @ blocks["head_rotation"].value().transpose(-1, -2) + eyes[:, None]
        return solved, verts, eyes

    @staticmethod
    def _image_shift(points: Tensor, observed: Tensor, weight: Tensor, depth: Tensor, intrinsics: Tensor) -> Tensor:
        """Camera-frame shift ``[B, 3]`` (parallel to the image, at ``depth  # [B]``) that moves the weighted
        mean projection of ``points  # [B, K, 3]`` onto that of ``observed  # [B, K, 2+]``; zero without weight."""
        w = weight / weight.sum(1, keepdim=True).clamp(min=1e-12)
        gap = ((observed[..., :2] - project(points, intrinsics)) * w[..., None]).sum(1)  # [B, 2] px
        focal = torch.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1]], -1)
        return torch.cat([gap / focal * depth[:, None], torch.zeros_like(depth[:, None])], -1)

    # -- 4. EHM stage -------------------------------------------------------------------------------

    def _ehm_stage(self, params: dict[str, Tensor], inp: RefineInputs, face_ok: Tensor, visible: Tensor,
                   head_verts: Tensor, head_eyes: Tensor, identity: Tensor, count: int) -> _Solved:
        """Fit the EHM body on :class:`model.ehm_rigid.RigidPartsEHM`; updates ``params`` in place."""
        cfg = self.config.ehm
        steps = cfg.steps
        intr = inp.intrinsics
        body_side = (inp.bbox_xyxy[:, 2:] - inp.bbox_xyxy[:, :2]).max(-1).values
        scale = (cfg.reference_px / body_side)[:, None, None]
        hands_start = WHOLEBODY_PARTS["left_hand"].start
        thresholds = torch.full((kpl.NUM_KEYPOINTS,), cfg.keypoint_threshold, dtype=intr.dtype, device=intr.device)
        thresholds[hands_start:] = cfg.hand_keypoint_threshold
        kp_weight = confidence_gate(inp.kp2d[..., 2], thresholds) * torch.as_tensor(WHOLEBODY_WEIGHTS).to(intr)
        # a gated hand's keypoints do not pull the body's wrist into a hand it does not show
        side_of_kp = torch.zeros(kpl.NUM_KEYPOINTS, dtype=torch.long, device=intr.device)
        side_of_kp[WHOLEBODY_PARTS["right_hand"]] = 1
        is_hand = torch.arange(kpl.NUM_KEYPOINTS, device=intr.device) >= hands_start
        kp_weight = kp_weight * torch.where(is_hand, visible[:, side_of_kp], True)
        parts = self.parts
        fingers0 = params["mano_hand_pose"]
        with torch.no_grad():
            head = parts.head_frame(params)
            hands0 = parts.hand_frame(params["mano_betas"], fingers0)
            hand_rot = rotvec_to_rotmat(inp.mano_global_orient)  # [B, 2, 3, 3]
            hand_targets = [1000.0 * hands0[side][0][:, parts.hand_out[side]] @ hand_rot[:, side].transpose(-1, -2)
                            for side in (0, 1)]
            target_verts = head_verts[:, self.parts.head_out]
            head_target = torch.cat([project(target_verts, intr) * scale,
                                     1000.0 * (target_verts[..., 2:] - head_eyes[:, None, 2:])], -1)
        pose0 = params["body_pose"]
        global0 = rotvec_to_rotmat(params["global_orient"])
        blocks = {
            "global_orient": _Block(global0, steps["global_orient"], rotation=True),
            "body_pose": _Block(pose0, steps["body_pose"]),
            "transl": _Block(params["transl"], steps["transl"]),
            "betas": _Block(_group_mean(params["betas"], identity, count), steps["betas"], identity),
            "head_scale": _Block(_group_mean(params["head_scale"], identity, count, face_ok), steps["head_scale"],
                                 identity),
            "hand_scale": _Block(_group_mean(params["hand_scale"], identity, count), steps["hand_scale"], identity),
        }
        if cfg.fingers:
            blocks["mano_hand_pose"] = _Block(fingers0, steps["mano_hand_pose"])
        silhouette = cfg.silhouette > 0 and inp.person_mask is not None
        if cfg.silhouette > 0 and not silhouette:
            log.warning("EHM stage: silhouette weight %s but no person_mask given; the term is off", cfg.silhouette)
        k = cfg

        def current() -> dict[str, Tensor]:
            p = dict(params)
            for name, block in blocks.items():
                p[name] = block.value()
            if cfg.fingers:  # gated hands keep the mean pose
                p["mano_hand_pose"] = torch.where(visible[..., None, None], p["mano_hand_pose"], fingers0)
            return p

        def pose(p: Mapping[str, Tensor]) -> RigidPartsOutput:
            hands = parts.hand_frame(p["mano_betas"], p["mano_hand_pose"]) if cfg.fingers else hands0
            return parts(p["betas"], p["global_orient"], p["body_pose"], p["transl"], p["head_scale"],
                         p["hand_scale"], head, hands)

        with torch.no_grad():
            depth0 = pose(current()).joints[:, : SMPLX.NUM_BODY_JOINTS, 2]

        def terms() -> dict[str, Tensor]:
            p = current()
            out = pose(p)
            uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), intr)
            verts = out.head
            eyes = out.joints[:, [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]].mean(1, keepdim=True)
            head_pred = torch.cat([project(verts, intr) * scale, 1000.0 * (verts[..., 2:] - eyes[..., 2:])], -1)
            hands = 0.0
            for side, wrist in enumerate(WRISTS):
                rel = 1000.0 * (out.hands[side] - out.joints[:, wrist, None])
                target = hand_targets[side] * p["hand_scale"][:, side, None, None]
                hands = hands + robust_point_loss(rel, target, visible[:, side, None].to(rel), k.delta_px)
            dz = 1000.0 * (out.joints[:, : SMPLX.NUM_BODY_JOINTS, 2] - depth0)
            body_pose = p["body_pose"]
            result = {
                "keypoints_2d": k.keypoints_2d * robust_point_loss(uv * scale, inp.kp2d[..., :2] * scale, kp_weight,
                                                                   k.delta_px),
                "head_vertices": k.head_vertices * robust_point_loss(head_pred, head_target,
                                                                     face_ok[:, None].to(head_pred), k.delta_px),
                "hand_vertices": k.hand_vertices * hands,
                "depth_to_init": k.depth_to_init * pseudo_huber(dz, k.delta_px).mean(-1),
                "pose_to_init": k.pose_to_init * mean_square(body_pose - pose0),
                "pose_prior": k.pose_prior * pose_prior(body_pose),
                "joint_limits": k.joint_limits * joint_limit_penalty(body_pose),
                "shape_prior": k.shape_prior * mean_square(p["betas"]),
                "scale_prior": k.scale_prior * (mean_square(p["head_scale"] - 1.0) + mean_square(p["hand_scale"] - 1.0)),
            }
            if cfg.fingers:
                result["hand_pose_to_init"] = k.hand_pose_to_init * mean_square(p["mano_hand_pose"] - fingers0)
            if silhouette:
                full = self._forward({**p, "global_orient": rotmat_to_rotvec(p["global_orient"])})
                result["silhouette"] = k.silhouette * self._silhouette_loss(full.vertices, full.faces, inp)
            return result

        solved = _solve(blocks, terms, cfg.iterations, self.config)
        with torch.no_grad():
            final = current()
            final["global_orient"] = rotmat_to_rotvec(final["global_orient"])
            params.update({k: v.detach() for k, v in final.items()})
        return solved

    def _silhouette_loss(self, vertices: Tensor, faces: Tensor, inp: RefineInputs) -> Tensor:
        """Trimap loss ``[B]`` of the EHM silhouette in the mask grid."""
        cfg = self.config.ehm
        size = inp.person_mask.shape[-1]
        box = inp.mask_box
        uv = project(vertices, inp.intrinsics)
        grid = (uv - box[:, None, :2]) / (box[:, None, 2:] - box[:, None, :2]) * size
        in_front = vertices[..., 2][:, faces].min(-1).values > 1e-3
        sil = soft_silhouette(grid, faces, size, size, sigma=cfg.silhouette_sigma, face_mask=in_front)
        return trimap_silhouette_loss(sil, inp.person_mask, cfg.silhouette_band)

    # -- all together -------------------------------------------------------------------------------

    def refine(self, inputs: RefineInputs) -> RefineResult:
        """Refine a batch (see the module docstring); ``inputs`` may live anywhere, results are on the
        refiner's device."""
        n = inputs.check()
        cfg = self.config
        seed_everything(cfg.seed)
        inp = inputs.to(self.device, self.dtype)
        params = {k: v.clone() for k, v in inp.params.items()}
        if cfg.share_identity and inp.identity is not None:
            identity = torch.unique(inp.identity, return_inverse=True)[1]
        else:
            identity = torch.arange(n, device=self.device)
        count = int(identity.max()) + 1
        flags = torch.zeros(n, dtype=torch.int32, device=self.device)

        visible = hand_gate(inp.has_hands, inp.conf_hands, cfg.hand_gate)
        with torch.no_grad():
            body = self._forward(params)
            twist, clamped = self.integrate_hands(params, body, inp.mano_global_orient, visible)
        flags |= torch.where(~visible[:, 0], int(QualityFlag.LEFT_HAND_GATED), 0).int()
        flags |= torch.where(~visible[:, 1], int(QualityFlag.RIGHT_HAND_GATED), 0).int()
        flags |= torch.where(clamped.any(1), int(QualityFlag.WRIST_TWIST_CLAMPED), 0).int()

        face_ok = inp.has_face.bool() & (inp.conf_face >= cfg.face_gate)
        for name in ("flame_expression", "flame_jaw_pose", "flame_eye_pose", "flame_eyelids"):
            if name in params:
                params[name] = torch.where(face_ok.reshape(-1, 1), params[name], torch.zeros_like(params[name]))
        flags |= torch.where(~face_ok, int(QualityFlag.FACE_GATED), 0).int()

        flame, head_verts, head_eyes = self._flame_stage(params, inp, body, face_ok, identity, count)
        ehm = self._ehm_stage(params, inp, face_ok, visible, head_verts, head_eyes, identity, count)
        falling = (flame.still_falling & face_ok) | ehm.still_falling
        flags |= torch.where(falling, int(QualityFlag.NOT_CONVERGED), 0).int()
        with torch.no_grad():
            final = self._forward(params)
        terms = {f"flame/{k}": v * face_ok for k, v in flame.terms.items()}
        terms.update({f"ehm/{k}": v for k, v in ehm.terms.items()})
        return RefineResult(
            params=params,
            mano_global_orient=rotmat_to_rotvec(final.joint_rotations[:, list(WRISTS)]),
            flags=flags,
            loss=flame.loss * face_ok + ehm.loss,
            terms=terms,
            wrist_twist=twist,
            hands_integrated=visible,
            face_fitted=face_ok,
        )
