"""Which body-model folder a command uses: the user's own (checked, never written to) or the synthetic
kit in pearl's cache (made on first use).

``--body-models DIR`` names a folder in the official layout (``docs/assets.md``); it is checked with
``pearl assets check``'s rules and used as it is, even when it holds a kit from ``pearl assets
synthesize``. ``--body-models synthetic``, or no flag and no ``$PEARL_BODY_MODELS``, means the synthetic
kit (seed 0, this pearl's kit version) at :func:`cached_kit_dir`, which :func:`cached_kit` writes once:
into a temporary sibling folder that is then renamed into place, so concurrent makers (several actors on
one node) end with one complete kit and a reader never sees half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_BODY_MODELS = "PEARL_BODY_MODELS"
"""Environment variable naming the body-model folder when no ``--body-models`` is given."""
ENV_CACHE = "PEARL_CACHE"
"""Environment variable naming pearl's cache folder."""
SYNTHETIC = "synthetic"
"""``--body-models`` value for the cached synthetic kit."""
KIT_SEED = 0
"""Seed of the cached synthetic kit."""


class BodyModelsError(ValueError):
    """The body-model folder cannot be used as asked; the message names it and says what to do."""


class AssetsCheckError(BodyModelsError):
    """A body-model folder failed ``pearl assets check``; the message lists the files at fault."""


@dataclass(frozen=True)
class BodyModels:
    """The body-model folder a run uses."""

    folder: str
    """Absolute path of the folder."""
    kit: str
    """``"synthetic"`` (a kit with pearl's synthetic-kit marker) or ``"official"``."""
    cached: bool
    """True for the synthetic kit in pearl's cache (a worker node that lacks it makes its own copy);
    False for a folder the user named (only read)."""


def cache_dir() -> Path:
    """pearl's cache folder: ``$PEARL_CACHE``, else ``$XDG_CACHE_HOME/pearl``, else ``~/.cache/pearl``."""
    base = os.environ.get(ENV_CACHE) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pearl"
    return Path(base)


def cached_kit_dir() -> Path:
    """Where the cached synthetic kit lives: ``<cache>/kits/synthetic-v<kit version>-seed0`` (a new kit
    version gets a new folder, so a cached kit never goes stale)."""
    from model.assets.synthetic import KIT_VERSION

    return cache_dir() / "kits" / f"synthetic-v{KIT_VERSION}-seed{KIT_SEED}"


def is_cached_kit(path: Path) -> bool:
    """True when ``path`` holds a complete synthetic kit of this pearl's kit version and :data:`KIT_SEED`
    (its marker file, written last, says so)."""
    from model.assets.check import kit_info
    from model.assets.loaders import AssetFormatError
    from model.assets.synthetic import KIT_VERSION

    try:
        info = kit_info(path)
    except AssetFormatError:
        return False
    return info is not None and info.get("kit_version") == KIT_VERSION and info.get("seed") == KIT_SEED


def cached_kit(path: Path | None = None) -> Path:
    """The cached synthetic kit at ``path`` (default :func:`cached_kit_dir`), written there first if it is
    missing. Safe between concurrent callers: each loser of the rename race finds the winner's kit and
    discards its own. Raises :class:`BodyModelsError` when ``path`` holds something else."""
    path = Path(path) if path is not None else cached_kit_dir()
    if is_cached_kit(path):
        return path
    if path.exists():
        raise BodyModelsError(f"{path} exists but is not a complete synthetic body-model kit of this pearl "
                              "version (seed 0): delete it to have it written again")
    from model.assets.synthetic import synthesize_kit

    log.info("writing the synthetic body-model kit (seed %d) to %s (first use; reused afterwards)", KIT_SEED, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        synthesize_kit(tmp, seed=KIT_SEED)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(path)
        except OSError:  # another maker renamed its kit into place first
            if not is_cached_kit(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def check_body_models(folder: Path) -> str:
    """Check a user's body-model folder with ``pearl assets check``'s rules; returns its kit kind
    (``synthetic`` or ``official``). Raises :class:`AssetsCheckError` listing the missing or wrong files."""
    from model.assets.check import check_assets, check_passed, format_report, kit_kind
    from model.assets.loaders import AssetFormatError

    results = check_assets(folder)
    if not check_passed(results):
        lines = [line for r, line in zip(results, format_report(results, folder)) if r.failed]
        raise AssetsCheckError(f"--body-models {folder} failed `pearl assets check`:\n  " + "\n  ".join(lines)
                               + "\nfix or add those files (docs/assets.md), or pass --body-models synthetic")
    try:
        return kit_kind(folder)
    except AssetFormatError as exc:
        raise AssetsCheckError(f"--body-models {folder}: {exc}") from None


def resolve_body_models(arg: str | None, *, create: bool = True) -> BodyModels:
    """The body models for ``--body-models arg``: a folder (checked, used in place), ``synthetic``, or None
    (``$PEARL_BODY_MODELS``, else synthetic). The cached synthetic kit is written on first use when
    ``create`` (a dry run passes False)."""
    arg = arg or os.environ.get(ENV_BODY_MODELS) or SYNTHETIC
    if arg == SYNTHETIC:
        path = cached_kit_dir()
        if create:
            cached_kit(path)
            log.info("body models: the synthetic kit in %s", path)
        return BodyModels(str(path), "synthetic", cached=True)
    folder = Path(arg).expanduser()
    if not folder.is_dir():
        raise BodyModelsError(f"--body-models {arg}: no such folder (give the folder with your SMPL / SMPL-X / "
                              f"FLAME / MANO files, or '{SYNTHETIC}')")
    kit = check_body_models(folder)
    log.info("body models: %s (%s kit; assets check passed)", folder, kit)
    return BodyModels(str(folder.resolve()), kit, cached=False)
