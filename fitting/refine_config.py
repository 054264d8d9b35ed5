"""Settings of the batched EHM refinement (:class:`fitting.refine.Refiner`): the solver, the two stages'
budgets, term weights and per-block step sizes, the gates and the wrist integration.

Every class is a dataclass whose field docstrings are the settings' documentation (``docs/refinement.md``
explains each term); nested configs also take a mapping of their fields, as YAML gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fitting.solvers import SOLVERS, SolverOptions


def _sub_config(cls: type, value: Any) -> Any:
    """A nested config from a dataclass instance or a mapping of its fields (as YAML gives it)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def _check_steps(owner: str, steps: Mapping[str, float], defaults: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(steps) - set(defaults))
    if unknown:
        raise ValueError(f"{owner}.steps: unknown block(s) {unknown}; known: {sorted(defaults)}")
    merged = {**defaults, **{k: float(v) for k, v in steps.items()}}
    bad = [k for k, v in merged.items() if not v > 0]
    if bad:
        raise ValueError(f"{owner}.steps: step sizes must be positive, got {bad}")
    return merged


@dataclass
class SolverConfig:
    """Which solver runs both stages, and its settings."""

    name: str = "adam"
    """``adam``, ``adamw`` or ``lbfgs`` (see :data:`fitting.solvers.SOLVERS`)."""
    lr: float = 1.0
    """Learning rate in units of each block's ``step`` (Adam moves a block by about ``lr * step`` per
    iteration early on); L-BFGS: the initial step of its strong-Wolfe line search."""
    lr_final: float = 0.1
    """Adam / AdamW: the learning rate decays geometrically from ``lr`` to this over the budget."""
    weight_decay: float = 0.0
    """AdamW only: decoupled decay of every offset towards its initial value (0 = plain Adam)."""
    history: int = 10
    """L-BFGS only: curvature pairs kept."""

    def __post_init__(self) -> None:
        SOLVERS.get(self.name, "SolverConfig.name")
        if not self.lr > 0 or not self.lr_final > 0 or self.weight_decay < 0 or self.history < 1:
            raise ValueError(f"SolverConfig: lr and lr_final must be > 0, weight_decay >= 0, history >= 1; got {self}")

    def options(self) -> SolverOptions:
        """The settings as the registered solvers read them."""
        return SolverOptions(lr=self.lr, lr_final=self.lr_final, weight_decay=self.weight_decay, history=self.history)


FLAME_STEPS = {"head_rotation": 0.02, "head_translation": 0.005, "flame_expression": 0.05, "flame_jaw_pose": 0.01,
               "flame_eye_pose": 0.02, "flame_eyelids": 0.05, "flame_shape": 0.02}
"""Default per-iteration step of each FLAME-stage block (rad, m or coefficient units)."""
EHM_STEPS = {"global_orient": 0.01, "body_pose": 0.02, "transl": 0.01, "betas": 0.02, "head_scale": 0.002,
             "hand_scale": 0.002, "mano_hand_pose": 0.01}
"""Default per-iteration step of each EHM-stage block (rad, m or coefficient units)."""


