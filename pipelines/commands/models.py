"""``pearl models check DIR``: which reference-backend weights are in a models folder, and whether they load.

The expected layout (see ``docs/reference_backends.md``) is :data:`LAYOUT`; each file is validated the
way its stage loads it (checkpoints strictly, ONNX graphs opened and run once on a blank input). A
backend is *configured* when any of its files is present; the exit code is 1 when a configured backend
(or one named with ``--require``) has a missing, invalid or unchecked file.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HELP = "check the reference-backend weights (HaMeR, TEASER, whole-body ONNX) in a models folder"

log = logging.getLogger(__name__)

OK, MISSING, INVALID, UNCHECKED, ABSENT = "OK", "MISSING", "INVALID", "UNCHECKED", "ABSENT"


@dataclass(frozen=True)
class ModelFile:
    """One file a reference backend reads."""

    backend: str
    """Stage name (``hands/hamer``...)."""
    option: str
    """The stage option that takes its path."""
    names: tuple[str, ...]
    """Accepted paths under the models folder; the first one present is used."""
    required: bool = True
    """False for files the backend can do without (the person detector)."""
    source: str = ""
    """Where the file comes from."""


LAYOUT: tuple[ModelFile, ...] = (
    ModelFile("hands/hamer", "model_config", ("hamer/model_config.yaml",),
              source="HaMeR's hamer_demo_data: _DATA/hamer_ckpts/model_config.yaml"),
    ModelFile("hands/hamer", "checkpoint", ("hamer/hamer.ckpt",),
              source="HaMeR's hamer_demo_data: _DATA/hamer_ckpts/checkpoints/hamer.ckpt"),
    ModelFile("hands/hamer-onnx", "onnx", ("hamer/hamer.onnx",),
              source="an ONNX export of HaMeR (GUAVA's EHM tracker)"),
    ModelFile("face/teaser", "checkpoint", ("teaser/TEASER_v2.pt", "teaser/TEASER_v1.pt", "teaser/teaser.pt"),
              source="TEASER's pretrained_models (or SMIRK's SMIRK_em1.pt renamed teaser.pt)"),
    ModelFile("face/teaser-onnx", "onnx", ("teaser/teaser.onnx", "teaser/TEASER_lmk_2.onnx"),
              source="an ONNX export of TEASER's encoders (GUAVA's EHM tracker)"),
    ModelFile("keypoints/wholebody-onnx", "pose_model", ("dwpose/dw-ll_ucoco_384.onnx", "dwpose/pose.onnx"),
              source="DWPose's dw-ll_ucoco_384.onnx, or an RTMW whole-body export renamed pose.onnx"),
    ModelFile("keypoints/wholebody-onnx", "detector_model", ("dwpose/yolox_l.onnx", "dwpose/detector.onnx"),
              required=False, source="DWPose's yolox_l.onnx"),
)
"""Every file of the models folder, grouped by backend in check order."""


@dataclass(frozen=True)
class FileResult:
    """The verdict on one :class:`ModelFile`."""

    file: ModelFile
    status: str  # OK | MISSING | INVALID | UNCHECKED | ABSENT
    path: Path | None
    detail: str = ""


# --------------------------------------------------------------------------------------------------
# validators: (path of this file, paths found for its backend) -> one-line summary, or raise
# --------------------------------------------------------------------------------------------------


def _hamer_config(path: Path, found: dict[str, Path]) -> str:
    from model.networks.hamer import hamer_config_from_yaml

    cfg = hamer_config_from_yaml(path.read_text(), str(path))
    head = cfg.head
    return f"{cfg.image_size} px crops, box aspect {cfg.bbox_shape}, MANO head {head.depth} layers x {head.heads} heads"


def _hamer_checkpoint(path: Path, found: dict[str, Path]) -> str:
    from model.networks.hamer import load_hamer

    network = load_hamer(path, found["model_config"])
    params = sum(p.numel() for p in network.parameters())
    return f"loads strictly: {params / 1e6:.1f}M parameters (official mano.*, discriminator.*, initialized ignored)"


def _teaser_checkpoint(path: Path, found: dict[str, Path]) -> str:
    from model.networks.teaser import load_teaser

    cfg = load_teaser(path).config
    return (f"loads strictly: {cfg.n_shape} shape, {cfg.n_exp} expression coefficients "
            "(token encoder, generator ignored)")


def _onnx(outputs: Callable[[], tuple[str, ...]]) -> Callable[[Path, dict[str, Path]], str]:
    def check(path: Path, found: dict[str, Path]) -> str:
        from model.checkpoints import OnnxModel

        model = OnnxModel(path, outputs(), device="cpu")
        return f"input {model.input_shape}, outputs {model.output_names}"

    return check


def _hamer_outputs() -> tuple[str, ...]:
    from model.networks.hamer import HAMER_OUTPUTS

    return HAMER_OUTPUTS


def _teaser_outputs() -> tuple[str, ...]:
    from annotators.face.teaser import TEASER_REQUIRED_OUTPUTS

    return TEASER_REQUIRED_OUTPUTS


def _pose_model(path: Path, found: dict[str, Path]) -> str:
    import numpy as np

    from annotators.wholebody_onnx import WholeBodyPoseModel

    model = WholeBodyPoseModel(str(path), device="cpu")
    w, h = model.input_wh
    xy, _ = model(np.zeros((1, 3, h, w), np.float32), np.eye(2, 3)[None], 1)
    return f"input {w}x{h}, SimCC outputs for {xy.shape[1]} keypoints"


def _detector(path: Path, found: dict[str, Path]) -> str:
    import numpy as np

    from annotators.yolox import YoloxPersonDetector

    detector = YoloxPersonDetector(str(path), device="cpu")
    detector(np.zeros((64, 64, 3), np.uint8))
    return f"YOLOX input {detector.size_hw[1]}x{detector.size_hw[0]}"


VALIDATORS: dict[tuple[str, str], Callable[[Path, dict[str, Path]], str]] = {
    ("hands/hamer", "model_config"): _hamer_config,
    ("hands/hamer", "checkpoint"): _hamer_checkpoint,
    ("hands/hamer-onnx", "onnx"): _onnx(_hamer_outputs),
    ("face/teaser", "checkpoint"): _teaser_checkpoint,
    ("face/teaser-onnx", "onnx"): _onnx(_teaser_outputs),
    ("keypoints/wholebody-onnx", "pose_model"): _pose_model,
    ("keypoints/wholebody-onnx", "detector_model"): _detector,
}


def backends() -> list[str]:
    """Backends of :data:`LAYOUT`, in order."""
    return list(dict.fromkeys(f.backend for f in LAYOUT))


def check_models(root: Path | str) -> list[FileResult]:
    """One :class:`FileResult` per :data:`LAYOUT` entry under ``root``."""
    root = Path(root)
    results = []
    for backend in backends():
        files = [f for f in LAYOUT if f.backend == backend]
        found = {f.option: p for f in files for p in [next((root / n for n in f.names if (root / n).is_file()), None)]
                 if p is not None}
        if not found:
            results += [FileResult(f, ABSENT, None) for f in files]
            continue
        broken = False  # a later file of the backend that depends on an earlier one is not checked
        for f in files:
            path = found.get(f.option)
            if path is None:
                results.append(FileResult(f, MISSING if f.required else ABSENT, None))
                broken |= f.required
            elif broken:
                results.append(FileResult(f, UNCHECKED, path, "an earlier file of this backend is missing or invalid"))
            else:
                try:
                    results.append(FileResult(f, OK, path, VALIDATORS[(backend, f.option)](path, found)))
                except Exception as e:  # noqa: BLE001 - any failure to load is the verdict
                    results.append(FileResult(f, INVALID, path, f"{type(e).__name__}: {e}"))
                    broken = True
    return results


def failed_backends(results: list[FileResult], required: list[str]) -> list[str]:
    """Backends that are configured (or required) and not complete and valid."""
    bad = []
    for backend in backends():
        mine = [r for r in results if r.file.backend == backend]
        configured = any(r.path is not None for r in mine) or backend in required
        if configured and any(r.status in (MISSING, INVALID, UNCHECKED) or (r.status == ABSENT and r.file.required)
                              for r in mine):
            bad.append(backend)
    return bad


def format_report(results: list[FileResult], root: Path | str) -> list[str]:
    """One line per file; then, per complete backend, the stage options that point at its files."""
    root = Path(root)
    lines = []
    for r in results:
        f = r.file
        where = r.path.relative_to(root).as_posix() if r.path else " | ".join(f.names)
        note = "" if f.required else " (optional)"
        if r.status in (MISSING, ABSENT):
            detail = f"put it at {root / f.names[0]}; from {f.source}"
        else:
            detail = r.detail
        lines.append(f"{r.status:<9} {where} [{f.backend}]{note}: {detail}")
    for backend in backends():
        mine = [r for r in results if r.file.backend == backend]
        if any(r.status == OK for r in mine) and not failed_backends(mine, []):
            options = {r.file.option: str(r.path) for r in mine if r.status == OK}
            lines.append(f"stage {backend}: options {json.dumps(options)}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="say which reference weights are present and whether they load")
    check.add_argument("dir", metavar="DIR", help="the models folder (layout: docs/reference_backends.md)")
    check.add_argument("--require", action="append", default=[], metavar="BACKEND", choices=backends(),
                       help="fail unless this backend's files are all present and valid (repeatable)")


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        log.error("%s is not a folder", root)
        return 2
    results = check_models(root)
    for line in format_report(results, root):
        print(line)
    bad = failed_backends(results, args.require)
    if bad:
        log.error("incomplete or invalid: %s", ", ".join(bad))
        return 1
    return 0
