"""FLAME fit to MediaPipe's 478 face landmarks through the MediaPipe landmark embedding, batched.

**Model of the landmarks.** FLAME's ``mediapipe_landmark_embedding`` places 105 of MediaPipe's face-mesh
landmarks on FLAME's surface (barycentric points on triangles). With FLAME shaped by ``shape`` and
``expression`` (and ``eyelids`` when the model has eyelid blend shapes), posed by ``jaw`` and ``eyes``
with its root and neck still, those points ``X`` (metres, FLAME frame: y up, z out of the face) are
seen by a **scaled orthographic (weak-perspective) camera** in image pixels::

    p = s R X + t        (x, y: image px; z: depth in px units, away from the camera)

with head rotation ``R`` (OpenCV camera frame: x right, y down, z forward), scale ``s`` (px per metre)
and translation ``t``. MediaPipe's landmarks have the same form: image x, y and a relative depth z in
px units (origin arbitrary, hence ``t_z``), so the camera suits the face crop MediaPipe saw.

**Residuals**, in units of ``landmark_sigma`` times the face size (the longer side of the box of the
105 landmarks): x and y of every landmark, its z weighted by ``z_weight``; and with ``fit_eyes``, the
x, y of each eyeball's pupil vertex against MediaPipe's iris centre (468 right, 473 left), weighted
by ``iris_weight``.

**Priors** (unit-free, added as residuals): ``shape_weight * |shape|^2``,
``expression_weight * |expression|^2``, ``jaw_weight * |jaw|^2``, ``eye_weight * |eyes|^2`` and
``eyelid_weight * |eyelids|^2``, plus ``limit_weight`` times the squared excursion outside the boxes
:data:`JAW_LIMITS`, :data:`EYE_LIMITS` and ``[0, 1]`` for eyelids.

**Solving** (:func:`solve_face_fit`): a similarity Procrustes fit of the neutral face's landmarks gives
``R, s, t``; then Levenberg-Marquardt (:func:`fitting.solvers.least_squares` over
:func:`fitting.solvers.minimize_levenberg_marquardt`) runs a fixed number of iterations on all
parameters. The Jacobian of the camera, jaw and eye parameters comes from automatic forward-mode
differentiation; that of the shape, expression and eyelid coefficients from
:meth:`FaceLandmarks.points_jacobian`, exact and much cheaper (the rest shape is linear in them).
Everything is batched over faces, with a fixed budget and no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fitting.solvers import least_squares
from model.body_models import FLAME, blend_skinning, pose_feature, skinning_transforms
from model.metrics import similarity_align
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat
from schemas import keypoints as kpl

NUM_MEDIAPIPE_LANDMARKS = kpl.NUM_FACE_LANDMARKS
IRIS_CENTRES = (473, 468)
"""MediaPipe iris-centre landmarks of the left and right eye (the person's own sides), in
``eye_pose`` order (FLAME joints 3 = left eye, 4 = right eye)."""
JAW_LIMITS = ((-0.1, 0.6), (-0.2, 0.2), (-0.2, 0.2))
"""Jaw axis-angle box (rad) per component: x opens the mouth, y and z move the chin sideways."""
EYE_LIMITS = ((-0.6, 0.6), (-0.7, 0.7), (-0.1, 0.1))
"""Eyeball axis-angle box (rad) per component: x looks down, y sideways, z rolls."""
EYELID_LIMITS = ((0.0, 1.0), (0.0, 1.0))
"""Eyelid blend-shape weights: 0 open, 1 closed."""


def box_excess(values: Tensor, limits: Sequence[tuple[float, float]]) -> Tensor:
    """How far ``values  # [..., D]`` lie outside per-component ``limits`` (D (low, high) pairs); 0 inside."""
    lo = values.new_tensor([low for low, _ in limits])
    hi = values.new_tensor([high for _, high in limits])
    return torch.relu(lo - values) + torch.relu(values - hi)


def pupil_vertices(flame: FLAME) -> list[int] | None:
    """Front-most vertex (largest z at rest) of each eyeball, ``[left, right]``: the vertices skinned
    mostly to FLAME's eye joints 3 and 4. None when the model has no vertex on an eye joint."""
    owner = flame.lbs_weights.argmax(dim=1)
    pupils = []
    for joint in (FLAME.LEFT_EYE, FLAME.RIGHT_EYE):
        ids = torch.nonzero(owner == joint)[:, 0]
        if len(ids) == 0:
            return None
        pupils.append(int(ids[flame.v_template[ids, 2].argmax()]))
    return pupils


class FaceLandmarks(nn.Module):
    """FLAME's MediaPipe-embedded landmarks (and its two pupils), skinning only the vertices they need.

    The rest shape is linear in the **coefficients** ``[shape, expression, eyelids]`` (eyelids only when
    the model has them); :meth:`points_jacobian` gives the exact derivative of the posed points with
    respect to them.
    """

    def __init__(self, flame: FLAME, num_shape: int, num_expression: int) -> None:
        super().__init__()
        sizes = flame.shape_sizes
        if not 0 <= num_shape <= sizes["betas"] or not 0 <= num_expression <= sizes.get("expression", 0):
            raise ValueError(f"num_shape={num_shape}, num_expression={num_expression}: this FLAME has "
                             f"{sizes['betas']} shape and {sizes.get('expression', 0)} expression components")
        self.num_shape, self.num_expression = num_shape, num_expression
        self.has_eyelids = flame.has_eyelids
        self.tree = flame.tree
        pupils = pupil_vertices(flame)
        self.num_pupils = 0 if pupils is None else 2
        pupil_corners = torch.tensor([[p] * 3 for p in pupils or []], dtype=torch.int64).reshape(-1, 3)
        corners = torch.cat([flame.faces[flame.mediapipe_lmk_faces], pupil_corners])  # pupils: one vertex each
        pupil_bary = flame.mediapipe_lmk_bary.new_tensor([[1.0, 0.0, 0.0]] * self.num_pupils).reshape(-1, 3)
        bary = torch.cat([flame.mediapipe_lmk_bary, pupil_bary])
        verts, local = torch.unique(corners.reshape(-1), return_inverse=True)
        rows = torch.cat([torch.arange(num_shape), sizes["betas"] + torch.arange(num_expression)])
        cols = (verts[:, None] * 3 + torch.arange(3)).reshape(-1)
        basis = flame.shapedirs[rows][:, cols]
        joint_basis = flame.j_shapedirs[rows]
        if flame.has_eyelids:
            basis = torch.cat([basis, flame.eyelid_dirs[:, cols]])
            joint_basis = torch.cat([joint_basis, joint_basis.new_zeros(2, joint_basis.shape[1])])
        self.register_buffer("template", flame.v_template[verts].clone())  # [U, 3]
        self.register_buffer("shapedirs", basis.clone())  # [C, U*3]
        self.register_buffer("posedirs", flame.posedirs[:, cols].clone())  # [P, U*3]
        self.register_buffer("weights", flame.lbs_weights[verts].clone())  # [U, 5]
        self.register_buffer("j_template", flame.j_template.clone())  # [5, 3]
        self.register_buffer("j_shapedirs", joint_basis.clone())  # [C, 15]
        self.register_buffer("corners", local.reshape(-1, 3))  # [L + pupils, 3] into U
        self.register_buffer("bary", bary.clone())  # [L + pupils, 3]
        self.register_buffer("landmark_indices", flame.mediapipe_landmark_indices.clone())  # [L]

    @property
    def num_coefficients(self) -> int:
        """``C``: shape + expression (+ 2 eyelids)."""
        return self.shapedirs.shape[0]

    @property
    def num_landmarks(self) -> int:
        """``L``: the embedded MediaPipe landmarks (pupils come after them)."""
        return self.landmark_indices.shape[0]

    def coefficients(self, shape: Tensor, expression: Tensor, eyelids: Tensor | None = None) -> Tensor:
        """``[N, C]`` from ``shape  # [N, num_shape]``, ``expression  # [N, num_expression]``, ``eyelids  # [N, 2]``."""
        if eyelids is not None and not self.has_eyelids:
            raise ValueError("eyelids: this FLAME has no eyelid blend shapes; pass None")
        if self.has_eyelids and eyelids is None:
            eyelids = shape.new_zeros(shape.shape[0], 2)
        return torch.cat([shape, expression] + ([eyelids] if self.has_eyelids else []), dim=1)

    @staticmethod
    def rotations(jaw: Tensor, eyes: Tensor) -> Tensor:
        """Joint rotations ``[N, 5, 3, 3]`` (root and neck still) from ``jaw  # [N, 3]``, ``eyes  # [N, 6]``."""
        n = jaw.shape[0]
        still = torch.eye(3, dtype=jaw.dtype, device=jaw.device).expand(n, 2, 3, 3)
        return torch.cat([still, rotvec_to_rotmat(torch.cat([jaw[:, None], eyes.reshape(n, 2, 3)], 1))], 1)

    def points(self, coeffs: Tensor, rotmats: Tensor) -> Tensor:
        """Posed landmarks then pupils ``[N, L + pupils, 3]`` (FLAME frame) for ``coeffs  # [N, C]`` and
        ``rotmats  # [N, 5, 3, 3]``."""
        n = coeffs.shape[0]
        rest_joints = self.j_template + (coeffs @ self.j_shapedirs).reshape(n, -1, 3)
        world_rot, joints = self.tree.chain(rotmats, rest_joints)
        rest = self.template.reshape(-1) + coeffs @ self.shapedirs + pose_feature(rotmats) @ self.posedirs
        transforms = skinning_transforms(world_rot, joints, rest_joints)
        posed = blend_skinning(rest.reshape(n, -1, 3), self.weights, transforms)
        return (posed[:, self.corners] * self.bary[..., None]).sum(-2)

    def points_jacobian(self, rotmats: Tensor) -> Tensor:
        """``d points / d coeffs``, ``[N, L + pupils, 3, C]`` at ``rotmats  # [N, 5, 3, 3]``: exact, since the
        skinning is linear in the rest vertices and rest joints at fixed joint rotations."""
        n, c, j = rotmats.shape[0], self.num_coefficients, rotmats.shape[1]
        joint_basis = self.j_shapedirs.reshape(1, c, j, 3).expand(n, c, j, 3).reshape(n * c, j, 3)
        world_rot, posed = self.tree.chain(rotmats[:, None].expand(n, c, j, 3, 3).reshape(n * c, j, 3, 3), joint_basis)
        shifts = (posed - (world_rot @ joint_basis[..., None])[..., 0]).reshape(n, c, j, 3)  # d t_j / d coeff
        world = world_rot.reshape(n, c, j, 3, 3)[:, 0]  # [N, J, 3, 3], the same for every coefficient
        weights = self.weights[self.corners] * self.bary[..., None]  # [Q, 3, J]
        basis = self.shapedirs.reshape(c, -1, 3)[:, self.corners]  # [C, Q, 3, 3]
        linear = torch.einsum("qkj,njab->nqkab", weights, world)
        return torch.einsum("nqkab,cqkb->nqac", linear, basis) + torch.einsum("qj,ncja->nqac", weights.sum(1), shifts)

    def forward(
        self,
        shape: Tensor,  # [N, num_shape]
        expression: Tensor,  # [N, num_expression]
        jaw: Tensor,  # [N, 3]
        eyes: Tensor,  # [N, 6] left, right eye axis-angle
        eyelids: Tensor | None = None,  # [N, 2] left, right (only for a FLAME with eyelids)
    ) -> tuple[Tensor, Tensor]:
        """Landmarks ``[N, L, 3]`` and pupils ``[N, 2, 3]`` (``[N, 0, 3]`` without eyeballs), FLAME frame."""
        posed = self.points(self.coefficients(shape, expression, eyelids), self.rotations(jaw, eyes))
        return posed[:, : self.num_landmarks], posed[:, self.num_landmarks:]


@dataclass(frozen=True)
class FaceFitOptions:
    """Weights and budget of :func:`solve_face_fit` (see the module docstring)."""

    iterations: int = 4
    """Levenberg-Marquardt iterations after the rigid initialisation."""
    landmark_sigma: float = 0.01
    """Landmark error, as a fraction of the face size, that costs one unit."""
    z_weight: float = 0.3
    """Weight of MediaPipe's relative depth against x and y (it is less reliable)."""
    iris_weight: float = 1.0
    """Weight of the pupil-to-iris residuals (with ``fit_eyes``)."""
    shape_weight: float = 1.0
    """Prior weight on the squared shape coefficients."""
    expression_weight: float = 1.0
    """Prior weight on the squared expression coefficients."""
    jaw_weight: float = 1.0
    """Prior weight on the squared jaw rotation (rad^2)."""
    eye_weight: float = 1.0
    """Prior weight on the squared eye rotations (rad^2)."""
    eyelid_weight: float = 1.0
    """Prior weight on the squared eyelid weights."""
    limit_weight: float = 100.0
    """Weight of the squared excursion outside the jaw, eye and eyelid boxes."""
    fit_eyes: bool = True
    """Fit the eye rotations to MediaPipe's iris centres (needs eyeballs in the model)."""
    damping: float = 1e-3
    """Initial Levenberg-Marquardt damping."""

    def __post_init__(self) -> None:
        weights = (self.z_weight, self.iris_weight, self.shape_weight, self.expression_weight, self.jaw_weight,
                   self.eye_weight, self.eyelid_weight, self.limit_weight)
        if self.iterations < 0 or self.landmark_sigma <= 0 or min(weights) < 0:
            raise ValueError(f"FaceFitOptions: iterations and weights must be >= 0 and landmark_sigma > 0, got {self}")


@dataclass(frozen=True)
class FaceFitResult:
    """FLAME parameters and camera of a batch of faces (``N`` faces)."""

    shape: Tensor
    """[N, num_shape] shape coefficients."""
    expression: Tensor
    """[N, num_expression] expression coefficients."""
    jaw_pose: Tensor
    """[N, 3] jaw axis-angle."""
    eye_pose: Tensor
    """[N, 6] left and right eye axis-angle (zero when eyes are not fitted)."""
    eyelids: Tensor
    """[N, 2] eyelid weights (zero without eyelid blend shapes)."""
    head_rotation: Tensor
    """[N, 3] axis-angle of ``R`` (FLAME frame -> OpenCV camera frame)."""
    scale: Tensor
    """[N] ``s``, image px per metre."""
    translation: Tensor
    """[N, 3] ``t``, image px (z: MediaPipe's depth units)."""
    landmarks: Tensor
    """[N, L, 3] the fitted landmarks ``s R X + t`` (MediaPipe ids in ``FaceLandmarks.landmark_indices``)."""
    rmse_px: Tensor
    """[N] root-mean-square 2D (x, y) landmark error in px."""
    face_size: Tensor
    """[N] longer side (px) of the box of the target landmarks."""


def solve_face_fit(
    layer: FaceLandmarks,
    mediapipe: Tensor,  # [N, 478, 3] MediaPipe face landmarks (x, y px; z relative depth in px units)
    options: FaceFitOptions = FaceFitOptions(),
) -> FaceFitResult:
    """Fit FLAME to MediaPipe face landmarks (see the module docstring)."""
    ref = layer.template
    if mediapipe.dim() != 3 or mediapipe.shape[1:] != (NUM_MEDIAPIPE_LANDMARKS, 3):
        raise ValueError(f"mediapipe: expected face landmarks [N, {NUM_MEDIAPIPE_LANDMARKS}, 3], "
                         f"got {list(mediapipe.shape)}")
    if mediapipe.dtype != ref.dtype or mediapipe.device != ref.device:
        raise ValueError(f"mediapipe: {mediapipe.dtype} on {mediapipe.device}, but FLAME is {ref.dtype} on "
                         f"{ref.device}; convert one of them")
    if not torch.isfinite(mediapipe).all():
        raise ValueError("mediapipe: face landmarks contain NaN or infinity")
    n, num_lmk = mediapipe.shape[0], layer.num_landmarks
    target = mediapipe[:, layer.landmark_indices]  # [N, L, 3]
    size = (target[..., :2].amax(1) - target[..., :2].amin(1)).amax(-1)
    if not (size > 0).all():
        raise ValueError("mediapipe: a face's landmarks all coincide (zero face size)")
    unit = (options.landmark_sigma * size)[:, None, None]
    axis_weight = ref.new_tensor([1.0, 1.0, options.z_weight ** 0.5])
    fit_eyes = options.fit_eyes and layer.num_pupils == 2
    iris = mediapipe[:, list(IRIS_CENTRES), :2]
    sqrt = {k: getattr(options, f"{k}_weight") ** 0.5 for k in ("iris", "jaw", "eye", "limit")}
    coeff_weight = torch.cat([ref.new_full((layer.num_shape,), options.shape_weight),
                              ref.new_full((layer.num_expression,), options.expression_weight),
                              ref.new_full((2 * layer.has_eyelids,), options.eyelid_weight)]) ** 0.5
    num_coeffs = layer.num_coefficients
    zeros = ref.new_zeros(n, 6)
    neutral = layer.points(ref.new_zeros(n, num_coeffs), layer.rotations(zeros[:, :3], zeros))[:, :num_lmk]
    rot0, scale0, shift0 = similarity_align(neutral, target)

    # x = [delta 3, log scale 1, shift 3, jaw 3, (eyes 6) | coefficients C]: rotations first, by automatic
    # differentiation; the coefficients last, with their exact Jacobian
    names = ["delta", "log_scale", "shift", "jaw"] + ["eyes"] * fit_eyes
    sizes = [3, 1, 3, 3] + [6] * fit_eyes

    def unpack(x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        p = dict(zip(names, torch.split(x[:, : sum(sizes)], sizes, dim=1)))
        rotmats = layer.rotations(p["jaw"], p.get("eyes", zeros))
        camera = torch.exp(p["log_scale"])[:, :, None] * (rotvec_to_rotmat(p["delta"]) @ rot0)  # s R
        return p, x[:, sum(sizes):], rotmats, camera

    def residuals(x: Tensor) -> Tensor:
        p, coeffs, rotmats, camera = unpack(x)
        image = layer.points(coeffs, rotmats) @ camera.transpose(1, 2) + p["shift"][:, None]
        terms = [((image[:, :num_lmk] - target) * axis_weight / unit).reshape(n, -1)]
        if fit_eyes:
            terms.append(((image[:, num_lmk:, :2] - iris) * sqrt["iris"] / unit).reshape(n, -1))
        terms.append(coeffs * coeff_weight)
        if layer.has_eyelids:
            terms.append(box_excess(coeffs[:, -2:], EYELID_LIMITS) * sqrt["limit"])
        terms += [p["jaw"] * sqrt["jaw"], box_excess(p["jaw"], JAW_LIMITS) * sqrt["limit"]]
        if fit_eyes:
            outside = box_excess(p["eyes"].reshape(n, 2, 3), EYE_LIMITS).reshape(n, -1)
            terms += [p["eyes"] * sqrt["eye"], outside * sqrt["limit"]]
        return torch.cat(terms, dim=1)

    def coefficient_jacobian(x: Tensor) -> Tensor:  # [N, R, C], rows as residuals()
        _, coeffs, rotmats, camera = unpack(x)
        image = torch.einsum("nab,nqbc->nqac", camera, layer.points_jacobian(rotmats))
        blocks = [(image[:, :num_lmk] * axis_weight[:, None] / unit[..., None]).reshape(n, -1, num_coeffs)]
        if fit_eyes:
            blocks.append((image[:, num_lmk:, :2] * sqrt["iris"] / unit[..., None]).reshape(n, -1, num_coeffs))
        blocks.append(torch.diag_embed(coeff_weight.expand(n, -1)))
        if layer.has_eyelids:
            lids = coeffs[:, -2:]
            lo, hi = (lids.new_tensor(v) for v in zip(*EYELID_LIMITS))
            slope = ((lids > hi).to(lids.dtype) - (lids < lo).to(lids.dtype)) * sqrt["limit"]
            blocks.append(torch.nn.functional.pad(torch.diag_embed(slope), (num_coeffs - 2, 0)))
        blocks.append(x.new_zeros(n, 6 + 12 * fit_eyes, num_coeffs))
        return torch.cat(blocks, dim=1)

    start = torch.cat([ref.new_zeros(n, 3), torch.log(scale0)[:, None], shift0, ref.new_zeros(n, 3 + 6 * fit_eyes),
                       ref.new_zeros(n, num_coeffs)], 1)
    x, _ = least_squares(residuals, start, iterations=options.iterations, damping=options.damping,
                         known_jacobian=coefficient_jacobian, known_columns=num_coeffs)
    with torch.no_grad():
        p, coeffs, rotmats, camera = unpack(x)
        landmarks = layer.points(coeffs, rotmats)[:, :num_lmk] @ camera.transpose(1, 2) + p["shift"][:, None]
        rmse = (landmarks[..., :2] - target[..., :2]).square().sum(-1).mean(-1).sqrt()
        ns, ne = layer.num_shape, layer.num_expression
        return FaceFitResult(
            shape=coeffs[:, :ns], expression=coeffs[:, ns:ns + ne], jaw_pose=p["jaw"], eye_pose=p.get("eyes", zeros),
            eyelids=coeffs[:, ns + ne:] if layer.has_eyelids else zeros[:, :2],
            head_rotation=rotmat_to_rotvec(rotvec_to_rotmat(p["delta"]) @ rot0), scale=torch.exp(p["log_scale"][:, 0]),
            translation=p["shift"], landmarks=landmarks, rmse_px=rmse, face_size=size,
        )
