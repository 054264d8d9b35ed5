"""Mean parameters of a training corpus: where the regressor's residuals start.

:func:`mean_params` reads the first ``stats_samples`` usable records of the training shard sets (in URL order,
set after set, in proportion to their weights; only ``ehm.npz`` and ``meta.json``, no image decoded) and
averages, over the samples whose part is supervised after gating: the 6D representation of the global
orientation, the body joints, each hand's joints (left and right pooled after mirroring the left hand onto
the right, so both hands start from the same mean pose) and the jaw; the SMPL-X betas; the leading FLAME shape
and expression coefficients; the eyelids and the head scale; and the crop camera of the unaugmented crop
(:func:`model.pear.crop_cam`). A block no sample supervises keeps :func:`model.networks.pear.default_mean_params`.
The result is a dict of the blocks of :meth:`model.networks.pear.PearConfig.layout`, saved as
``OUT/mean_params.npz`` beside the checkpoints and inside them (the regressor's ``init_params`` buffer).
Every process computes the same means from the same records, so a multi-process run needs no exchange.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

import schemas
from model.networks.pear import PearConfig, default_mean_params
from model.pear import box_window, crop_cam, window_affine
from model.rotations import mirror_rotvec, rotmat_to_rot6d, rotvec_to_rotmat
from pipelines.io.shards import iter_wds
from pipelines.train.augment import SamplePreparer
from pipelines.train.data import parse_record

log = logging.getLogger(__name__)


def _rot6d(rotvec: np.ndarray) -> np.ndarray:
    return rotmat_to_rot6d(rotvec_to_rotmat(torch.as_tensor(rotvec, dtype=torch.float64))).numpy()


class _Mean:
    def __init__(self) -> None:
        self.total, self.count = None, 0

    def add(self, value: np.ndarray) -> None:
        value = np.asarray(value, np.float64)
        self.total = value.copy() if self.total is None else self.total + value
        self.count += 1

    def value(self, default: np.ndarray) -> np.ndarray:
        return default if not self.count else (self.total / self.count).astype(np.float32)


def mean_params(train_sets: list[tuple[list[str], float]], preparer: SamplePreparer, config: PearConfig,
                samples: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Mean parameter blocks (module docstring) and how many samples fed each block; ``train_sets``: the
    resolved shard URLs of each training set (:func:`pipelines.train.data.resolve_urls`) and its weight."""
    weights = np.array([w for _, w in train_sets], np.float64)
    quotas = np.maximum(1, np.round(samples * weights / weights.sum())).astype(int)
    means = {name: _Mean() for name in config.layout()}
    out_h, out_w = config.image_size
    for (urls, _), quota in zip(train_sets, quotas):
        used = 0
        for raw in iter_wds(urls, decode=False):
            if used >= quota:
                break
            try:
                record, _ = parse_record(raw)
            except (schemas.SchemaError, ValueError, KeyError) as exc:
                log.debug("statistics: left out %s: %s", raw.get("__key__"), exc)
                continue
            sup = preparer.supervision(record)
            if sup is None:
                continue
            used += 1
            _accumulate(means, record, sup, config, (out_h, out_w))
        if used < quota:
            log.info("statistics: shard set %s gave %d usable samples of the %d asked", urls, used, quota)
    defaults = unpack_default(config)
    hands = means.pop("hand_pose")
    right, hand_count = hands.value(defaults["hand_pose"][1]), hands.count
    blocks = {name: m.value(defaults[name]) for name, m in means.items()}
    blocks["hand_pose"] = np.stack([mirror_rot6d(right), right]).astype(np.float32)
    counts = {name: m.count for name, m in means.items()}
    counts["hand_pose"] = hand_count
    return {name: blocks[name] for name in config.layout()}, counts


def _accumulate(means: Mapping[str, _Mean], record: Mapping[str, np.ndarray], sup: Mapping[str, np.ndarray],
                config: PearConfig, out_hw: tuple[int, int]) -> None:
    if sup["has_body"]:
        means["global_orient"].add(_rot6d(record["smplx_global_orient"]))
        means["body_pose"].add(_rot6d(record["smplx_body_pose"]))
        means["betas"].add(np.asarray(record["smplx_betas"])[: config.num_betas])
        box = np.asarray(record["bbox_xyxy"], np.float64)
        centre, height = box_window(box, out_hw[1] / out_hw[0], config.box_scale)
        affine = window_affine(centre, float(height), out_hw)
        cam = crop_cam(np.asarray(record["smplx_transl"])[None], affine[None], np.asarray(record["cam_intrinsics"])[None],
                       config.focal_px, out_hw)
        means["cam"].add(cam[0])
    hands = np.asarray(record["mano_hand_pose"], np.float64)
    for side in (0, 1):
        if sup["has_hands"][side]:  # pooled as right hands: a left hand's mirror image is a right hand
            means["hand_pose"].add(_rot6d(hands[1] if side else mirror_rotvec(hands[0].copy())))
    if sup["has_face"]:
        means["jaw_pose"].add(_rot6d(record["flame_jaw_pose"]))
        means["flame_shape"].add(np.asarray(record["flame_shape"])[: config.num_flame_shape])
        means["flame_expression"].add(np.asarray(record["flame_expression"])[: config.num_flame_expression])
        means["flame_eyelids"].add(record["flame_eyelids"])
        means["head_scale"].add(record["head_scale"])


def mirror_rot6d(rot6d: np.ndarray) -> np.ndarray:
    """The 6D representation ``[..., 6]`` of the mirrored rotations ``M R M`` (``M = diag(-1, 1, 1)``): the
    first column becomes ``-M c0``, the second ``M c1`` (linear, so it commutes with averaging)."""
    out = np.asarray(rot6d, np.float64).copy()
    out[..., 1:3] *= -1  # -M c0 = (c0x, -c0y, -c0z)
    out[..., 3] *= -1  # M c1 = (-c1x, c1y, c1z)
    return out


def unpack_default(config: PearConfig) -> dict[str, np.ndarray]:
    """The blocks of :func:`model.networks.pear.default_mean_params` (rotations as 6D), as numpy."""
    vector = default_mean_params(config)
    out, start = {}, 0
    for name, shape in config.layout().items():
        n = int(np.prod(shape))
        out[name] = vector[start:start + n].reshape(shape).numpy()
        start += n
    return out


def save_mean_params(blocks: Mapping[str, np.ndarray], counts: Mapping[str, int], path: str | Path) -> None:
    """Write the blocks (and the per-block sample counts as ``count.<block>``) to an ``.npz``."""
    arrays = {k: np.asarray(v, np.float32) for k, v in blocks.items()}
    arrays.update({f"count.{k}": np.asarray(v, np.int64) for k, v in counts.items()})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def load_mean_params(path: str | Path, config: PearConfig) -> dict[str, np.ndarray]:
    """The blocks of a :func:`save_mean_params` file, checked against ``config``'s layout."""
    with np.load(path, allow_pickle=False) as npz:
        blocks = {k: npz[k] for k in npz.files if not k.startswith("count.")}
    for name, shape in config.layout().items():
        if name not in blocks or tuple(blocks[name].shape) != shape:
            got = list(blocks[name].shape) if name in blocks else "nothing"
            raise ValueError(f"{path}: block {name!r} should have shape {list(shape)} for this model, got {got}")
    return blocks


