"""The annotation job on Apache Beam, as a script (see ``docs/cluster.md``).

    python pipelines/annotate_beam.py --input examples --out runs/beam [job flags] [Beam pipeline options]

The launcher is :mod:`pipelines.annotation.beam`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root instead of pipelines/ on sys.path
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.annotation.beam import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
