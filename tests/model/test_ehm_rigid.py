"""The rigid-parts EHM against the full EHM on the synthetic kit."""

from __future__ import annotations

import math

import pytest
import torch

from model.assets.loaders import load_mean_hand_pose
from model.body_models import SMPLX
from model.ehm import EHM
from model.ehm_rigid import RigidPartsEHM
from model.rotations import rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def setup(kit_dir):
    """EHM, its SMPL-X, and a rigid-parts model reporting ~400 rigid head vertices and ~400 hand vertices."""
    ehm = EHM.from_dir(kit_dir, camera_frame="opencv").to(F64)
    smplx = SMPLX.from_dir(kit_dir, num_betas=ehm.num_betas, num_expression=0).to(F64)
    head_rigid = torch.nonzero(ehm.lbs_weights[ehm.head_vertex_ids, SMPLX.HEAD] > 0.99)[:, 0]
    head_ids = head_rigid[:: max(1, len(head_rigid) // 400)]
    hand_ids = torch.arange(0, ehm.mano_left.num_vertices, max(1, ehm.mano_left.num_vertices // 400))
    mean_hand = torch.as_tensor(load_mean_hand_pose(kit_dir), dtype=F64)
    return ehm, smplx, RigidPartsEHM(ehm, smplx, head_ids, hand_ids), head_ids, hand_ids, mean_hand


def _params(ehm: EHM, mean_hand: torch.Tensor, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = {name: torch.zeros(n, *spec.shape, dtype=F64) + spec.fill for name, spec in ehm.param_specs().items()
              if name != "flame_eyelids"}
    params["betas"] = torch.randn(n, 10, generator=gen, dtype=F64) * 0.5
    params["global_orient"] = torch.tensor([math.pi, 0.0, 0.0], dtype=F64).expand(n, 3).clone()
    params["body_pose"] = torch.randn(n, 21, 3, generator=gen, dtype=F64) * 0.15
    params["mano_hand_pose"] = mean_hand + torch.randn(n, 2, 15, 3, generator=gen, dtype=F64) * 0.2
    params["flame_expression"][:, :10] = torch.randn(n, 10, generator=gen, dtype=F64) * 0.5
    params["flame_jaw_pose"] = torch.tensor([[0.2, 0.0, 0.0]], dtype=F64).expand(n, 3)
    params["head_scale"] = torch.tensor([[1.05, 0.95, 1.0]], dtype=F64).expand(n, 3)
    params["hand_scale"] = torch.tensor([[0.9, 1.1]], dtype=F64).expand(n, 2)
    params["transl"] = torch.tensor([0.1, -0.2, 3.0], dtype=F64).expand(n, 3)
    return params


def test_rigid_parts_match_ehm(setup):
    ehm, _, parts, head_ids, hand_ids, mean_hand = setup
    p = _params(ehm, mean_hand, 2, seed=3)
    with torch.no_grad():
        full = ehm(**p)
        out = parts(p["betas"], rotvec_to_rotmat(p["global_orient"]), p["body_pose"], p["transl"], p["head_scale"],
                    p["hand_scale"], parts.head_frame(p), parts.hand_frame(p["mano_betas"], p["mano_hand_pose"]))
    torch.testing.assert_close(out.joints[:, :22], full.joints[:, :22])  # the SMPL-X chain is EHM's exactly
    assert (out.joints - full.joints).norm(dim=-1).max() < 1e-3
    assert (out.keypoints - full.keypoints).norm(dim=-1).max() < 1e-3
    assert (out.landmarks68 - full.landmarks68).norm(dim=-1).max() < 2e-3  # jaw contour near the neck blend
    assert (out.head - full.vertices[:, ehm.head_vertex_ids[head_ids]]).norm(dim=-1).max() < 1e-3
    for side, ids in enumerate((ehm.left_hand_vertex_ids, ehm.right_hand_vertex_ids)):
        assert (out.hands[side] - full.vertices[:, ids[hand_ids]]).norm(dim=-1).max() < 1e-4


def test_smplx_must_be_the_one_ehm_was_built_from(setup, kit_dir):
    ehm, _, _, head_ids, hand_ids, _ = setup
    other = SMPLX.from_dir(kit_dir, num_betas=5, num_expression=0).to(F64)
    with pytest.raises(ValueError, match="smplx"):
        RigidPartsEHM(ehm, other, head_ids, hand_ids)
