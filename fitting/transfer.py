"""SMPL -> SMPL-X transfer (PEAR eq. 4): a calibrated closed form, then an optional batched refinement.

**Calibration** (once per model pair and gender, cached; :func:`calibrate`). SMPL and SMPL-X share the 22
body joints 0..21 (pelvis to wrists) and their kinematic tree, but their rest poses, skeletons, surfaces
and shape spaces differ. The calibration finds

- ``C_j`` (``joint_offsets``, axis-angle ``[22, 3]``): for every body joint, the rotation that carries the
  body part it moves in the SMPL rest pose onto the same part of the SMPL-X rest pose (world frame);
- ``d`` (``root_offset``, ``[3]``, metres): what is left between the two pelvis-centred rest meshes;
- ``A, b`` (``betas_matrix`` ``[10, 10]``, ``betas_bias`` ``[10]``): SMPL-X betas ``A beta_smpl + b``.

``A, b`` and ``d`` come from linear least squares through the deformation-transfer correspondence: the
pelvis-centred SMPL-X mesh posed by the offsets is affine in its betas and in ``d``, so each SMPL shape's
best SMPL-X betas and offset are one ``lstsq``; ``A, b`` is the affine regression of those betas on the
SMPL betas (the zero SMPL shape is not the zero SMPL-X shape, hence the bias), ``d`` their mean offset.
``C`` (and ``d``) are then refined by L-BFGS on the mean squared vertex error of the closed form below
over the rest pose plus random plausible poses and shapes. The two steps alternate
(``calibration_rounds``).

**Closed form** (:func:`smpl_to_smplx_params`; batched, any leading dims, any device). Posing SMPL-X so that
every body part lands where SMPL puts it needs world rotations ``G_x(j) = G_s(j) C_j^T``; with
``G(j) = G(parent) R(j)`` this gives the local rotations

    R_x(0) = R_s(0) C_0^T,        R_x(j) = C_parent(j) R_s(j) C_j^T        (composed form)

and, comparing the root-joint terms of the two skinned meshes (``G_x(0) (v_x - J0_x) + J0_x + t_x``), the
translation ``t_x = t_s + J0_s(beta_s) - J0_x(beta_x) - R_x(0) d``, where ``J0`` is each model's rest pelvis
(affine in its betas). The paper's additive form ``theta_x(j) = theta_s(j) + delta_j`` with
``delta_j = rotvec(C_parent(j) C_j^T)`` (``mode="additive"``) agrees with the composed form at the rest
pose and drifts from it as joints rotate; it is kept for comparison.

**SMPL hand joints 22 / 23** are not SMPL-X body joints: in SMPL they turn all fingers of a hand
together about the knuckles. With ``hand_joints="fingers"`` (default) their rotation, conjugated by the
wrist's offset (``C_w R_h C_w^T``), becomes the local rotation of the five finger-root joints of the SMPL-X
hand (index1, middle1, pinky1, ring1, thumb1), the other finger joints stay flat; with ``"drop"`` the
SMPL-X hands are flat (zero hand pose) and the SMPL hand rotations are ignored. The SMPL-X wrists take
SMPL's wrists 20 / 21 like every other body joint.

**Refinement** (:meth:`SmplToSmplx.refine`): a few batched solver steps on the SMPL-X global orientation,
body pose, betas and translation, minimising the squared distance of a fixed random subset of SMPL-X
vertices (``refine_vertices``) to their correspondence targets on the source SMPL mesh. The default is
Levenberg-Marquardt with the closed-form Jacobian of
:meth:`model.partial.PartialModel.forward_with_jacobian` (rotations updated on the manifold,
``R <- R exp(delta)``), which reaches the kit's floor in about 3 iterations.

**Error** (:meth:`SmplToSmplx.vertex_error_mm`): mean over all SMPL-X vertices of the distance to the
source SMPL mesh through the correspondence (``mtx @ [vertices; vertex normals]`` with ``use_normals``, as
smplx's transfer_model's ``apply_deformation_transfer`` computes it; without normals the targets lie on
the SMPL surface, which SMPL-X's finer head and hands leave by millimetres even at rest).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from fitting.priors import sample_body_pose
from fitting.solvers import SOLVERS, SolverOptions, SolverResult, State, minimize_lbfgs, minimize_levenberg_marquardt
from model.assets.catalog import asset_file
from model.assets.files import file_sha256, write_bytes_atomic, write_npz
from model.assets.layouts import SMPL_PARENTS
from model.assets.loaders import load_deformation_transfer
from model.body_models import SMPL, SMPLX
from model.partial import PartialModel
from model.rotations import (
    quat_multiply,
    quat_to_rotvec,
    rotmat_to_quat,
    rotmat_to_rotvec,
    rotvec_to_quat,
    rotvec_to_rotmat,
)

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 1
"""Bumped whenever the calibration method changes (part of the cache key)."""
NUM_BODY_JOINTS = 22
"""Joints 0..21 shared by SMPL and SMPL-X (pelvis to wrists)."""
BODY_PARENTS = tuple(int(p) for p in SMPL_PARENTS[:NUM_BODY_JOINTS])
SMPL_HAND_JOINTS = (22, 23)
"""SMPL's left_hand / right_hand joints."""
WRISTS = (20, 21)
FINGER_ROOTS = (0, 3, 6, 9, 12)
"""Rows of a SMPL-X ``*_hand_pose [15, 3]`` that are children of the wrist (index1, middle1, pinky1, ring1,
thumb1)."""
MODES = ("composed", "additive")
HAND_JOINT_MODES = ("fingers", "drop")
LEVENBERG_MARQUARDT = "levenberg_marquardt"
"""The refinement solver with the closed-form Jacobian (the default)."""
REFINE_SOLVERS = (LEVENBERG_MARQUARDT, *SOLVERS.names())
"""Values of :attr:`TransferConfig.refine_solver`: Levenberg-Marquardt, or a solver of
:data:`fitting.solvers.SOLVERS` on autograd gradients."""
GENDERS = ("neutral", "male", "female")
SMPLX_OUTPUTS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "betas", "transl")
"""Keys of the SMPL-X parameter dicts this module returns."""


