#!/usr/bin/env bash
# Install pearl into a virtual environment (default .venv, or the one already active).
#   bash install.sh            # core + everything the tests need ([dev])
#   PEARL_EXTRAS=beam bash install.sh
# mediapipe depends on opencv-contrib-python, whose cv2 links libGL/glib: on a fresh Debian/Ubuntu
# machine `import cv2` then fails with "libGL.so.1: cannot open shared object file". pearl never
# opens a window, so this script replaces it with the headless build of the same version, which
# links no GL (mediapipe carries its own GL libraries). Alternative: `apt-get install libgl1 libglib2.0-0`.
set -euo pipefail
cd "$(dirname "$0")"
extras="${PEARL_EXTRAS:-dev}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# torch first, alone, at the pyproject pin: resolved together with everything else, pip may pick the
# registry's CUDA build of the same version (GBs of nvidia packages) over a local CPU wheel; once the pin is
# installed, the project install keeps it. (For CPU-only torch elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
torch_pin=$(python -c "import tomllib; print(next(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch')))")
python -m pip install -q "${torch_pin}"
python -m pip install -q -e ".[${extras}]"
cv_version=$(python -c "import importlib.metadata as m; print(m.version('opencv-contrib-python'))" 2>/dev/null || true)
if [ -n "$cv_version" ]; then
  python -m pip uninstall -q -y opencv-contrib-python
  python -m pip install -q --no-deps "opencv-contrib-python-headless==${cv_version}"
fi
python -c "import cv2, mediapipe, torch; print(f'pearl installed: torch {torch.__version__}, mediapipe {mediapipe.__version__}, opencv {cv2.__version__} (headless)')"
