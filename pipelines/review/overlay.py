"""Overlays drawn server-side: a person's crop with its shaded EHM mesh and its 2D keypoints, per part.

The crop JPEG shows the image region ``crop_xyxy`` resized to the crop's size; the overlay is drawn at
any output size by mapping image pixels into that region (:func:`region_intrinsics` does it for the
camera, so the mesh is rendered directly at the output resolution by :func:`model.render.render_mesh`).
A person without a stored crop gets a grey square around its box (1.25 box sides). The mesh is the EHM
of the record's parameters (:func:`model.ehm_record.ehm_params_from_columns`), in the camera frame the
record's ``cam_intrinsics`` projects; rows without a body (``has_body`` False) get keypoints only.

Parts: ``body`` (the SMPL-X body, keypoints 0-22 with the feet), ``hands`` (the MANO hands, keypoints
91-132) and ``face`` (the FLAME head, keypoints 23-90). A mesh triangle belongs to the head or a hand when
all its corners are that part's vertices (``EHM.head_vertex_ids``, ``left/right_hand_vertex_ids``).
Keypoints with confidence under :data:`MIN_CONFIDENCE` are not drawn.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from schemas import keypoints as kp_layout

log = logging.getLogger(__name__)

PARTS = ("body", "hands", "face")
"""Toggleable parts, in the page's order."""
KEYPOINT_PARTS = {"body": range(kp_layout.SCORED_PARTS["body"].start, kp_layout.SCORED_PARTS["body"].stop),
                  "face": range(kp_layout.FACE.start, kp_layout.FACE.stop),
                  "hands": range(kp_layout.LEFT_HAND.start, kp_layout.RIGHT_HAND.stop)}
"""COCO-WholeBody-133 indices drawn for each part (``schemas.keypoints``)."""
PART_COLORS = {"body": (0.62, 0.74, 0.90), "hands": (0.55, 0.85, 0.55), "face": (0.96, 0.76, 0.55)}
"""Mesh colour of each part (RGB in [0, 1])."""
KEYPOINT_COLORS = {"body": (255, 140, 0), "face": (0, 220, 255), "left_hand": (60, 220, 60),
                   "right_hand": (255, 60, 200)}
"""Keypoint colour by COCO-WholeBody part (the feet draw as body)."""
MIN_CONFIDENCE = 0.3
"""Keypoints under this confidence are not drawn."""
MESH_OPACITY = 0.6
"""Opacity of the mesh over the photo."""
NO_CROP_SCALE = 1.25
"""Without a stored crop: side of the drawn square in box sides."""


def image_region(crop_xyxy: np.ndarray, bbox_xyxy: np.ndarray) -> np.ndarray:
    """``[4]`` image region (x0, y0, x1, y1, px) the overlay shows: ``crop_xyxy``, or without a crop (all
    zeros) a square of :data:`NO_CROP_SCALE` box sides around the box."""
    crop = np.asarray(crop_xyxy, np.float64)
    if np.any(crop != 0) and crop[2] > crop[0] and crop[3] > crop[1]:
        return crop
    box = np.asarray(bbox_xyxy, np.float64)
    centre = (box[:2] + box[2:]) / 2
    half = max(box[2] - box[0], box[3] - box[1], 1.0) * NO_CROP_SCALE / 2
    return np.concatenate([centre - half, centre + half])


