"""The refine/ehm and quality/default stages on batches built from the synthetic kit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, StageContext, build_config
from annotators.quality import QualityStage, QualityStageConfig
from annotators.refine import RefineStage, RefineStageConfig, identities, identity_chunks
from fitting.camera import project
from fitting.objectives import ehm_wholebody_points
from model.ehm import EHM
from model.rasterizer import hard_silhouette
from model.rotations import rotmat_to_rotvec
from schemas.ehm_v1 import QualityFlag

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COLUMNS = {"betas": "smplx_betas", "global_orient": "smplx_global_orient", "body_pose": "smplx_body_pose",
           "transl": "smplx_transl"}


@pytest.fixture(scope="module")
def stages(kit_dir):
    context = StageContext(body_models=str(kit_dir))
    config = build_config(RefineStageConfig, {"device": "cpu", "refine": {"flame": {"iterations": 5},
                                                                         "ehm": {"iterations": 10}}}, "refine")
    refine = RefineStage(config, context=context)
    # a 10-iteration refinement leaves hands and faces a few px off: only body thresholds here
    quality = QualityStage(QualityStageConfig(device="cpu", max_reproj_norm_face=None, max_reproj_norm_hands=None),
                           context=context)
    return refine, quality


def _batch(ehm: EHM, n: int = 4) -> dict[str, np.ndarray]:
    """Person rows of people standing 3 m in front of the camera; row 3 has no body fit."""
    gen = torch.Generator().manual_seed(0)
    p = {name: torch.zeros(n, *spec.shape) + spec.fill for name, spec in ehm.param_specs().items()
         if name != "flame_eyelids"}
    p["global_orient"] = torch.tensor([math.pi, 0.0, 0.0]).expand(n, 3).clone()
    p["body_pose"] = torch.randn(n, 21, 3, generator=gen) * 0.1
    p["transl"] = torch.tensor([0.0, 0.3, 3.0]).expand(n, 3).clone()
    intr = torch.tensor([[800.0, 0.0, 320.0], [0.0, 800.0, 320.0], [0.0, 0.0, 1.0]]).expand(n, 3, 3)
    with torch.no_grad():
        out = ehm(**p)
        kp = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), intr)
        hands = rotmat_to_rotvec(out.joint_rotations[:, [20, 21]])
    p["body_pose"] = p["body_pose"] + torch.randn(n, 21, 3, generator=gen) * 0.05  # the body annotator's error
    batch = {COLUMNS.get(k, k): v.numpy().astype(np.float32) for k, v in p.items()}
    lo, hi = kp.min(1).values, kp.max(1).values
    batch.update({
        "key": np.array([f"img{i}/p00" for i in range(n)], dtype=object),
        "source": np.array(["video.mp4"] * n, dtype=object),
        "track_id": np.array(["t0", "t0", "", ""], dtype=object),
        "cam_intrinsics": intr.numpy().astype(np.float32),
        "bbox_xyxy": torch.cat([lo, hi], -1).numpy().astype(np.float32),
        "kp2d_wholebody": torch.cat([kp, torch.full((n, 133, 1), 0.9)], -1).numpy().astype(np.float32),
        "mp_face_landmarks": np.zeros((n, 478, 3), np.float32),
        "has_face": np.ones(n, bool), "conf_face": np.full(n, 0.9, np.float32),
        "has_hands": np.ones((n, 2), bool), "conf_hands": np.full((n, 2), 0.9, np.float32),
        "mano_global_orient": hands.numpy().astype(np.float32),
        "has_body": np.array([True, True, True, False]),
        "quality_flags": np.array([int(QualityFlag.BODY_FROM_KEYPOINTS), 0, 0, 0], np.int32),
    })
    return batch


def test_stages_are_registered():
    assert STAGES.get("refine/ehm") is RefineStage
    assert STAGES.get("quality/default") is QualityStage


def test_identities_are_tracks_and_chunks_never_split_one():
    # rows of one track share an identity whatever their frame (source); still images are each their own
    tracks = np.array(["v.mp4#t1", "", "v.mp4#t0", "v.mp4#t1", "", "w.mp4#t1"], dtype=object)
    assert identities(tracks).tolist() == [0, 1, 2, 0, 3, 4]
    ident = np.array([0, 0, 0, 1, 2, 2, 3, 0])
    chunks = identity_chunks(ident, 3)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 7], [3, 4, 5], [6]]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(8))
    assert [c.tolist() for c in identity_chunks(np.arange(5), 2)] == [[0, 1], [2, 3], [4]]


def test_refine_stage_writes_refined_fields(stages):
    refine, _ = stages
    batch = _batch(refine.refiner.ehm)
    before = {k: np.array(v, copy=True) for k, v in batch.items()}
    out = refine(batch)
    assert not any(out[ERROR_STAGE])
    assert np.isfinite(out["quality_final_loss"][:3]).all() and math.isnan(out["quality_final_loss"][3])
    assert not np.allclose(out["smplx_body_pose"][:3], before["smplx_body_pose"][:3])
    assert np.array_equal(out["smplx_body_pose"][3], before["smplx_body_pose"][3])  # no body: untouched
    assert np.array_equal(out["smplx_betas"][0], out["smplx_betas"][1])  # one track, one shape
    assert out["quality_flags"][0] & QualityFlag.BODY_FROM_KEYPOINTS  # earlier flags kept
    assert out["quality_flags"][0] & QualityFlag.FACE_GATED == 0
    terms = json.loads(out["quality_loss_terms"][0])
    assert "ehm/keypoints_2d" in terms and "flame/landmarks68" in terms
    assert json.loads(out["quality_loss_terms"][3]) == {}
    assert np.array_equal(out["smplx_jaw_pose"][:3], out["flame_jaw_pose"][:3])
    assert np.array_equal(out["smplx_left_hand_pose"][:3], out["mano_hand_pose"][:3, 0])
    assert out["smplx_body_pose"].dtype == np.float32


def test_refine_stage_skips_failed_rows_and_names_missing_columns(stages):
    refine, _ = stages
    batch = _batch(refine.refiner.ehm)
    batch[ERROR_STAGE] = np.array(["keypoints", "", "", ""], dtype=object)
    batch[ERROR_REASON] = np.array(["boom", "", "", ""], dtype=object)
    body0 = batch["smplx_body_pose"][0].copy()
    out = refine(batch)
    assert np.array_equal(out["smplx_body_pose"][0], body0) and out[ERROR_STAGE][0] == "keypoints"
    del batch["kp2d_wholebody"]
    with pytest.raises(KeyError, match="kp2d_wholebody"):
        refine(batch)


def test_quality_stage_scores_and_rejects(stages, kit_dir):
    refine, quality = stages
    out = quality(refine(_batch(refine.refiner.ehm)))
    assert np.all(out["quality_reproj_px_body"][:3] < 20.0)
    assert np.isnan(out["quality_silhouette_iou"]).all()  # no image column: not measured
    assert list(out[ERROR_STAGE]) == ["", "", "", "quality"]
    assert "no body fit" in out[ERROR_REASON][3]
    strict = QualityStage(QualityStageConfig(device="cpu", max_reproj_norm_body=1e-6, max_reproj_norm_face=None,
                                             max_reproj_norm_hands=None), context=quality.context)
    strict.__dict__["ehm"] = quality.ehm  # share the loaded model
    rejected = strict(refine(_batch(refine.refiner.ehm)))
    assert all(stage == "quality" for stage in rejected[ERROR_STAGE])
    assert "body reprojection" in rejected[ERROR_REASON][0] and "max_reproj_norm_body" in rejected[ERROR_REASON][0]


def test_silhouette_scores_match_a_mask_of_the_same_body(stages, kit_dir, monkeypatch):
    refine, loaded = stages
    quality = QualityStage(QualityStageConfig(device="cpu", mask_size=32, band_px=1, max_reproj_norm_face=None,
                                              max_reproj_norm_hands=None), context=loaded.context)
    quality.__dict__["ehm"] = loaded.ehm  # share the loaded model
    batch = refine(_batch(refine.refiner.ehm))
    batch["image"] = np.empty(4, dtype=object)
    for i in range(4):
        batch["image"][i] = np.zeros((640, 640, 3), np.uint8)
    ehm = quality.ehm

    def fake_mask(image, box, size, scale):
        """The body's own hard silhouette over the crop region, computed independently of the stage."""
        i = int(np.flatnonzero((batch["bbox_xyxy"] == box).all(1))[0])
        side = round(scale * max(box[2] - box[0], box[3] - box[1]))
        x0, y0 = round((box[0] + box[2] - side) / 2), round((box[1] + box[3] - side) / 2)
        params = {k: torch.as_tensor(batch[COLUMNS.get(k, k)][i:i + 1]) for k in ehm.param_specs() if k != "flame_eyelids"}
        with torch.no_grad():
            verts = ehm(**params).vertices
        uv = project(verts, torch.as_tensor(batch["cam_intrinsics"][i:i + 1]))
        grid = (uv - torch.tensor([x0, y0])) / side * size
        return hard_silhouette(grid, ehm.faces, size, size)[0].float().numpy(), np.array([x0, y0, x0 + side, y0 + side])

    monkeypatch.setattr(quality.segmenter, "mask", fake_mask)
    out = quality(batch)
    assert np.all(out["quality_silhouette_iou"][:3] > 0.9)
    assert np.all(out["quality_silhouette_boundary_iou"][:3] > 0.6)
    assert math.isnan(out["quality_silhouette_iou"][3])


@pytest.mark.skipif(not (EXAMPLES / "astronaut.png").exists(), reason="examples/astronaut.png not in the tree")
def test_person_segmenter_on_a_real_image(stages):
    cv2 = pytest.importorskip("cv2")
    _, quality = stages
    image = cv2.cvtColor(cv2.imread(str(EXAMPLES / "astronaut.png")), cv2.COLOR_BGR2RGB)
    box = np.array([100.0, 20.0, 420.0, 512.0], np.float32)
    mask, region = quality.segmenter.mask(image, box, 64, 1.25)
    assert mask.shape == (64, 64) and 0.0 <= mask.min() and mask.max() <= 1.0
    assert mask[20:50, 24:40].mean() > 0.5  # the astronaut fills the crop's centre
    assert region == pytest.approx([-48.0, -42.0, 567.0, 573.0])  # side round(1.25 * 492), corners rounded half to even
