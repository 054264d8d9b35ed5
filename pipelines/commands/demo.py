"""``pearl demo``: pose a few random EHM bodies on a body-model kit and write OBJ meshes + a summary.

Without ``--body-models`` (and without ``$PEARL_BODY_MODELS``) the synthetic kit is written once to
``$PEARL_CACHE/kits/synthetic-seed0`` (default cache ``~/.cache/pearl``) and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

HELP = "pose a few random EHM bodies (SMPL-X + FLAME head + MANO hands) and write OBJ meshes and summary.json"
ENV_BODY_MODELS = "PEARL_BODY_MODELS"
ENV_CACHE = "PEARL_CACHE"
KIT_SEED = 0

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--body-models", type=Path, default=None, metavar="DIR",
        help=f"body-model folder (layout in docs/assets.md); default ${ENV_BODY_MODELS}, else the synthetic kit "
        f"cached under ${ENV_CACHE}/kits/synthetic-seed{KIT_SEED} (default cache ~/.cache/pearl), written on first use",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="output folder for body_NN.obj and summary.json (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the posed bodies (default 0)")
    parser.add_argument("--count", type=int, default=4, help="number of bodies to pose (default 4)")


def cached_kit() -> Path:
    """The synthetic kit in the pearl cache, written (atomically, by rename) when it is not there yet."""
    cache = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "pearl")
    kit = cache / "kits" / f"synthetic-seed{KIT_SEED}"
    if kit.is_dir():
        log.info("using the cached synthetic body-model kit %s", kit)
        return kit
    from model.assets.synthetic import synthesize_kit

    kit.parent.mkdir(parents=True, exist_ok=True)
    log.info("no body models given: writing the synthetic kit (seed %d) to %s (once; reused afterwards)", KIT_SEED, kit)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kit.name}.", dir=kit.parent))
    try:
        synthesize_kit(tmp, seed=KIT_SEED)
        tmp.chmod(0o755)  # mkdtemp made it private
        tmp.rename(kit)
    except OSError:
        if not kit.is_dir():  # another process may have won the rename; anything else is an error
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return kit


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

    from model.assets.check import check_assets, check_passed, format_report, kit_kind
    from model.ehm import EHM

    if args.count < 1:
        log.error("--count must be at least 1, got %d", args.count)
        return 2
    kit = args.body_models or (Path(os.environ[ENV_BODY_MODELS]) if os.environ.get(ENV_BODY_MODELS) else None)
    if kit is None:
        kit = cached_kit()
    elif not kit.is_dir():
        log.error("%s is not a folder; point --body-models at your body models (see docs/assets.md)", kit)
        return 2
    results = check_assets(kit)
    if not check_passed(results):
        for line in format_report(results, kit):
            log.error("%s", line)
        log.error("the body-model folder %s failed `pearl assets check`; fix the files above%s", kit,
                  " or delete the folder to have it rewritten" if kit_kind(kit) == "synthetic" else "")
        return 1
    log.info("assets check passed for %s (%s kit)", kit, kit_kind(kit))

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
        "body_model_kit": kit_kind(kit),
        "seed": args.seed,
        "count": args.count,
        "frame": "model frame: metres, y up, the person faces +z",
        "bodies": bodies,
    }
    summary_path = args.out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s; heights %s m", summary_path, ", ".join(f"{b['height_m']:.2f}" for b in bodies))
    return 0
