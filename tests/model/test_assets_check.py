"""`pearl assets check | convert | synthesize`: verdicts, exit codes, conversion round trips."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from model.assets import synthetic
from model.assets.catalog import CATALOG, MARKER_FILE, asset_file
from model.assets.check import asset_hashes, check_assets, check_passed, format_report
from model.assets.legacy_pickle import ChumpyCh, ChumpySelect, dumps_legacy
from model.assets.loaders import dense, load_body_model, read_asset, read_asset_dict
from pipelines.commands import assets as command


def _link(kit_dir: Path, root: Path, rels: list[str]) -> Path:
    """A folder holding links to some kit files (cheap); replace a link to tamper with a file."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(kit_dir / rel)
    return root


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


def _line(results, root, rel):
    return next(line for line in format_report(results, root) if f" {rel}" in line)


def test_check_passes_on_the_kit(kit_dir, capsys):
    assert _cli("check", str(kit_dir)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"checking {kit_dir}: synthetic kit (seed 0, kit version {synthetic.KIT_VERSION})"
    assert len(out) == len(CATALOG) + 2 and all(line.startswith("OK ") for line in out[1:-1])
    assert "OK       smplx/SMPLX_NEUTRAL.npz: SMPL-X: 10475 vertices, 55 joints" in out[5]
    assert out[-1] == "all required files present and valid"


def test_missing_required_file_fails_and_says_where_it_comes_from(kit_dir, tmp_path, capsys):
    root = _link(kit_dir, tmp_path / "kit", ["mano/MANO_RIGHT.pkl"])
    results = check_assets(root)
    assert not check_passed(results)
    line = _line(results, root, "mano/MANO_LEFT.pkl")
    assert line.startswith("MISSING") and "mano.is.tue.mpg.de" in line and str(root / "mano/MANO_LEFT.pkl") in line
    assert _line(results, root, "mano/MANO_RIGHT.pkl").startswith("OK")
    assert _line(results, root, "smpl/SMPL_MALE.pkl").startswith("ABSENT   smpl/SMPL_MALE.pkl (optional)")
    assert _cli("check", str(root)) == 1
    assert "FAILED: " in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="mano.is.tue.mpg.de"):
        asset_file(root, "mano_left")


def _replace(root: Path, rel: str, d: dict) -> None:
    path = root / rel
    path.unlink()
    path.write_bytes(pickle.dumps(d, protocol=2))


def test_wrong_shape_and_wrong_tree_are_named(kit_dir, tmp_path):
    kit_copy = _link(kit_dir, tmp_path / "kit", ["mano/MANO_RIGHT.pkl", "mano/MANO_LEFT.pkl"])
    mano = read_asset_dict(kit_copy / "mano/MANO_RIGHT.pkl")
    _replace(kit_copy, "mano/MANO_RIGHT.pkl", {**mano, "posedirs": mano["posedirs"][:, :, :100]})
    kintree = mano["kintree_table"].copy()
    kintree[0, 5] = 2
    _replace(kit_copy, "mano/MANO_LEFT.pkl", {**mano, "kintree_table": kintree})
    results = check_assets(kit_copy)
    assert "WRONG    mano/MANO_RIGHT.pkl: " in _line(results, kit_copy, "mano/MANO_RIGHT.pkl")
    assert "posedirs has shape (778, 3, 100), expected [778, 3, 135]" in _line(results, kit_copy, "mano/MANO_RIGHT.pkl")
    assert "kinematic tree differs from MANO's at joint(s) [5]" in _line(results, kit_copy, "mano/MANO_LEFT.pkl")
    assert not check_passed(results)


def test_bad_weights_and_embedding_out_of_range(kit_dir, tmp_path):
    kit_copy = _link(kit_dir, tmp_path / "kit", ["flame/FLAME_NEUTRAL.pkl", "flame/flame_static_embedding.pkl"])
    flame = read_asset_dict(kit_copy / "flame/FLAME_NEUTRAL.pkl")
    _replace(kit_copy, "flame/FLAME_NEUTRAL.pkl", {**flame, "weights": flame["weights"] * 1.1})
    emb = read_asset_dict(kit_copy / "flame/flame_static_embedding.pkl")
    _replace(kit_copy, "flame/flame_static_embedding.pkl", {**emb, "lmk_face_idx": emb["lmk_face_idx"] + 10**6})
    results = check_assets(kit_copy)
    assert "rows summing to 1" in _line(results, kit_copy, "flame/FLAME_NEUTRAL.pkl")
    assert "lmk_face_idx has values outside" in _line(results, kit_copy, "flame/flame_static_embedding.pkl")


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_pickle_with_forbidden_global_is_refused_and_never_runs(kit_dir, tmp_path, capsys):
    kit_copy = _link(kit_dir, tmp_path / "kit", ["smplx/MANO_SMPLX_vertex_ids.pkl"])
    marker = tmp_path / "ran"
    (kit_copy / "smplx/MANO_SMPLX_vertex_ids.pkl").unlink()
    (kit_copy / "smplx/MANO_SMPLX_vertex_ids.pkl").write_bytes(pickle.dumps({"left_hand": _Touch(marker)}, protocol=2))
    results = check_assets(kit_copy)
    line = _line(results, kit_copy, "smplx/MANO_SMPLX_vertex_ids.pkl")
    assert line.startswith("WRONG") and "refusing global" in line and "system'" in line
    assert _cli("check", str(kit_copy)) == 1
    assert not marker.exists()
    capsys.readouterr()


def test_hashes_cover_the_catalog_files(kit_dir):
    hashes = asset_hashes(kit_dir)
    assert set(hashes) == {e.path for e in CATALOG}
    assert MARKER_FILE not in hashes and all(len(h) == 64 for h in hashes.values())