def region_intrinsics(intrinsics: np.ndarray, region: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` intrinsics of an image showing ``region`` (x0, y0, x1, y1 in the original image's px)
    resized to ``width x height``: ``K' = S K`` with ``S`` the region-to-output affine map."""
    x0, y0, x1, y1 = np.asarray(region, np.float64)
    s = np.array([[width / (x1 - x0), 0.0, -x0 * width / (x1 - x0)],
                  [0.0, height / (y1 - y0), -y0 * height / (y1 - y0)],
                  [0.0, 0.0, 1.0]])
    return s @ np.asarray(intrinsics, np.float64)


def to_region(points: np.ndarray, region: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image-px points ``[..., 2]`` in the output pixels of ``region`` resized to ``width x height``."""
    x0, y0, x1, y1 = np.asarray(region, np.float64)
    p = np.asarray(points, np.float64)
    return np.stack([(p[..., 0] - x0) * width / (x1 - x0), (p[..., 1] - y0) * height / (y1 - y0)], -1)


class MeshModel:
    """The EHM of a body-model folder, loaded once, posing records' parameters into camera-frame meshes.

    The folder may be given later (:meth:`set_folder`, after a background check) or never
    (:meth:`fail`); :meth:`load` waits up to ``wait_s`` for one of the two, so an overlay asked for while
    the models are still being checked gets its mesh instead of none.
    """

    def __init__(self, folder: str | None = None, *, wait_s: float = 300.0) -> None:
        self.folder = folder
        self.error: str | None = None
        self.wait_s = wait_s
        self._ehm: Any = None
        self._part_faces: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._decided = threading.Event()
        if folder is not None:
            self._decided.set()

    def set_folder(self, folder: str) -> None:
        """Use the body models in ``folder``."""
        self.folder = folder
        self._decided.set()

    def fail(self, error: str) -> None:
        """No body models: meshes are not drawn, for the reason ``error``."""
        self.error = error
        self._decided.set()

    def load(self) -> Any:
        """The EHM model (None when it cannot be loaded; :attr:`error` says why)."""
        if not self._decided.wait(self.wait_s):
            return None
        with self._lock:
            if self._ehm is None and self.error is None:
                try:
                    self._ehm = self._build()
                except Exception as exc:  # noqa: BLE001 - the page shows keypoints only and says why
                    self.error = f"cannot load the EHM from {self.folder}: {exc}"
                    log.warning("%s", self.error)
            return self._ehm

    def _build(self) -> Any:
        import torch

        from model.ehm import EHM

        ehm = EHM.from_dir(self.folder, camera_frame="opencv").eval()
        labels = torch.zeros(ehm.assembly.shape[0], dtype=torch.long)  # vertex part: 0 body, 1 hands, 2 face
        labels[ehm.left_hand_vertex_ids] = 1
        labels[ehm.right_hand_vertex_ids] = 1
        labels[ehm.head_vertex_ids] = 2
        corners = labels[ehm.faces.long()]  # [F, 3]
        same = (corners == corners[:, :1]).all(-1)
        face_part = torch.where(same, corners[:, 0], torch.zeros_like(corners[:, 0]))
        self._part_faces = {name: face_part == i for i, name in enumerate(PARTS)}
        self._vertex_part = labels
        return ehm

    @property
    def faces(self) -> Any:
        ehm = self.load()
        return None if ehm is None else ehm.faces

    def vertices(self, record: Mapping[str, Any]) -> Any:
        """Camera-frame vertices ``[V, 3]`` (float32 tensor) of a record's EHM, or None without a body or
        without a model."""
        import torch

        from model.ehm_record import ehm_params_from_columns

        ehm = self.load()
        if ehm is None or not bool(record.get("has_body", False)):
            return None
        params = ehm_params_from_columns({k: np.asarray(v)[None] for k, v in record.items() if hasattr(v, "shape")},
                                         eyelids=ehm.flame.has_eyelids)
        with torch.no_grad():
            return ehm(**params).vertices[0]

    def face_mask(self, parts: Iterable[str]) -> Any:
        """``[F]`` bool: the triangles of the chosen parts."""
        import torch

        self.load()
        chosen = [self._part_faces[p] for p in parts if p in self._part_faces]
        if not chosen:
            return torch.zeros_like(next(iter(self._part_faces.values())))
        return torch.stack(chosen).any(0)

    def vertex_parts(self) -> Any:
        """``[V]`` int64 part of each vertex: 0 body, 1 hands, 2 face (the order of :data:`PARTS`)."""
        self.load()
        return self._vertex_part

    def vertex_colors(self) -> Any:
        """``[V, 3]`` per-vertex part colours (:data:`PART_COLORS`)."""
        import torch

        self.load()
        palette = torch.tensor([PART_COLORS[p] for p in PARTS])
        return palette[self._vertex_part]


def _decode(jpeg: bytes | None, size: tuple[int, int]) -> Any:
    from PIL import Image

    if jpeg is None:
        return Image.new("RGB", size, (96, 96, 96))
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.convert("RGB").resize(size, Image.BILINEAR)


def draw_keypoints(image: Any, kp_px: np.ndarray, parts: Iterable[str], *, min_confidence: float = MIN_CONFIDENCE,
                   radius: float | None = None) -> None:
    """Draw ``kp_px  # [133, 3]`` (x, y in the image's px, confidence) of the chosen parts onto a PIL
    image in place: skeleton links, then points."""
    from PIL import ImageDraw

    chosen = set()
    for p in parts:
        chosen.update(KEYPOINT_PARTS.get(p, ()))
    ok = (kp_px[:, 2] >= min_confidence) & np.isfinite(kp_px[:, :2]).all(-1)
    colors = np.zeros((kp_layout.NUM_KEYPOINTS, 3), np.int64)
    for name, sl in kp_layout.PARTS.items():
        colors[sl] = KEYPOINT_COLORS.get(name, KEYPOINT_COLORS["body"])
    draw = ImageDraw.Draw(image)
    r = radius if radius is not None else max(1.0, min(image.size) / 128)
    width = max(1, int(round(r * 0.8)))
    for a, b in kp_layout.SKELETON:
        if a in chosen and b in chosen and ok[a] and ok[b]:
            draw.line([tuple(kp_px[a, :2]), tuple(kp_px[b, :2])], fill=tuple(colors[b]), width=width)
    face = range(kp_layout.FACE.start, kp_layout.FACE.stop)
    for i in sorted(chosen):
        if ok[i]:
            x, y = kp_px[i, :2]
            if i in face:  # 68 face points share a small area: smaller, no outline
                draw.ellipse([x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6], fill=tuple(colors[i]))
            else:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(colors[i]), outline=(0, 0, 0))


def render_overlay(
    record: Mapping[str, Any],
    crop_jpeg: bytes | None,
    model: MeshModel | None,
    *,
    size: int,
    mesh: bool = True,
    keypoints: bool = True,
    parts: Iterable[str] = PARTS,
) -> Any:
    """The overlay as a ``size x size`` PIL RGB image (see the module docstring). ``record`` needs the
    columns of :data:`pipelines.review.data.OVERLAY_COLUMNS` and, for the mesh, the EHM parameters."""
    import torch

    from model.render import render_mesh

    if not 16 <= size <= 2048:
        raise ValueError(f"size must lie in [16, 2048] px, got {size}")
    parts = [p for p in parts if p in PARTS]
    region = image_region(record["crop_xyxy"], record["bbox_xyxy"])
    image = _decode(crop_jpeg, (size, size))
    if mesh and parts and model is not None:
        verts = model.vertices(record)
        if verts is not None:
            k = torch.as_tensor(region_intrinsics(record["cam_intrinsics"], region, size, size), dtype=verts.dtype)
            rgb, alpha = render_mesh(verts, model.faces, k, size, size, color=model.vertex_colors()[None],
                                     face_mask=model.face_mask(parts))
            photo = np.asarray(image, np.float32) / 255.0
            a = alpha[0].numpy()[..., None] * MESH_OPACITY
            out = photo * (1 - a) + rgb[0].numpy() * a
            from PIL import Image

            image = Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if keypoints and parts:
        kp = np.asarray(record["kp2d_wholebody"], np.float64)
        px = np.concatenate([to_region(kp[:, :2], region, size, size), kp[:, 2:3]], -1)
        draw_keypoints(image, px, parts)
    return image


def encode_jpeg(image: Any, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
