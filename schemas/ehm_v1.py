"""EHM record v1: every field of a per-person record, defined once.

A record is a ``dict[str, value]`` with one entry per :data:`FIELDS` name. Numeric fields hold
``np.ndarray`` values of exactly the field's dtype and shape (0-d arrays or numpy/Python scalars for
scalar fields); ``str`` fields hold Python strings. Parts a stage could not produce keep their fill
values and a ``has_*`` mask of False; fields are never null.

Conventions used by :attr:`Field.frame`:

- ``image``: pixels of the source image, x right, y down, origin at the top-left image corner.
- ``camera``: OpenCV camera frame, x right, y down, z forward (metres for positions).
- ``parent``: axis-angle rotation of a joint relative to its parent in the model's kinematic tree.
- ``mediapipe_hand_world``: MediaPipe's metric hand world frame (origin near the hand centre).
- ``shape_space``: coefficients of the model's linear shape / expression basis.
- ``none``: no spatial frame (identifiers, scores, flags).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

SCHEMA_VERSION = "ehm-v1"
"""Name and version of this record schema; written into every record and every Parquet file."""

PARTS = ("provenance", "camera", "keypoints", "body", "hands", "face", "quality")
"""The parts a field belongs to, in documentation order."""

DTYPES = ("float32", "int32", "bool", "str")
"""The element types a field can have."""

FRAMES = ("image", "camera", "parent", "mediapipe_hand_world", "shape_space", "none")
"""Coordinate frames named by :attr:`Field.frame` (see the module docstring)."""


class SchemaError(ValueError):
    """A record (or a file) does not match the schema; the message names the field."""


class QualityFlag(enum.IntFlag):
    """Bits of ``quality_flags`` (meanings in :data:`QUALITY_FLAG_DOCS`). Later versions may add bits;
    bits are never reused."""

    LEFT_HAND_GATED = 1
    RIGHT_HAND_GATED = 2
    WRIST_TWIST_CLAMPED = 4
    BODY_FROM_KEYPOINTS = 8
    FACE_GATED = 16
    NOT_CONVERGED = 32


QUALITY_FLAG_DOCS: dict[QualityFlag, str] = {
    QualityFlag.LEFT_HAND_GATED: "left hand confidence under the gate: body wrist and mean hand pose used",
    QualityFlag.RIGHT_HAND_GATED: "right hand confidence under the gate: body wrist and mean hand pose used",
    QualityFlag.WRIST_TWIST_CLAMPED: "a wrist twist exceeded ±90°; the excess went into the elbow",
    QualityFlag.BODY_FROM_KEYPOINTS: "body fitted to 2D keypoints (no SMPL label to transfer)",
    QualityFlag.FACE_GATED: "face confidence under the gate: FLAME kept at its neutral expression and jaw",
    QualityFlag.NOT_CONVERGED: "refinement stopped at its iteration budget with its objective still falling",
}
"""What each quality flag bit means."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of the record."""

    name: str
    """Column name in batches, Parquet and ``ehm.npz`` / ``meta.json``."""
    dtype: str
    """Element type: one of :data:`DTYPES`."""
    shape: tuple[int, ...]
    """Shape of one record's value; ``()`` for a scalar."""
    unit: str
    """Physical unit: ``px``, ``m``, ``mm``, ``rad``; ``1`` for dimensionless numbers; ``-`` for none."""
    frame: str
    """Coordinate frame: one of :data:`FRAMES`."""
    part: str
    """The part of the record: one of :data:`PARTS`."""
    doc: str
    """What the value means."""
    fill: Any
    """Element value of a placeholder for this field (used when its part is missing)."""
    required: bool = False
    """True when the fill is only a placeholder: :func:`empty_record` needs a real value."""
    allow_nan: bool = False
    """True when NaN means "not measured"; infinities are never allowed."""
    choices: tuple[str, ...] = ()
    """Allowed values of a ``str`` field (empty: any)."""
    pattern: str = ""
    """Regular expression a ``str`` field must match in full (empty: any)."""
    json_object: bool = False
    """True when a ``str`` field holds a JSON object (sorted keys)."""
    mask: str = ""
    """Name of the ``has_*`` field that says whether this value is real (empty: always real)."""
    bounds: tuple[float, float] | None = None
    """Inclusive range every element of a numeric field must lie in (NaN excepted where allowed)."""

    @property
    def member(self) -> str:
        """WebDataset member holding this field: ``meta.json`` (strings, int/bool scalars) or ``ehm.npz``."""
        if self.dtype == "str" or (self.shape == () and self.dtype in ("int32", "bool")):
            return "meta.json"
        return "ehm.npz"

    def fill_value(self) -> Any:
        """A placeholder value: a ``str`` or an array of this field's dtype and shape."""
        if self.dtype == "str":
            return self.fill
        return np.full(self.shape, self.fill, dtype=np.dtype(self.dtype))