def test_convert_round_trip_writes_no_pickle(kit_dir, tmp_path, capsys):
    src = tmp_path / "src"
    picked = [
        "flame/flame_dynamic_embedding.npy",
        "smplx/MANO_SMPLX_vertex_ids.pkl",
        "smplx/SMPL-X__FLAME_vertex_ids.npy",
        "transfer/smpl2smplx_deftrafo_setup.pkl",
    ]
    _link(kit_dir, src, picked)
    # MANO as downloaded: chumpy arrays and a chumpy Select for shapedirs
    mano = read_asset_dict(kit_dir / "mano/MANO_RIGHT.pkl")
    wide = np.concatenate([mano["shapedirs"], np.zeros_like(mano["shapedirs"])], -1)  # [778, 3, 20]
    idx = np.arange(wide.size).reshape(wide.shape)[:, :, :10].ravel()
    chumpy = {**mano, "shapedirs": ChumpySelect(ChumpyCh(wide), idx, (778, 3, 10)), "posedirs": ChumpyCh(mano["posedirs"])}
    (src / "mano").mkdir()
    (src / "mano/MANO_RIGHT.pkl").write_bytes(dumps_legacy(chumpy))
    picked.append("mano/MANO_RIGHT.pkl")
    dst = tmp_path / "dst"
    assert _cli("convert", str(src), str(dst)) == 0
    assert "none of them holds a pickle" in capsys.readouterr().out
    assert not list(dst.rglob("*.pkl"))
    for path in dst.rglob("*.np[yz]"):
        np.load(path, allow_pickle=False)  # would raise on any pickled member
    for rel in picked:
        original = read_asset(src / rel)
        copy = read_asset((dst / rel).with_suffix(".npy" if rel.endswith("ids.npy") else ".npz"))
        if not isinstance(original, dict):
            np.testing.assert_array_equal(copy, original)
            continue
        assert copy.keys() == original.keys()
        for k, v in original.items():
            if sp.issparse(v) and sp.issparse(copy[k]):
                assert v.shape == copy[k].shape and (v != copy[k]).nnz == 0, f"{rel}:{k}"
            else:
                np.testing.assert_array_equal(dense(copy[k]), dense(v), err_msg=f"{rel}:{k}")
    assert sp.issparse(read_asset(dst / "transfer/smpl2smplx_deftrafo_setup.npz")["mtx"])  # too big to store dense
    a, b = load_body_model(src / "mano/MANO_RIGHT.pkl"), load_body_model(dst / "mano/MANO_RIGHT.npz")
    np.testing.assert_array_equal(a.shapedirs, mano["shapedirs"])
    np.testing.assert_array_equal(a.shapedirs, b.shapedirs)
    np.testing.assert_array_equal(a.j_regressor, b.j_regressor)


def test_convert_refuses_unsafe_input(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "MANO_RIGHT.pkl").write_bytes(pickle.dumps(_Touch(tmp_path / "ran")))
    assert _cli("convert", str(src), str(tmp_path / "dst")) == 1
    assert "refusing global" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


def test_check_without_a_folder_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(command.ENV_DIR, raising=False)
    assert _cli("check") == 2
    assert _cli("check", str(tmp_path / "nowhere")) == 2
    monkeypatch.setenv(command.ENV_DIR, str(tmp_path))
    assert _cli("check") == 1  # an empty folder: everything missing
    assert "MISSING  smpl/SMPL_NEUTRAL.pkl" in capsys.readouterr().out


@pytest.mark.slow
def test_synthesize_then_check_from_the_cli(tmp_path, capsys):
    assert _cli("synthesize", str(tmp_path / "kit"), "--seed", "3") == 0
    assert _cli("check", str(tmp_path / "kit")) == 0
    assert "seed 3" in capsys.readouterr().out


def _deep_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of a list nested ``depth`` deep (built from opcodes: pickle.dumps would recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def test_corrupt_files_are_reported_wrong_not_crashing(kit_dir, tmp_path):
    import struct
    import zipfile

    rels = ["smplx/SMPLX_NEUTRAL.npz", "smplx/MANO_SMPLX_vertex_ids.pkl", "smplx/SMPL-X__FLAME_vertex_ids.npy"]
    root = _link(kit_dir, tmp_path / "kit", rels)
    for rel in rels:
        (root / rel).unlink()
    # 1. an npz whose deflate stream is corrupt: copy the kit's, then flip bytes inside a compressed member
    with zipfile.ZipFile(kit_dir / rels[0]) as src, zipfile.ZipFile(root / rels[0], "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    data = bytearray((root / rels[0]).read_bytes())
    with zipfile.ZipFile(root / rels[0]) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(start + 100, start + 600):
        data[k] ^= 0x5A
    (root / rels[0]).write_bytes(bytes(data))
    # 2. a pickle nested 20,000 deep
    (root / rels[1]).write_bytes(_deep_pickle(20_000))
    # 3. an .npy whose header claims 10^12 float64 (7.28 TiB) over a few bytes of data
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    (root / rels[2]).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64)

    results = check_assets(root)  # must not raise, hang or allocate terabytes
    npz, pkl, npy = (_line(results, root, rel) for rel in rels)
    assert npz.startswith("WRONG") and "corrupt or truncated member" in npz, npz
    assert pkl.startswith("WRONG") and "nested too deeply" in pkl, pkl
    assert npy.startswith("WRONG") and "header claims shape [1000000000000]" in npy and "8000000000000 bytes" in npy, npy
    assert not check_passed(results)
