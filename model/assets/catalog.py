"""The files of a body-model folder: where each lives under the folder, whether pearl needs it, and
where it officially comes from. The layout is the one ``smplx.create(DIR, model_type=...)`` reads,
with the correspondence files where SMPLer-X / Hand4Whole keep them and the deformation-transfer
setup where smplx's transfer_model keeps it. docs/assets.md shows the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: file that marks a folder written by ``pearl assets synthesize`` (kit name, version, seed)
MARKER_FILE = "PEARL_SYNTHETIC_KIT.json"

SMPL_PAGE = "https://smpl.is.tue.mpg.de (Download: 'SMPL for Python', SMPL_python_v.1.1.0.zip, smpl/models/)"
SMPLX_PAGE = "https://smpl-x.is.tue.mpg.de (Download: 'SMPL-X v1.1 (NPZ+PKL)', models_smplx_v1_1.zip, models/smplx/)"
SMPLX_CORR_PAGE = "https://smpl-x.is.tue.mpg.de (Download: 'MANO and FLAME vertex indices')"
TRANSFER_PAGE = "https://smpl-x.is.tue.mpg.de (Download: 'Model transfer data', transfer_data.zip)"
MANO_PAGE = "https://mano.is.tue.mpg.de (Download: 'Models & Code', mano_v1_2.zip, mano_v1_2/models/)"
FLAME_PAGE = "https://flame.is.tue.mpg.de (Download: 'FLAME 2020' or 'FLAME 2023')"
FLAME_EMBED = "https://github.com/soubhiksanyal/FLAME_PyTorch (model/), the landmark embeddings smplx's FLAME reads"
FLAME_MP_PAGE = "https://flame.is.tue.mpg.de (Download: 'FLAME Mediapipe Landmark Embedding')"


@dataclass(frozen=True)
class AssetFile:
    """One expected file of a body-model folder."""

    key: str  # stable name used in code (``asset_file(root, key)``)
    path: str  # relative to the folder, '/'-separated
    kind: str  # what the file holds: smpl | smplx | flame | mano | flame_ids | mano_ids | deftrafo |
    #            flame_static | flame_dynamic | mediapipe
    required: bool
    source: str  # where it officially comes from
    note: str = ""  # renaming or choice the user makes

    def candidates(self, root: Path) -> list[Path]:
        """Where the file may be: its official name, then the ``.npz`` that ``pearl assets convert``
        writes in place of a pickle (``.pkl``, or a ``.npy`` holding a dict)."""
        p = Path(root) / self.path
        return [p] if p.suffix == ".npz" else [p, p.with_suffix(".npz")]

    def find(self, root: Path) -> Path | None:
        return next((p for p in self.candidates(root) if p.is_file()), None)


def _genders(kind: str, folder: str, prefix: str, ext: str, page: str, official: str) -> list[AssetFile]:
    out = []
    for gender, short in (("NEUTRAL", "neutral"), ("MALE", "m"), ("FEMALE", "f")):
        note = official.format(short) if official else ""
        out.append(AssetFile(f"{kind}_{gender.lower()}", f"{folder}/{prefix}_{gender}.{ext}", kind, gender == "NEUTRAL", page, note))
    return out


CATALOG: tuple[AssetFile, ...] = tuple(
    _genders("smpl", "smpl", "SMPL", "pkl", SMPL_PAGE, "basicmodel_{}_lbs_10_207_0_v1.1.0.pkl renamed")
    + [AssetFile("smpl_download", "smpl/basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl", "smpl", False, SMPL_PAGE, "as downloaded")]
    + _genders("smplx", "smplx", "SMPLX", "npz", SMPLX_PAGE, "")
    + [AssetFile("smplx_neutral_pkl", "smplx/SMPLX_NEUTRAL.pkl", "smplx", False, SMPLX_PAGE)]
    + [
        AssetFile("mano_right", "mano/MANO_RIGHT.pkl", "mano", True, MANO_PAGE),
        AssetFile("mano_left", "mano/MANO_LEFT.pkl", "mano", True, MANO_PAGE),
        AssetFile(
            "flame", "flame/FLAME_NEUTRAL.pkl", "flame", True, FLAME_PAGE,
            "the FLAME model in use: a copy of generic_model.pkl (FLAME 2020) or flame2023.pkl (FLAME 2023)",
        ),
        AssetFile("flame2020", "flame/generic_model.pkl", "flame", False, FLAME_PAGE, "FLAME 2020, as downloaded"),
        AssetFile("flame2023", "flame/flame2023.pkl", "flame", False, FLAME_PAGE, "FLAME 2023, as downloaded"),
        AssetFile("flame_static_embedding", "flame/flame_static_embedding.pkl", "flame_static", True, FLAME_EMBED),
        AssetFile("flame_dynamic_embedding", "flame/flame_dynamic_embedding.npy", "flame_dynamic", True, FLAME_EMBED),
        AssetFile("mediapipe_embedding", "flame/mediapipe_landmark_embedding.npz", "mediapipe", True, FLAME_MP_PAGE),
        AssetFile("smplx_flame_ids", "smplx/SMPL-X__FLAME_vertex_ids.npy", "flame_ids", True, SMPLX_CORR_PAGE),
        AssetFile("mano_smplx_ids", "smplx/MANO_SMPLX_vertex_ids.pkl", "mano_ids", True, SMPLX_CORR_PAGE),
        AssetFile("smpl2smplx_deftrafo", "transfer/smpl2smplx_deftrafo_setup.pkl", "deftrafo", True, TRANSFER_PAGE),
    ]
)  # fmt: skip
CATALOG_BY_KEY = {entry.key: entry for entry in CATALOG}


def asset_file(root: Path | str, key: str) -> Path:
    """Path of the catalog file ``key`` under ``root`` (its official name or its converted ``.npz``).

    Raises ``FileNotFoundError`` saying where to put the file and where it comes from.
    """
    if key not in CATALOG_BY_KEY:
        raise KeyError(f"unknown asset {key!r}; known: {', '.join(CATALOG_BY_KEY)}")
    entry = CATALOG_BY_KEY[key]
    found = entry.find(Path(root))
    if found is None:
        note = f" ({entry.note})" if entry.note else ""
        raise FileNotFoundError(
            f"missing body-model file {Path(root) / entry.path}{note}; it comes from {entry.source}. "
            "Run `pearl assets check DIR` for the full list."
        )
    return found