def _f32(name: str, shape: tuple[int, ...], unit: str, frame: str, part: str, doc: str, **kw: Any) -> Field:
    return Field(name, "float32", shape, unit, frame, part, doc, fill=kw.pop("fill", 0.0), **kw)


def _i32(name: str, unit: str, part: str, doc: str, **kw: Any) -> Field:
    return Field(name, "int32", (), unit, "none", part, doc, fill=kw.pop("fill", 0), **kw)


def _bool(name: str, shape: tuple[int, ...], part: str, doc: str) -> Field:
    return Field(name, "bool", shape, "-", "none", part, doc, fill=False)


def _str(name: str, part: str, doc: str, **kw: Any) -> Field:
    return Field(name, "str", (), "-", "none", part, doc, fill=kw.pop("fill", ""), **kw)


_P, _C, _K, _B, _H, _F, _Q = PARTS
_BODY = {"mask": "has_body"}
_SMPL = {"mask": "has_smpl_label"}
_HANDS = {"mask": "has_hands"}
_HAND_LANDMARKS = {"mask": "has_hand_landmarks"}
_POSE = {"mask": "has_kp_body"}
_FACE = {"mask": "has_face"}
_NAN = {"fill": float("nan"), "allow_nan": True}
_UNIT = {"bounds": (0.0, 1.0)}
_COUNT = {"bounds": (0, np.iinfo(np.int32).max)}
_SIZE = {"bounds": (1, np.iinfo(np.int32).max)}

