"""The annotation job as a script (what ``ray submit`` and ``ray job submit`` run).

    python pipelines/annotate.py --input examples --out runs/demo [flags]
    ray job submit --working-dir . -- python pipelines/annotate.py ...
    ray submit infra/cluster.yaml pipelines/annotate.py -- ...

The same as ``pearl annotate``; the job is :mod:`pipelines.annotation.job`. See ``docs/annotate.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root instead of pipelines/ on sys.path
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.annotation.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
