"""``pearl demo``: pose a few random EHM bodies on a body-model kit and write OBJ meshes + a summary.

The body models are found as by ``pearl annotate`` (:func:`pipelines.io.body_models.resolve_body_models`):
``--body-models DIR`` is checked and used as it is; without it (and without ``$PEARL_BODY_MODELS``) the
synthetic kit is written once to ``$PEARL_CACHE/kits/synthetic-v<kit version>-seed0`` (default cache
``~/.cache/pearl``) and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from pipelines.io.body_models import (
    ENV_BODY_MODELS,
    ENV_CACHE,
    KIT_SEED,
    AssetsCheckError,
    BodyModelsError,
    resolve_body_models,
)

HELP = "pose a few random EHM bodies (SMPL-X + FLAME head + MANO hands) and write OBJ meshes and summary.json"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--body-models", type=Path, default=None, metavar="DIR",
        help=f"body-model folder (layout in docs/assets.md), checked and used as it is; default ${ENV_BODY_MODELS}, "
        f"else the synthetic kit cached under ${ENV_CACHE}/kits/synthetic-v<kit version>-seed{KIT_SEED} (default cache "
        "$XDG_CACHE_HOME/pearl or ~/.cache/pearl), written on first use",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="output folder for body_NN.obj and summary.json (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the posed bodies (default 0)")
    parser.add_argument("--count", type=int, default=4, help="number of bodies to pose (default 4)")


def random_bodies(specs: dict, count: int, seed: int) -> dict:  # specs: EHM.param_specs()
    """Plausible random EHM parameters ``[count, ...]`` (float32 tensors): a standing person facing +z
    (y up), arms lowered, small joint rotations, some shape, expression and an open jaw."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(count, *shape, generator=gen) * std

    body_pose = normal(21, 3, std=0.12)
    shoulders = torch.rand(count, generator=gen) * 0.3 + 1.0  # lower the T-pose arms by 1.0..1.3 rad
    body_pose[:, 15, 2] -= shoulders  # left shoulder (joint 16) about z: arm down
    body_pose[:, 16, 2] += shoulders  # right shoulder (joint 17)
    num_shape, num_expr = specs["flame_shape"].shape[-1], specs["flame_expression"].shape[-1]
    jaw = torch.zeros(count, 3)
    jaw[:, 0] = torch.rand(count, generator=gen) * 0.3
    return {
        "betas": normal(specs["betas"].shape[-1], std=1.0),
        "global_orient": torch.cat([torch.zeros(count, 1), normal(1, std=0.4), torch.zeros(count, 1)], dim=1),
        "body_pose": body_pose,
        "mano_hand_pose": normal(2, 15, 3, std=0.15),
        "flame_shape": torch.cat([normal(min(20, num_shape), std=0.8), torch.zeros(count, num_shape - min(20, num_shape))], 1),
        "flame_expression": torch.cat([normal(min(10, num_expr), std=0.8), torch.zeros(count, num_expr - min(10, num_expr))], 1),
        "flame_jaw_pose": jaw,
        "flame_eye_pose": normal(6, std=0.1),
    }


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """A Wavefront OBJ (``v`` lines, then 1-based ``f`` lines), written to a temporary name and renamed."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices.tolist()]
    lines += [f"f {a} {b} {c}" for a, b, c in (faces + 1).tolist()]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    import torch

    from model.ehm import EHM

    if args.count < 1:
        log.error("--count must be at least 1, got %d", args.count)
        return 2
    try:
        models = resolve_body_models(str(args.body_models) if args.body_models else None)
    except AssetsCheckError as exc:
        log.error("%s", exc)
        return 1
    except BodyModelsError as exc:
        log.error("%s", exc)
        return 2
    kit = Path(models.folder)

    ehm = EHM.from_dir(kit, camera_frame="opengl")  # the demo poses people y-up, facing +z
    params = random_bodies(ehm.param_specs(), args.count, args.seed)
    with torch.no_grad():
        out = ehm(**params)
    args.out.mkdir(parents=True, exist_ok=True)
    faces = out.faces.numpy()
    bodies = []
    for i in range(args.count):
        verts = out.vertices[i].numpy()
        mesh = args.out / f"body_{i:02d}.obj"
        write_obj(mesh, verts, faces)
        bodies.append({
            "mesh": mesh.name,
            "height_m": round(float(verts[:, 1].max() - verts[:, 1].min()), 4),
            "bbox_min_m": np.round(verts.min(0).astype(np.float64), 4).tolist(),
            "bbox_max_m": np.round(verts.max(0).astype(np.float64), 4).tolist(),
            "params": {k: np.round(v[i].double().numpy(), 5).tolist() for k, v in params.items()},
        })
        log.info("wrote %s (%d vertices, %d faces)", mesh, len(verts), len(faces))
    summary = {
        "body_models": str(kit),
        "body_model_kit": models.kit,
        "seed": args.seed,
        "count": args.count,
        "frame": "model frame: metres, y up, the person faces +z",
        "bodies": bodies,
    }
    summary_path = args.out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s; heights %s m", summary_path, ", ".join(f"{b['height_m']:.2f}" for b in bodies))
    return 0