FIELDS: tuple[Field, ...] = (
    # --- provenance -------------------------------------------------------------------------------
    _str("key", _P, 'Unique person key "{sample_key}/p{person_index:02d}".', required=True),
    _str("sample_key", _P, "Stable key of the source image or video frame.", required=True),
    _str("source", _P, "Where the sample came from (input path or dataset name, as its source reports it).",
         required=True),
    _str("split", _P, 'Dataset split ("train", "val", ...); letters, digits and "_" only.', required=True,
         pattern=r"[A-Za-z0-9_]+"),
    _i32("person_index", "-", _P, "Index of the person within the sample (0-based).", required=True, **_COUNT),
    _str("track_id", _P, 'One person of one video clip: "<clip>#t<k>" ("<clip>#s<j>#t<k>" in segment j of a long clip); '
                         '"" for still images.'),
    _i32("frame_index", "-", _P, "Frame number within the video (-1 for still images).", fill=-1),
    _i32("image_width", "px", _P, "Width of the source image.", required=True, **_SIZE),
    _i32("image_height", "px", _P, "Height of the source image.", required=True, **_SIZE),
    _str("schema_version", _P, "Record schema name and version.", fill=SCHEMA_VERSION, choices=(SCHEMA_VERSION,)),
    _str("code_version", _P, "pearl version and git commit that wrote the record.", required=True),
    _str("config_hash", _P, "Hash of the resolved job configuration.", required=True),
    _str("body_model_kit", _P, 'Body models used: "synthetic" (the stand-in kit) or "official".', required=True,
         choices=("synthetic", "official")),
    _str("asset_hashes", _P, "Body-model asset file (path relative to the kit) -> sha256.", required=True,
         json_object=True),
    _str("backends", _P, 'Stage -> "backend@version" that produced its fields.', required=True,
         json_object=True),
    # --- person / camera --------------------------------------------------------------------------
    _f32("bbox_xyxy", (4,), "px", "image", _C, "Person box (x0, y0, x1, y1).", required=True),
    _f32("bbox_score", (), "1", "none", _C, "Box confidence in [0, 1] (1 for labelled boxes).", required=True,
         **_UNIT),
    _str("bbox_source", _C, 'Where the box came from: "label" or "detector".', required=True,
         choices=("label", "detector")),
    _f32("crop_xyxy", (4,), "px", "image", _C,
         "Image region (x0, y0, x1, y1) shown by crop.jpg, resized to the crop size (zeros: no crop)."),
    _f32("cam_intrinsics", (3, 3), "px", "camera", _C,
         "Pinhole intrinsics K mapping the camera frame to image pixels (fx, fy, cx, cy).", required=True),
    # --- keypoints --------------------------------------------------------------------------------
    _f32("kp2d_wholebody", (133, 3), "px", "image", _K,
         "COCO-WholeBody keypoints (x, y, confidence): 17 body, 6 feet, 68 face, 21 left hand, 21 right hand; "
         "confidence 0 where not detected."),
    _f32("mp_pose_landmarks", (33, 4), "px", "image", _K,
         "MediaPipe BlazePose landmarks (x, y, z, visibility); z is relative depth in pixel units (smaller: "
         "nearer), visibility in [0, 1].", **_POSE),
    _f32("mp_face_landmarks", (478, 3), "px", "image", _K,
         "MediaPipe face mesh landmarks (x, y, z); z is relative depth in pixel units.", **_FACE),
    _f32("mp_hand_landmarks_3d", (2, 21, 3), "m", "mediapipe_hand_world", _K,
         "MediaPipe 3D hand landmarks; [0] left hand, [1] right hand.", **_HAND_LANDMARKS),
    _bool("has_kp_body", (), _K, "Body keypoints were detected."),
    _bool("has_face", (), _K, "A face was detected (face landmarks and the FLAME fields are real)."),
    _bool("has_hands", (2,), _K, "Hands found ([0] left, [1] right): the MANO fields are real (has_hand_landmarks "
          "says whether from the hand's own landmarks or from the body pose alone)."),
    _bool("has_hand_landmarks", (2,), _K,
          "MediaPipe's hand landmark model found the hand ([0] left, [1] right): mp_hand_landmarks_3d is "
          "real. A hand with has_hands but not this came from another keypoints backend (whole-body ONNX: "
          "21 keypoints, no 3D landmarks) or, with keypoints/mediapipe, was placed from the body pose's "
          "wrist, index and pinky points alone (no hand keypoints; MANO wrist orientation only, fingers at "
          "the mean pose)."),
    _f32("conf_body", (), "1", "none", _K, "Mean confidence of the body keypoints in [0, 1].", **_UNIT),
    _f32("conf_face", (), "1", "none", _K, "Face detection confidence in [0, 1].", **_UNIT),
    _f32("conf_hands", (2,), "1", "none", _K, "Hand detection confidences in [0, 1] ([0] left, [1] right).",
         **_UNIT),
    # --- body: SMPL-X in the camera frame ---------------------------------------------------------
    _bool("has_body", (), _B, "The SMPL-X body fields are real."),
    _f32("smplx_betas", (10,), "1", "shape_space", _B, "SMPL-X shape coefficients.", **_BODY),
    _f32("smplx_global_orient", (3,), "rad", "camera", _B, "SMPL-X root rotation (axis-angle).", **_BODY),
    _f32("smplx_body_pose", (21, 3), "rad", "parent", _B, "SMPL-X body joint rotations 1..21.", **_BODY),
    _f32("smplx_transl", (3,), "m", "camera", _B, "SMPL-X translation (smplx's transl argument).", **_BODY),
    _f32("smplx_left_hand_pose", (15, 3), "rad", "parent", _B, "SMPL-X left hand joint rotations.", **_BODY),
    _f32("smplx_right_hand_pose", (15, 3), "rad", "parent", _B, "SMPL-X right hand joint rotations.", **_BODY),
    _f32("smplx_jaw_pose", (3,), "rad", "parent", _B, "SMPL-X jaw rotation.", **_BODY),
    _f32("smplx_leye_pose", (3,), "rad", "parent", _B, "SMPL-X left eye rotation.", **_BODY),
    _f32("smplx_reye_pose", (3,), "rad", "parent", _B, "SMPL-X right eye rotation.", **_BODY),
    _f32("smplx_expression", (10,), "1", "shape_space", _B, "SMPL-X expression coefficients.", **_BODY),
    _bool("has_smpl_label", (), _B, "The source supplied an SMPL label (the smpl_* fields are real)."),
    _f32("smpl_global_orient", (3,), "rad", "camera", _B, "Source SMPL root rotation.", **_SMPL),
    _f32("smpl_body_pose", (23, 3), "rad", "parent", _B, "Source SMPL joint rotations 1..23.", **_SMPL),
    _f32("smpl_betas", (10,), "1", "shape_space", _B, "Source SMPL shape coefficients.", **_SMPL),
    _f32("smpl_transl", (3,), "m", "camera", _B, "Source SMPL translation (smplx's transl argument).", **_SMPL),
    # --- hands: MANO ------------------------------------------------------------------------------
    _f32("mano_global_orient", (2, 3), "rad", "camera", _H,
         "MANO wrist rotation; [0] left hand (MANO left model), [1] right hand (MANO right model).", **_HANDS),
    _f32("mano_hand_pose", (2, 15, 3), "rad", "parent", _H, "MANO finger joint rotations ([0] left, [1] right).",
         **_HANDS),
    _f32("mano_betas", (2, 10), "1", "shape_space", _H, "MANO shape coefficients ([0] left, [1] right).", **_HANDS),
    _f32("hand_scale", (2,), "1", "none", _H, "Scale of each MANO hand relative to the SMPL-X hand in EHM.",
         fill=1.0, **_HANDS),
    # --- face: FLAME ------------------------------------------------------------------------------
    _f32("flame_shape", (300,), "1", "shape_space", _F, "FLAME shape coefficients.", **_FACE),
    _f32("flame_expression", (100,), "1", "shape_space", _F, "FLAME expression coefficients.", **_FACE),
    _f32("flame_jaw_pose", (3,), "rad", "parent", _F, "FLAME jaw rotation.", **_FACE),
    _f32("flame_eye_pose", (6,), "rad", "parent", _F,
         "FLAME eyeball rotations: joints 3 and 4 in FLAME's joint order, 3 values each.", **_FACE),
    _f32("flame_eyelids", (2,), "1", "none", _F, "FLAME 2023 eyelid blendshape weights (two eyelids).", **_FACE),
    _f32("head_scale", (3,), "1", "none", _F, "Per-axis scale of the FLAME head relative to the SMPL-X head in EHM.",
         fill=1.0, **_FACE),
    # --- quality ----------------------------------------------------------------------------------
    _f32("quality_reproj_px_body", (), "px", "image", _Q,
         "Mean reprojection error of the fitted body joints against confident body keypoints (NaN: not measured).",
         **_NAN),
    _f32("quality_reproj_px_face", (), "px", "image", _Q,
         "Mean reprojection error of the FLAME landmarks against the face keypoints (NaN: not measured).", **_NAN),
    _f32("quality_reproj_px_hands", (2,), "px", "image", _Q,
         "Mean reprojection error of each hand's joints against its keypoints (NaN: not measured).", **_NAN),
    _f32("quality_reproj_norm_body", (), "1", "none", _Q,
         "quality_reproj_px_body divided by the longer side of bbox_xyxy.", **_NAN),
    _f32("quality_reproj_norm_face", (), "1", "none", _Q,
         "quality_reproj_px_face divided by the longer side of the face keypoints' box.", **_NAN),
    _f32("quality_reproj_norm_hands", (2,), "1", "none", _Q,
         "quality_reproj_px_hands divided by the longer side of each hand keypoints' box.", **_NAN),
    _f32("quality_transfer_vertex_mm", (), "mm", "none", _Q,
         "Mean SMPL→SMPL-X vertex error against the source SMPL mesh (NaN: no SMPL label).", **_NAN),
    _f32("quality_final_loss", (), "1", "none", _Q, "Refinement objective at its last iteration (NaN: not refined).",
         **_NAN),
    _i32("quality_flags", "-", _Q, "Bitmask of QualityFlag bits (see the quality_flags table)."),
    _f32("quality_silhouette_iou", (), "1", "none", _Q,
         "IoU of the rendered EHM silhouette and MediaPipe's person segmentation over the person crop "
         "(NaN: not scored).", **_NAN),
    _f32("quality_silhouette_boundary_iou", (), "1", "none", _Q,
         "IoU of the two masks' inner boundary bands along their outlines (NaN: not scored).", **_NAN),
    _str("quality_loss_terms", _Q,
         'Refinement loss term ("flame/...", "ehm/...") -> its final weighted value ("{}": not refined).',
         json_object=True, fill="{}"),
)
"""The EHM v1 record, in column order."""

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def field(name: str) -> Field:
    """The field called ``name``; ``KeyError`` naming it when the schema has no such field."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"schema {SCHEMA_VERSION} has no field {name!r}") from None


def fields_of_part(part: str) -> tuple[Field, ...]:
    """Fields of one part (``body``, ``hands``, ...), in column order."""
    if part not in PARTS:
        raise KeyError(f"unknown part {part!r}; parts are {', '.join(PARTS)}")
    return tuple(f for f in FIELDS if f.part == part)


def fill_values(names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Placeholder values for ``names`` (default: all fields), e.g. for a stage's skipped rows."""
    return {n: field(n).fill_value() for n in (FIELD_NAMES if names is None else names)}