@dataclass
class StageConfig:
    """Settings both stages have: budget, keypoint gate, residual units and step overrides."""

    STEP_DEFAULTS: ClassVar[dict[str, float]] = {}

    iterations: int = 100
    """Solver iterations (a fixed budget)."""
    keypoint_threshold: float = 0.3
    """Keypoints count only above this confidence, with weight ``2 * confidence`` then (GUAVA's gate, 0.3)."""
    reference_px: float = 1000.0
    """2D residuals are in px of the part scaled to this size (see each stage)."""
    delta_px: float = 1.0
    """Pseudo-Huber threshold of the residuals (reference px; mm for 3D ones)."""
    steps: dict[str, float] = field(default_factory=dict)
    """Per-block step overrides (keys of the stage's default steps)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.iterations < 0:
            raise ValueError(f"{name}.iterations must be >= 0, got {self.iterations}")
        self.steps = _check_steps(name, self.steps, self.STEP_DEFAULTS)


@dataclass
class FlameStageConfig(StageConfig):
    """The FLAME stage: weights of its terms (``docs/refinement.md``); steps default to :data:`FLAME_STEPS`."""

    STEP_DEFAULTS: ClassVar[dict[str, float]] = FLAME_STEPS

    reference_px: float = 256.0
    """2D residuals are scaled to a face box of this many px (the longer side of the face keypoints' box)."""
    landmarks68: float = 10.0
    """68 face keypoints (``kp2d_wholebody`` 23..90), robust distance in px of a ``reference_px`` face (GUAVA
    weighs its 68/70-point term 10)."""
    landmarks_mediapipe: float = 10.0
    """MediaPipe face-mesh landmarks through FLAME's MediaPipe embedding (GUAVA: 10)."""
    iris: float = 10.0
    """MediaPipe iris centres against FLAME's pupils (the eyeball vertices farthest forward): observes the
    eye pose (GUAVA fits eye pose to its eye landmarks in a second pass)."""
    shape_prior: float = 5.0
    """Mean square of the FLAME shape coefficients (GUAVA: 5)."""
    expression_prior: float = 0.5
    """Mean square of the expression coefficients (GUAVA: 0.5)."""
    jaw_prior: float = 5e3
    """Mean square of the jaw rotation's y and z components, rad^2 (GUAVA: 5e3: the jaw opens about x)."""
    eye_prior: float = 1.0
    """Mean square of the eye rotations, rad^2 (keeps unobserved eyes straight)."""
    eyelid_prior: float = 0.5
    """Mean square of the eyelid weights (kits with eyelid blend shapes only)."""
    head_rotation_to_init: float = 1.0
    """Mean square of the head rotation's change from where the body put it, rad^2."""
    head_translation_to_init: float = 100.0
    """Mean square of the head position's change, m^2 (0.1 m costs 1)."""


@dataclass
class EhmStageConfig(StageConfig):
    """The EHM stage: weights of its terms (``docs/refinement.md``); steps default to :data:`EHM_STEPS`.
    ``reference_px`` is the person box (the longer side of ``bbox_xyxy``) and ``keypoint_threshold`` gates the
    body, feet and face keypoints."""

    STEP_DEFAULTS: ClassVar[dict[str, float]] = EHM_STEPS

    iterations: int = 200
    """Solver iterations (a fixed budget). At 100, the Grace Hopper example's body stopped at a
    reprojection of 0.051 box sides without being flagged; at 200 it reaches 0.017."""
    keypoints_2d: float = 0.2
    """Confidence-gated COCO-WholeBody keypoints with GUAVA's per-keypoint weights
    (:data:`fitting.objectives.WHOLEBODY_WEIGHTS`), robust distance in px of a ``reference_px`` person box
    (GUAVA: 0.2)."""
    head_vertices: float = 5.0
    """Head vertices (those moved rigidly by the head joint) against the FLAME stage's head: image position
    in reference px and depth relative to the eyes in mm (GUAVA: 5)."""
    hand_vertices: float = 2.0
    """Hand vertices relative to the wrist against the MANO hand (its orientation and fingers, scaled by the
    current hand scale), mm; visible hands only (GUAVA: 0.25 on its screen-space hand vertices; here higher,
    because our hand results carry no image position and the term alone holds the hand's orientation)."""
    depth_to_init: float = 0.05
    """Robust change of the body joints' depth from the start, mm (GUAVA keeps depth near its start too:
    depth is what 2D keypoints say least about)."""
    pose_to_init: float = 50.0
    """Mean square change of the body pose from the start (after wrist integration), rad^2."""
    pose_prior: float = 0.05
    """:func:`fitting.priors.pose_prior` (sum over joints of range-normalised squares)."""
    joint_limits: float = 100.0
    """:func:`fitting.priors.joint_limit_penalty` (sum of squared excursions, rad^2)."""
    shape_prior: float = 0.1
    """Mean square of the SMPL-X betas (GUAVA: 0.1)."""
    scale_prior: float = 100.0
    """Mean square of ``head_scale - 1`` plus that of ``hand_scale - 1`` (GUAVA: 100)."""
    hand_pose_to_init: float = 10.0
    """Mean square change of the finger rotations from the hand result, rad^2 (with ``fingers``)."""
    silhouette: float = 0.0
    """Trimap silhouette loss against the person mask (:func:`fitting.objectives.trimap_silhouette_loss`);
    0 = off. Needs ``person_mask`` in the inputs; costly (a soft rasterisation per iteration)."""
    silhouette_band: int = 2
    """Half-width in mask px of the trimap's unknown band."""
    silhouette_sigma: float = 1.0
    """Soft-rasteriser blur, mask px^2."""
    fingers: bool = False
    """Also refine the finger rotations (MANO hand pose) of visible hands from their 2D keypoints. Off by
    default: on the synthetic benchmark it did not lower the hands' PA-PVE (``docs/refinement.md``)."""
    hand_keypoint_threshold: float = 0.5
    """Hand keypoints count only above this confidence (GUAVA: 0.7 for its DWPose scores)."""


WRIST_MODES = ("adaptive", "copy_paste")
"""Wrist integration modes of :attr:`RefineConfig.wrist`."""


@dataclass
class RefineConfig:
    """Everything :class:`fitting.refine.Refiner` does (see :mod:`fitting.refine`)."""

    flame: FlameStageConfig = field(default_factory=FlameStageConfig)
    """The FLAME stage."""
    ehm: EhmStageConfig = field(default_factory=EhmStageConfig)
    """The EHM stage."""
    solver: SolverConfig = field(default_factory=SolverConfig)
    """The solver of both stages."""
    hand_gate: float = 0.5
    """Hands under this confidence (``conf_hands``), or not detected, are gated."""
    face_gate: float = 0.5
    """Faces under this confidence (``conf_face``), or not detected, are gated."""
    wrist: str = "adaptive"
    """Wrist integration: ``adaptive`` (twist beyond ``max_twist_deg`` moves into the elbow) or
    ``copy_paste`` (the hand's orientation pasted as it is)."""
    max_twist_deg: float = 90.0
    """Largest wrist twist kept by adaptive integration, degrees."""
    share_identity: bool = True
    """Rows with the same identity share shape and head / hand scales."""
    not_converged_tol: float = 0.05
    """A stage whose objective still fell by more than this fraction over the last tenth of its budget
    flags the sample ``NOT_CONVERGED``."""
    seed: int = 0
    """Seed of torch's generators (the refinement itself draws no random numbers)."""

    def __post_init__(self) -> None:
        self.flame = _sub_config(FlameStageConfig, self.flame)
        self.ehm = _sub_config(EhmStageConfig, self.ehm)
        self.solver = _sub_config(SolverConfig, self.solver)
        if self.wrist not in WRIST_MODES:
            raise ValueError(f"RefineConfig.wrist must be one of {WRIST_MODES}, got {self.wrist!r}")
        if not 0.0 <= self.max_twist_deg <= 180.0:
            raise ValueError(f"RefineConfig.max_twist_deg must be in [0, 180], got {self.max_twist_deg}")