@dataclass
class TransferConfig:
    """Settings of the SMPL -> SMPL-X transfer."""

    gender: str = "neutral"
    """Model pair to use: ``neutral``, ``male`` or ``female`` (SMPL_{G} -> SMPLX_{G})."""
    mode: str = "composed"
    """Closed form: ``composed`` (rotation composition, derived in the module docstring) or ``additive``
    (the paper's axis-angle sum, for comparison)."""
    hand_joints: str = "fingers"
    """SMPL joints 22/23: ``fingers`` (onto the SMPL-X finger roots) or ``drop`` (flat SMPL-X hands)."""
    use_normals: bool = True
    """Correspondence targets include the normal offsets of the deformation-transfer matrix (second half)."""
    refine_iterations: int = 3
    """Refinement iterations after the closed form (0: closed form only)."""
    refine_solver: str = LEVENBERG_MARQUARDT
    """Refinement solver: ``levenberg_marquardt`` (closed-form Jacobian of the skinned subset vertices, see
    :meth:`model.partial.PartialModel.forward_with_jacobian`), or ``adam``, ``adamw`` or ``lbfgs`` of
    :data:`fitting.solvers.SOLVERS` (autograd; no weight decay, so ``adamw`` runs as ``adam``)."""
    refine_chunk: int = 256
    """Samples refined together (bounds the memory of the Levenberg-Marquardt Jacobians)."""
    refine_vertices: int = 512
    """SMPL-X vertices (a fixed random subset) whose distance the refinement minimises."""
    refine_lr: float = 0.01
    """Step size of the ``adam`` / ``adamw`` refinement (radians / metres / beta units per step); ``lbfgs``
    finds its steps by a line search from a unit trial step."""
    calibration_samples: int = 48
    """Random plausible poses and shapes (plus the rest pose) the rotation offsets are fitted on."""
    calibration_iterations: int = 40
    """L-BFGS iterations per calibration round."""
    calibration_rounds: int = 2
    """Alternations of the betas least squares and the offset optimisation."""
    calibration_vertices: int = 2048
    """SMPL-X vertices (a fixed random subset) used during calibration."""
    calibration_seed: int = 0
    """Seed of the calibration poses, shapes and vertex subsets."""
    cache_dir: str | None = None
    """Where calibrations are cached (default: ``$PEARL_CACHE/transfer``, else
    ``$XDG_CACHE_HOME/pearl/transfer``, else ``~/.cache/pearl/transfer``)."""

    def __post_init__(self) -> None:
        for name, allowed in (("gender", GENDERS), ("mode", MODES), ("hand_joints", HAND_JOINT_MODES),
                              ("refine_solver", REFINE_SOLVERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TransferConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("refine_vertices", "calibration_samples", "calibration_vertices", "calibration_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.refine_iterations < 0 or self.calibration_iterations < 0:
            raise ValueError("TransferConfig.refine_iterations and calibration_iterations must be >= 0")

    def calibration_settings(self) -> dict[str, Any]:
        """The settings a calibration depends on (part of its cache key)."""
        keys = ("gender", "use_normals", "calibration_samples", "calibration_iterations", "calibration_rounds",
                "calibration_vertices", "calibration_seed")
        return {k: getattr(self, k) for k in keys} | {"version": CALIBRATION_VERSION}


# --------------------------------------------------------------------------------------------------
# Correspondence
# --------------------------------------------------------------------------------------------------


def _padded_rows(csr: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row of ``csr``, zero-padded to the longest row: ``[R, M]`` each."""
    counts = np.diff(csr.indptr)
    width = max(int(counts.max()), 1) if len(counts) else 1
    cols = np.zeros((csr.shape[0], width), np.int64)
    vals = np.zeros((csr.shape[0], width), np.float64)
    slot = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], counts)
    row = np.repeat(np.arange(csr.shape[0]), counts)
    cols[row, slot] = csr.indices
    vals[row, slot] = csr.data
    return cols, vals


class Correspondence(nn.Module):
    """SMPL -> SMPL-X vertex correspondence of ``smpl2smplx_deftrafo_setup.pkl``, as row-sparse gathers.

    ``matrix``: ``[V_x, V_s]`` or ``[V_x, 2 V_s]`` (second half: weights of the SMPL vertex normals).
    ``rows``: SMPL-X vertices to produce (default all). Only the SMPL vertices :attr:`source_ids` (those the
    rows weigh, plus the corners of the faces around the vertices whose normals they weigh) are read, so a
    few rows cost a few SMPL vertices.
    """

    def __init__(self, matrix: sp.spmatrix, smpl_faces: Tensor, *, use_normals: bool = True,
                 rows: np.ndarray | None = None) -> None:
        super().__init__()
        csr = sp.csr_matrix(matrix)
        faces = smpl_faces.cpu().numpy()
        num_smpl = int(faces.max()) + 1
        if csr.shape[1] not in (num_smpl, 2 * num_smpl):
            raise ValueError(f"deformation-transfer matrix has {csr.shape[1]} columns; expected {num_smpl} or "
                             f"{2 * num_smpl} for a SMPL mesh of {num_smpl} vertices")
        if use_normals and csr.shape[1] != 2 * num_smpl:
            raise ValueError("use_normals needs the [V_x, 2 * V_s] deformation-transfer matrix (vertex and normal "
                             f"weights); this one is {list(csr.shape)}: set use_normals=False")
        if rows is not None:
            csr = csr[np.asarray(rows)]
        if not use_normals:
            csr = csr[:, :num_smpl]
        csr.eliminate_zeros()
        csr.sort_indices()
        cols, vals = _padded_rows(csr)
        point_ids = np.unique(csr.indices[csr.indices < num_smpl])  # SMPL vertices the rows weigh
        normal_ids = np.unique(csr.indices[csr.indices >= num_smpl] - num_smpl)  # ... whose normals they weigh
        around = np.isin(faces, normal_ids).any(1)
        ring_faces = faces[around]  # faces touching a vertex whose normal is needed
        source = np.unique(np.concatenate([point_ids, ring_faces.ravel()]))
        local = np.full(num_smpl, -1, np.int64)
        local[source] = np.arange(len(source))
        # incidence of the needed normals: for each, the ring faces it is a corner of (padded to face F)
        incident = [np.nonzero((ring_faces == v).any(1))[0] for v in normal_ids]
        depth = max((len(i) for i in incident), default=1)
        ring = np.full((len(normal_ids), depth), len(ring_faces), np.int64)
        for k, ids in enumerate(incident):
            ring[k, : len(ids)] = ids
        normal_slot = np.full(num_smpl, -1, np.int64)
        normal_slot[normal_ids] = len(source) + np.arange(len(normal_ids))
        mapped = np.where(cols < num_smpl, local[np.minimum(cols, num_smpl - 1)],
                          normal_slot[(cols - num_smpl) % num_smpl])
        mapped = np.where(vals == 0, 0, mapped)
        self.use_normals = use_normals
        self.num_smpl = num_smpl
        self.register_buffer("source_ids", torch.as_tensor(source))  # [U]
        self.register_buffer("ring_faces", torch.as_tensor(local[ring_faces]).reshape(-1, 3))  # [F', 3] in U
        self.register_buffer("ring", torch.as_tensor(ring))  # [Vn, D] into ring_faces (F' = padding)
        self.register_buffer("cols", torch.as_tensor(mapped))  # [R, M] into [U points, Vn normals]
        self.register_buffer("weights", torch.as_tensor(vals, dtype=torch.float32))  # [R, M]

    def forward(self, smpl_vertices: Tensor) -> Tensor:
        """Targets ``[N, R, 3]`` on posed SMPL meshes: ``smpl_vertices  # [N, V_s, 3]`` (all vertices) or
        ``[N, U, 3]`` (the vertices :attr:`source_ids` only)."""
        points = smpl_vertices
        if points.shape[1] == self.num_smpl and len(self.source_ids) != self.num_smpl:
            points = points[:, self.source_ids]
        if len(self.ring):
            tri = points[:, self.ring_faces]  # [N, F', 3, 3]
            face_n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
            face_n = torch.cat([face_n, face_n.new_zeros(len(face_n), 1, 3)], dim=1)
            normals = face_n[:, self.ring].sum(2)
            points = torch.cat([points, normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)], dim=1)
        return (points[:, self.cols] * self.weights[..., None]).sum(-2)


@dataclass(frozen=True)
class TransferMaps:
    """The tensors the closed form needs (calibration plus the two models' rest pelvis)."""

    offsets: Tensor
    """[22, 3, 3] rotation offsets ``C_j``."""
    root_offset: Tensor
    """[3] rest offset ``d`` (metres)."""
    betas_matrix: Tensor
    """[Sx, Ss] ``A``."""
    betas_bias: Tensor
    """[Sx] ``b``."""
    smpl_root: Tensor
    """[3] SMPL rest pelvis at zero betas."""
    smpl_root_dirs: Tensor
    """[Ss, 3] change of the SMPL rest pelvis per beta."""
    smplx_root: Tensor
    """[3] SMPL-X rest pelvis at zero betas."""
    smplx_root_dirs: Tensor
    """[Sx, 3] change of the SMPL-X rest pelvis per beta."""


def _check_trailing(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
    k = len(shape)
    if value.dim() < k or tuple(value.shape[value.dim() - k:]) != shape:
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, shape))}], got {list(value.shape)}")


def smpl_to_smplx_params(
    maps: TransferMaps,
    global_orient: Tensor,  # [..., 3]
    body_pose: Tensor,  # [..., 23, 3]
    betas: Tensor,  # [..., Ss]
    transl: Tensor | None = None,  # [..., 3]; None: zero
    *,
    mode: str = "composed",
    hand_joints: str = "fingers",
) -> dict[str, Tensor]:
    """SMPL-X parameters (keys :data:`SMPLX_OUTPUTS`, same leading dims) of SMPL bodies, in closed form.

    See the module docstring for the formulas. Returns ``global_orient [..., 3]``, ``body_pose [..., 21, 3]``,
    ``left_hand_pose`` / ``right_hand_pose [..., 15, 3]``, ``betas [..., Sx]``, ``transl [..., 3]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if hand_joints not in HAND_JOINT_MODES:
        raise ValueError(f"hand_joints must be one of {HAND_JOINT_MODES}, got {hand_joints!r}")
    _check_trailing("global_orient", global_orient, (3,))
    _check_trailing("body_pose", body_pose, (23, 3))
    _check_trailing("betas", betas, (maps.betas_matrix.shape[1],))
    lead = torch.broadcast_shapes(global_orient.shape[:-1], body_pose.shape[:-2], betas.shape[:-1],
                                  transl.shape[:-1] if transl is not None else ())
    rotvecs = torch.cat([global_orient.expand(*lead, 3)[..., None, :], body_pose.expand(*lead, 23, 3)], dim=-2)
    offsets = maps.offsets  # [22, 3, 3]
    # local offsets at the rest pose: L_0 = C_0^T, L_j = C_parent(j) C_j^T
    local = torch.cat([offsets[:1].transpose(-1, -2),
                       offsets[list(BODY_PARENTS[1:])] @ offsets[1:].transpose(-1, -2)], dim=0)  # [22, 3, 3]
    body = rotvecs[..., :NUM_BODY_JOINTS, :]
    if mode == "composed":
        # C_p R C_j^T = L_j exp([C_j theta]x) (a conjugated rotation turns its axis); the root R C_0^T
        turned = torch.cat([body[..., :1, :], (offsets[1:] @ body[..., 1:, :, None])[..., 0]], dim=-2)
        quat = rotvec_to_quat(turned)
        local_q = rotmat_to_quat(local)
        quat = torch.cat([quat_multiply(quat[..., :1, :], local_q[:1]), quat_multiply(local_q[1:], quat[..., 1:, :])],
                         dim=-2)
        r_x = quat_to_rotvec(quat)  # [..., 22, 3]
    else:
        r_x = body + rotmat_to_rotvec(local)
    hands = {}
    for side, smpl_joint, wrist in zip(("left", "right"), SMPL_HAND_JOINTS, WRISTS):
        pose = torch.zeros(*lead, 15, 3, dtype=body_pose.dtype, device=body_pose.device)
        if hand_joints == "fingers":  # rotvec(C_w R_h C_w^T) = C_w rotvec(R_h)
            turned = (offsets[wrist] @ rotvecs[..., smpl_joint, :, None])[..., 0]
            pose[..., list(FINGER_ROOTS), :] = turned[..., None, :]
        hands[side] = pose
    betas_x = betas @ maps.betas_matrix.T + maps.betas_bias
    root_s = maps.smpl_root + betas @ maps.smpl_root_dirs
    root_x = maps.smplx_root + betas_x @ maps.smplx_root_dirs
    global_x = r_x[..., 0, :]
    transl_x = root_s - root_x - (rotvec_to_rotmat(global_x) @ maps.root_offset[:, None])[..., 0]
    if transl is not None:
        transl_x = transl_x + transl
    return {"global_orient": global_x, "body_pose": r_x[..., 1:, :], "left_hand_pose": hands["left"],
            "right_hand_pose": hands["right"], "betas": betas_x.expand(*lead, -1), "transl": transl_x.expand(*lead, 3)}


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferCalibration:
    """The per-model-pair result of :func:`calibrate` (what the cache stores)."""

    joint_offsets: np.ndarray
    """[22, 3] axis-angle ``C_j``."""
    root_offset: np.ndarray
    """[3] ``d`` (metres)."""
    betas_matrix: np.ndarray
    """[Sx, Ss] ``A``."""
    betas_bias: np.ndarray
    """[Sx] ``b``."""
    residual_mm: float
    """Mean vertex error (mm) of the closed form on the calibration poses (subset vertices)."""
    key: str = ""
    """Cache key: sha256 of the model-file hashes and the calibration settings."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Model-file hashes and calibration settings."""

    ARRAYS = ("joint_offsets", "root_offset", "betas_matrix", "betas_bias")

    def save(self, stem: Path) -> None:
        """Write ``stem.npz`` (the arrays) and ``stem.json`` (key, residual, meta); no pickle."""
        write_npz(stem.with_suffix(".npz"), {k: np.asarray(getattr(self, k), np.float64) for k in self.ARRAYS})
        meta = {"key": self.key, "residual_mm": self.residual_mm, "meta": self.meta}
        write_bytes_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, stem: Path) -> TransferCalibration:
        """Read what :meth:`save` wrote; ``FileNotFoundError`` / ``ValueError`` when missing or malformed."""
        meta = json.loads(stem.with_suffix(".json").read_text())
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
            missing = [k for k in cls.ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"{stem}.npz: missing arrays {missing}")
            arrays = {k: data[k] for k in cls.ARRAYS}
        return cls(**arrays, residual_mm=float(meta["residual_mm"]), key=str(meta["key"]), meta=meta.get("meta", {}))


def root_maps(smpl: SMPL, smplx: SMPLX) -> dict[str, Tensor]:
    """The rest pelvis of both models and its change per beta (the ``smpl_root*`` / ``smplx_root*`` maps)."""
    ns, nx = smpl.shape_sizes["betas"], smplx.shape_sizes["betas"]
    return {"smpl_root": smpl.j_template[0], "smpl_root_dirs": smpl.j_shapedirs[:ns, 0:3],
            "smplx_root": smplx.j_template[0], "smplx_root_dirs": smplx.j_shapedirs[:nx, 0:3]}


def _maps(calib: Mapping[str, Tensor], roots: Mapping[str, Tensor],
          offsets_rotvec: Tensor | None = None) -> TransferMaps:
    rv = calib["joint_offsets"] if offsets_rotvec is None else offsets_rotvec
    return TransferMaps(offsets=rotvec_to_rotmat(rv), root_offset=calib["root_offset"],
                        betas_matrix=calib["betas_matrix"], betas_bias=calib["betas_bias"], **roots)


def _smplx_mesh(part: PartialModel, params: Mapping[str, Tensor]) -> Tensor:
    """Subset vertices ``[N, K, 3]`` of SMPL-X for parameter dicts shaped like :func:`smpl_to_smplx_params`'s."""
    n = params["betas"].shape[0]
    model = part.model
    pose = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose")
    rot = model.local_rotmats({k: params[k] for k in pose}, n)
    vertices, _, _ = part(model.shape_coefficients({"betas": params["betas"]}, n), rot, params["transl"])
    return vertices


def _random_subset(count: int, total: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


LSTSQ_DRIVER = "gelsd"
"""LAPACK least-squares driver of the calibration's shape maps (reproducible bits, unlike CPU's default gelsy)."""


def _fit_shape_maps(smpl: SMPL, part: PartialModel, corr: Correspondence, calib: dict[str, Tensor],
                    roots: Mapping[str, Tensor], gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``A, b`` and ``d`` by least squares at the rest pose (see the module docstring).

    For each probe SMPL shape, the pelvis-centred SMPL-X mesh at the aligned rest pose is affine in its
    betas and in ``d``, so one ``lstsq`` gives that shape's best betas and offset; ``A, b`` is the affine
    regression of the betas on the SMPL betas, ``d`` the mean offset.
    """
    ns, nx = smpl.shape_sizes["betas"], part.model.shape_sizes["betas"]
    dtype = part.v_template.dtype
    eye = torch.eye(ns, dtype=dtype)
    betas_s = torch.cat([torch.zeros(1, ns, dtype=dtype), 2 * eye, -2 * eye,
                         torch.randn(16, ns, generator=gen, dtype=dtype)])
    source = smpl(betas=betas_s)
    target = corr(source.vertices) - source.joints[:, :1]  # pelvis-centred SMPL shapes through the correspondence
    maps = _maps(calib, roots)
    probe = torch.cat([torch.zeros(1, nx, dtype=dtype), torch.eye(nx, dtype=dtype)])
    zeros = torch.zeros(1, 3, dtype=dtype)
    rest = smpl_to_smplx_params(maps, zeros, torch.zeros(1, 23, 3, dtype=dtype), torch.zeros(1, ns, dtype=dtype),
                                mode="composed", hand_joints="drop")
    rest = {k: v.expand(nx + 1, *v.shape[1:]) for k, v in rest.items()}
    root_x = maps.smplx_root + probe @ maps.smplx_root_dirs
    mesh = _smplx_mesh(part, rest | {"betas": probe, "transl": -root_x})  # [nx + 1, K, 3], pelvis-centred
    base = mesh[0].reshape(-1)
    rot = rotvec_to_rotmat(rest["global_orient"][0])
    shift = -rot.expand(mesh.shape[1], 3, 3).reshape(-1, 3)  # d moves every vertex by -R_x(0) d
    design = torch.cat([(mesh[1:] - mesh[:1]).reshape(nx, -1).T, shift], dim=1)  # [K*3, nx + 3]
    # driver gelsd (SVD): the CPU default, gelsy, differs in its last bits from call to call (seen with MKL), which
    # made calibrations, and the records made with them, differ between processes
    best = torch.linalg.lstsq(design, (target.reshape(len(betas_s), -1) - base).T,
                              driver=LSTSQ_DRIVER).solution.T  # [n, nx + 3]
    regress = torch.cat([betas_s, torch.ones(len(betas_s), 1, dtype=dtype)], dim=1)
    coef = torch.linalg.lstsq(regress, best[:, :nx], driver=LSTSQ_DRIVER).solution  # [ns + 1, nx]
    return coef[:ns].T.contiguous(), coef[ns].contiguous(), best[:, nx:].mean(0)


def _calibration_set(smpl: SMPL, count: int, gen: torch.Generator) -> dict[str, Tensor]:
    """The rest pose plus ``count`` random plausible SMPL bodies (root fixed: the error ignores rigid motion)."""
    dtype = smpl.v_template.dtype
    ns = smpl.shape_sizes["betas"]
    hands = 0.3 * (2 * torch.rand(count, 2, 3, generator=gen, dtype=dtype) - 1)
    body = torch.cat([sample_body_pose(count, gen, dtype=dtype), hands], 1)
    return {
        "global_orient": torch.zeros(count + 1, 3, dtype=dtype),
        "body_pose": torch.cat([torch.zeros(1, 23, 3, dtype=dtype), body]),
        "betas": torch.cat([torch.zeros(1, ns, dtype=dtype),
                            torch.randn(count, ns, generator=gen, dtype=dtype).clamp(-2.5, 2.5)]),
    }


def calibrate(smpl: SMPL, smplx: SMPLX, matrix: sp.spmatrix, config: TransferConfig) -> TransferCalibration:
    """Rotation offsets, rest offset and betas map for one model pair (see the module docstring).

    Runs in the models' dtype and device (float64 recommended), on one torch thread whatever the caller's
    setting (sums over threads round differently, and one thread was also the fastest on CPU): the same
    models, settings and ``config.calibration_seed`` give the same bits in every process.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _calibrate(smpl, smplx, matrix, config)
    finally:
        torch.set_num_threads(before)


def _calibrate(smpl: SMPL, smplx: SMPLX, matrix: sp.spmatrix, config: TransferConfig) -> TransferCalibration:
    gen = torch.Generator().manual_seed(config.calibration_seed)
    dtype = smplx.v_template.dtype
    rows = _random_subset(config.calibration_vertices, smplx.num_vertices, config.calibration_seed)
    part = PartialModel(smplx, rows)
    corr = Correspondence(matrix, smpl.faces, use_normals=config.use_normals, rows=rows).to(dtype)
    roots = root_maps(smpl, smplx)
    ns, nx = smpl.shape_sizes["betas"], smplx.shape_sizes["betas"]
    calib = {"joint_offsets": torch.zeros(NUM_BODY_JOINTS, 3, dtype=dtype), "root_offset": torch.zeros(3, dtype=dtype),
             "betas_matrix": torch.zeros(nx, ns, dtype=dtype), "betas_bias": torch.zeros(nx, dtype=dtype)}
    train = _calibration_set(smpl, config.calibration_samples, gen)
    with torch.no_grad():
        target = corr(smpl(**train).vertices)  # [n, K, 3]

    def loss_of(offsets: Tensor, root_offset: Tensor) -> Tensor:
        maps = _maps(calib | {"root_offset": root_offset}, roots, offsets)
        params = smpl_to_smplx_params(maps, train["global_orient"], train["body_pose"], train["betas"],
                                      mode="composed", hand_joints=config.hand_joints)
        diff = (_smplx_mesh(part, params) - target) * 1000.0
        return (diff * diff).sum(-1).mean()[None]

    for _ in range(config.calibration_rounds):
        with torch.no_grad():
            calib["betas_matrix"], calib["betas_bias"], calib["root_offset"] = _fit_shape_maps(smpl, part, corr, calib,
                                                                                              roots, gen)
        offsets = calib["joint_offsets"].clone().requires_grad_(True)
        root_offset = calib["root_offset"].clone().requires_grad_(True)
        minimize_lbfgs([offsets, root_offset], lambda: loss_of(offsets, root_offset),
                       iterations=config.calibration_iterations)
        calib["joint_offsets"], calib["root_offset"] = offsets.detach(), root_offset.detach()
    with torch.no_grad():
        maps = _maps(calib, roots)
        params = smpl_to_smplx_params(maps, train["global_orient"], train["body_pose"], train["betas"],
                                      mode="composed", hand_joints=config.hand_joints)
        residual = float((_smplx_mesh(part, params) - target).norm(dim=-1).mean() * 1000.0)
    return TransferCalibration(**{k: v.cpu().numpy() for k, v in calib.items()}, residual_mm=residual)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$PEARL_CACHE/transfer``, else ``$XDG_CACHE_HOME/pearl/transfer``, else ``~/.cache/pearl/transfer``."""
    base = os.environ.get("PEARL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pearl"
    return Path(base) / "transfer"


def model_files(body_models: Path | str, gender: str) -> dict[str, Path]:
    """The three files a transfer needs: ``smpl``, ``smplx`` (of ``gender``) and ``deftrafo``."""
    return {"smpl": asset_file(body_models, f"smpl_{gender}"), "smplx": asset_file(body_models, f"smplx_{gender}"),
            "deftrafo": asset_file(body_models, "smpl2smplx_deftrafo")}


def calibration_key(hashes: Mapping[str, str], config: TransferConfig) -> str:
    """Cache key of a calibration: sha256 of the model-file hashes and the calibration settings."""
    text = json.dumps({"files": dict(hashes), "settings": config.calibration_settings()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# The runtime module
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    """SMPL-X bodies converted from SMPL ones."""

    params: dict[str, Tensor]
    """SMPL-X parameters (:data:`SMPLX_OUTPUTS`), leading dims of the input."""
    vertex_error_mm: Tensor
    """[...] mean vertex error (mm) against the source SMPL mesh through the correspondence."""
    solver: SolverResult | None = None
    """The refinement's report (None without refinement)."""


class SmplToSmplx(nn.Module):
    """SMPL -> SMPL-X conversion for one model pair: closed form, refinement, error (see the module docstring)."""

    def __init__(self, smpl: SMPL, smplx: SMPLX, matrix: sp.spmatrix, calibration: TransferCalibration,
                 config: TransferConfig | None = None) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        if tuple(smpl.parents[:NUM_BODY_JOINTS]) != tuple(smplx.parents[:NUM_BODY_JOINTS]):
            raise ValueError("SMPL and SMPL-X body joints 0..21 have different kinematic trees; "
                             "not an SMPL/SMPL-X pair")
        self.calibration = calibration
        self.smpl, self.smplx = smpl, smplx
        dtype = smplx.v_template.dtype
        for name in TransferCalibration.ARRAYS:
            self.register_buffer(name, torch.as_tensor(getattr(calibration, name), dtype=dtype))
        self.correspondence = Correspondence(matrix, smpl.faces, use_normals=self.config.use_normals).to(dtype)
        rows = _random_subset(self.config.refine_vertices, smplx.num_vertices, self.config.calibration_seed + 1)
        self.refine_part = PartialModel(smplx, rows)
        self.refine_correspondence = Correspondence(matrix, smpl.faces, use_normals=self.config.use_normals,
                                                    rows=rows).to(dtype)
        self.refine_source = PartialModel(smpl, self.refine_correspondence.source_ids)

    @classmethod
    def from_dir(cls, body_models: Path | str, config: TransferConfig | None = None, *,
                 dtype: torch.dtype = torch.float32) -> SmplToSmplx:
        """Load the model pair and correspondence from a body-model folder; calibrate once and cache
        (``config.cache_dir``), keyed by the model files' sha256 and the calibration settings."""
        config = config or TransferConfig()
        files = model_files(body_models, config.gender)
        hashes = {k: file_sha256(p) for k, p in files.items()}
        key = calibration_key(hashes, config)
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        stem = cache / f"smpl2smplx_{config.gender}_{key[:16]}"
        smpl = SMPL.from_dir(body_models, config.gender).to(torch.float64)
        smplx = SMPLX.from_dir(body_models, config.gender).to(torch.float64)
        matrix = load_deformation_transfer(files["deftrafo"])
        calibration = None
        if stem.with_suffix(".json").is_file() and stem.with_suffix(".npz").is_file():
            try:
                calibration = TransferCalibration.load(stem)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("transfer calibration %s is unreadable (%s); calibrating again", stem, exc)
            if calibration is not None and calibration.key != key:
                log.warning("transfer calibration %s has key %s, expected %s; calibrating again", stem,
                            calibration.key[:16], key[:16])
                calibration = None
        if calibration is None:
            log.info("calibrating SMPL -> SMPL-X (%s) for %s; cached in %s", config.gender, body_models, stem)
            found = calibrate(smpl, smplx, matrix, config)
            calibration = TransferCalibration(**{k: getattr(found, k) for k in TransferCalibration.ARRAYS},
                                              residual_mm=found.residual_mm, key=key,
                                              meta={"files": hashes, "settings": config.calibration_settings()})
            calibration.save(stem)
        return cls(smpl.to(dtype), smplx.to(dtype), matrix, calibration, config)

    # -- pieces -----------------------------------------------------------------------------------

    def maps(self) -> TransferMaps:
        """The closed form's tensors on this module's dtype and device."""
        return _maps({k: getattr(self, k) for k in TransferCalibration.ARRAYS}, root_maps(self.smpl, self.smplx))

    def closed_form(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor | None = None,
                    *, mode: str | None = None) -> dict[str, Tensor]:
        """:func:`smpl_to_smplx_params` with this pair's calibration (``mode`` default: the config's)."""
        return smpl_to_smplx_params(self.maps(), global_orient, body_pose, betas, transl,
                                    mode=mode or self.config.mode, hand_joints=self.config.hand_joints)

    def source_targets(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor | None = None,
                       *, subset: bool = False) -> Tensor:
        """Correspondence targets ``[N, R, 3]`` of SMPL bodies (flat batch ``[N, ...]``): all SMPL-X vertices,
        or the refinement subset."""
        with torch.no_grad():
            if not subset:
                verts = self.smpl(betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl).vertices
                return self.correspondence(verts)
            n = len(betas)
            rot = self.smpl.local_rotmats({"global_orient": global_orient, "body_pose": body_pose}, n)
            shift = transl if transl is not None else betas.new_zeros(n, 3)
            verts = self.refine_source(self.smpl.shape_coefficients({"betas": betas}, n), rot, shift)[0]
            return self.refine_correspondence(verts)

    def vertex_error_mm(self, params: Mapping[str, Tensor], targets: Tensor) -> Tensor:
        """Mean distance (mm) ``[N]`` of SMPL-X vertices to their targets ``[N, V_x, 3]``."""
        with torch.no_grad():
            out = self.smplx(**{k: params[k] for k in SMPLX_OUTPUTS})
            return (out.vertices - targets).norm(dim=-1).mean(-1) * 1000.0

    def refine(self, params: Mapping[str, Tensor], targets: Tensor,
               iterations: int | None = None) -> tuple[dict[str, Tensor], SolverResult]:
        """Refine SMPL-X ``params`` (flat batch ``[N, ...]``) towards subset targets ``[N, K, 3]``
        (:meth:`source_targets` with ``subset=True``), ``config.refine_chunk`` samples at a time; global
        orientation, body pose, betas and translation move, hand poses stay."""
        iterations = self.config.refine_iterations if iterations is None else iterations
        n = len(targets)
        chunk = max(self.config.refine_chunk, 1)
        parts, reports = [], []
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            refined, report = self._refine_chunk({k: v[sl] for k, v in params.items()}, targets[sl], iterations)
            parts.append(refined)
            reports.append(report)
        if not parts:
            empty = targets.new_zeros(0)
            return dict(params), SolverResult(loss=empty, first_loss=empty, iterations=iterations)
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return out, SolverResult(loss=torch.cat([r.loss for r in reports]),
                                 first_loss=torch.cat([r.first_loss for r in reports]), iterations=iterations)

    def _refine_chunk(self, params: Mapping[str, Tensor], targets: Tensor,
                      iterations: int) -> tuple[dict[str, Tensor], SolverResult]:
        free = ("global_orient", "body_pose", "betas", "transl")
        hands = {k: params[k].detach() for k in ("left_hand_pose", "right_hand_pose")}
        if self.config.refine_solver == LEVENBERG_MARQUARDT:
            return self._refine_lm(params, hands, targets, iterations)
        solver = SOLVERS.get(self.config.refine_solver, "TransferConfig.refine_solver")
        variables = [params[k].detach().clone().requires_grad_(True) for k in free]
        scale = 1.0 / targets.shape[1]

        def loss() -> Tensor:
            diff = (_smplx_mesh(self.refine_part, dict(zip(free, variables)) | hands) - targets) * 1000.0
            return (diff * diff).sum((-2, -1)) * scale

        options = SolverOptions() if solver.line_search else SolverOptions(lr=self.config.refine_lr)
        result = solver.minimize(variables, loss, iterations, options)
        return dict(zip(free, (v.detach() for v in variables))) | hands, result

    def _refine_lm(self, params: Mapping[str, Tensor], hands: Mapping[str, Tensor], targets: Tensor,
                   iterations: int) -> tuple[dict[str, Tensor], SolverResult]:
        model = self.refine_part.model
        n = len(targets)
        num_betas = params["betas"].shape[-1]
        rest = model.local_rotmats(dict(hands), n)[:, NUM_BODY_JOINTS:]  # [N, J - 22, 3, 3] fixed joints
        state: State = {
            "rot": rotvec_to_rotmat(torch.cat([params["global_orient"][:, None], params["body_pose"]], 1)),
            "betas": params["betas"].detach(), "transl": params["transl"].detach()}

        def linearize(s: State, with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
            rot = torch.cat([s["rot"], rest], 1)
            coeffs = model.shape_coefficients({"betas": s["betas"]}, n)
            if not with_jacobian:
                return ((self.refine_part(coeffs, rot, s["transl"])[0] - targets) * 1000.0).reshape(n, -1), None
            verts, jac = self.refine_part.forward_with_jacobian(coeffs, rot, s["transl"], range(NUM_BODY_JOINTS),
                                                                num_betas)
            return ((verts - targets) * 1000.0).reshape(n, -1), (jac * 1000.0).reshape(n, -1, jac.shape[-1])

        def retract(s: State, step: Tensor) -> State:
            turn = rotvec_to_rotmat(step[:, 3:3 + 3 * NUM_BODY_JOINTS].reshape(n, NUM_BODY_JOINTS, 3))
            return {"transl": s["transl"] + step[:, :3], "rot": s["rot"] @ turn,
                    "betas": s["betas"] + step[:, 3 + 3 * NUM_BODY_JOINTS:]}

        with torch.no_grad():
            state, result = minimize_levenberg_marquardt(state, linearize, retract, iterations=iterations)
        rotvecs = rotmat_to_rotvec(state["rot"])
        scale = 1.0 / targets.shape[1]
        report = SolverResult(loss=result.loss * scale, first_loss=result.first_loss * scale, iterations=iterations)
        return {"global_orient": rotvecs[:, 0], "body_pose": rotvecs[:, 1:], "betas": state["betas"],
                "transl": state["transl"]} | dict(hands), report

    def forward(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor | None = None, *,
                refine: bool = True, error: bool = True) -> TransferResult:
        """Convert SMPL bodies (any leading dims) to SMPL-X: closed form, then (``refine``) the refinement;
        ``error``: also measure the mean vertex error against the source (NaN when not measured)."""
        lead = torch.broadcast_shapes(global_orient.shape[:-1], body_pose.shape[:-2], betas.shape[:-1])
        flat = {"global_orient": global_orient.expand(*lead, 3).reshape(-1, 3),
                "body_pose": body_pose.expand(*lead, 23, 3).reshape(-1, 23, 3),
                "betas": betas.expand(*lead, betas.shape[-1]).reshape(-1, betas.shape[-1]),
                "transl": None if transl is None else transl.expand(*lead, 3).reshape(-1, 3)}
        params = self.closed_form(**flat)
        solver = None
        if refine and self.config.refine_iterations > 0 and len(params["betas"]):
            targets = self.source_targets(**flat, subset=True)
            params, solver = self.refine(params, targets)
        if error:
            err = self.vertex_error_mm(params, self.source_targets(**flat))
        else:
            err = torch.full((len(params["betas"]),), float("nan"), dtype=params["betas"].dtype,
                             device=params["betas"].device)
        out = {k: v.reshape(*lead, *v.shape[1:]) for k, v in params.items()}
        return TransferResult(params=out, vertex_error_mm=err.reshape(lead), solver=solver)