def empty_record(**values: Any) -> dict[str, Any]:
    """A record with every part missing (``has_*`` False, fills elsewhere), updated with ``values``.

    The fields with ``required=True`` (provenance, box, intrinsics) must be given; ``SchemaError``
    names those missing or unknown.
    """
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise SchemaError(f"empty_record: unknown field(s) {', '.join(unknown)}")
    missing = [f.name for f in FIELDS if f.required and f.name not in values]
    if missing:
        raise SchemaError(f"empty_record: required field(s) not given: {', '.join(missing)}")
    record = fill_values()
    record.update(values)
    return record


def person_key(sample_key: str, person_index: int) -> str:
    """The record key ``"{sample_key}/p{person_index:02d}"``."""
    return f"{sample_key}/p{person_index:02d}"


_KIND = {"float32": "f", "int32": "i", "bool": "b"}


def _coerce(f: Field, value: Any) -> Any:
    """``value`` as the field's canonical type (``str`` or exact-dtype array); raises naming the field."""
    if f.dtype == "str":
        if not isinstance(value, str):
            raise SchemaError(f"field {f.name!r} must be a str, got {type(value).__name__}")
        if f.choices and value not in f.choices:
            raise SchemaError(f"field {f.name!r} is {value!r}; allowed values: {', '.join(map(repr, f.choices))}")
        if f.pattern and not re.fullmatch(f.pattern, value):
            raise SchemaError(f"field {f.name!r} is {value!r}; it must match {f.pattern!r}")
        if f.json_object:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"field {f.name!r} is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise SchemaError(f"field {f.name!r} must hold a JSON object, got {type(parsed).__name__}")
        return value
    want = np.dtype(f.dtype)
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        arr = np.asarray(value)
        if arr.dtype != want:
            raise SchemaError(
                f"field {f.name!r} has dtype {arr.dtype}, expected {want} (cast with .astype(np.{want}))"
            )
    elif f.shape == () and isinstance(value, (bool, int, float)) and not isinstance(value, str):
        arr = _python_scalar(f, value)
    else:
        raise SchemaError(
            f"field {f.name!r} must be a numpy array of {want}{list(f.shape)}, got {type(value).__name__}"
        )
    if arr.shape != f.shape:
        raise SchemaError(f"field {f.name!r} has shape {tuple(arr.shape)}, expected {f.shape}")
    if f.dtype == "float32":
        bad = ~np.isfinite(arr)
        if f.allow_nan:
            bad &= ~np.isnan(arr)
        if bad.any():
            what = "inf" if f.allow_nan else "NaN/inf"
            raise SchemaError(f"field {f.name!r} holds {what}{_where(bad)}")
    if f.bounds is not None:
        lo, hi = f.bounds
        outside = (arr < lo) | (arr > hi)
        if outside.any():
            first = arr[tuple(np.argwhere(outside)[0])]
            raise SchemaError(f"field {f.name!r} holds {first}{_where(outside)}, outside [{lo}, {hi}]")
    return arr


def _where(mask: np.ndarray) -> str:
    """`` at index [i, j]`` of the first True element of ``mask`` (empty for a scalar)."""
    return f" at index {np.argwhere(mask)[0].tolist()}" if mask.ndim else ""


def _python_scalar(f: Field, value: bool | int | float) -> np.ndarray:
    """A Python scalar as a 0-d array of the field's dtype, refusing lossy conversions."""
    kind = _KIND[f.dtype]
    if kind == "b" and not isinstance(value, bool):
        raise SchemaError(f"field {f.name!r} must be a bool, got {type(value).__name__}")
    if kind == "i":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"field {f.name!r} must be an int, got {type(value).__name__}")
        info = np.iinfo(np.int32)
        if not info.min <= value <= info.max:
            raise SchemaError(f"field {f.name!r} is {value}, outside int32")
    if kind == "f":
        if isinstance(value, bool):
            raise SchemaError(f"field {f.name!r} must be a float, got bool")
        if math.isfinite(value) and abs(value) > float(np.finfo(np.float32).max):
            raise SchemaError(f"field {f.name!r} is {value}, outside float32")
    return np.asarray(value, dtype=np.dtype(f.dtype))


def validate(record: Mapping[str, Any], *, allow_extra: bool = False) -> dict[str, Any]:
    """Check ``record`` against the schema and return it in canonical form.

    Canonical form: ``str`` for string fields, an ``np.ndarray`` of exactly the field's dtype and shape
    (0-d for scalars) otherwise, in column order. Raises :class:`SchemaError` naming the field: missing,
    wrong type or dtype (no silent casts from float64), wrong shape, NaN/inf where not allowed, a value
    outside a field's choices, malformed JSON, or a ``key`` that disagrees with ``sample_key`` and
    ``person_index``. Keys not in the schema are errors unless ``allow_extra`` (then they are dropped).
    """
    if not isinstance(record, Mapping):
        raise SchemaError(f"a record must be a mapping of field name to value, got {type(record).__name__}")
    missing = [n for n in FIELD_NAMES if n not in record]
    if missing:
        raise SchemaError(f"record is missing field {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                       if len(missing) > 1 else ""))
    if not allow_extra:
        extra = sorted(set(record) - set(FIELD_NAMES))
        if extra:
            raise SchemaError(f"record has field {extra[0]!r}, which schema {SCHEMA_VERSION} does not define")
    out = {f.name: _coerce(f, record[f.name]) for f in FIELDS}
    expected = person_key(out["sample_key"], int(out["person_index"]))
    if out["key"] != expected:
        raise SchemaError(f"field 'key' is {out['key']!r}; from sample_key and person_index it must be {expected!r}")
    return out


def check_version(version: str, *, source: str = "data") -> None:
    """Raise :class:`SchemaError` unless ``version`` is the schema this code reads."""
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{source} was written with schema {version!r}; this pearl reads {SCHEMA_VERSION!r} "
            "(install the pearl release that matches, or migrate the data: see docs/schema.md)"
        )


def random_record(seed: int = 0, **values: Any) -> dict[str, Any]:
    """A valid record of random values (for tests, examples and benchmarks), updated with ``values``.

    Floats are standard-normal float32 (uniform within a field's bounds; NaN in about a quarter of the
    elements of NaN-allowed fields), masks random, strings drawn from each field's choices; the same
    seed gives the same record.
    """
    rng = np.random.default_rng(seed)
    record: dict[str, Any] = {}
    for f in FIELDS:
        if f.dtype == "float32" and f.bounds is not None:
            value = rng.uniform(*f.bounds, size=f.shape).astype(np.float32)
        elif f.dtype == "float32":
            value = rng.standard_normal(f.shape).astype(np.float32)
            if f.allow_nan:
                value[rng.random(f.shape) < 0.25] = np.nan
        elif f.dtype == "int32":
            value = np.asarray(rng.integers(1, 100), dtype=np.int32)
        elif f.dtype == "bool":
            value = rng.random(f.shape) < 0.5
        elif f.choices:
            value = f.choices[int(rng.integers(len(f.choices)))]
        elif f.json_object:
            value = json.dumps({"x": int(rng.integers(1000))}, sort_keys=True)
        else:
            value = f"{f.name}_{int(rng.integers(1000))}"
        record[f.name] = value
    record.update(values)
    if "key" not in values:
        record["key"] = person_key(record["sample_key"], int(record["person_index"]))
    return record
