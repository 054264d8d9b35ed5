"""The restricted unpickler: admits numpy / scipy.sparse / chumpy data, refuses and never runs anything else."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from model.assets.legacy_pickle import ChumpyCh, ChumpySelect, dumps_legacy
from model.assets.loaders import read_asset
from model.assets.safe_pickle import UnsafePickleError, safe_load_pickle, safe_loads


class _RunsCommand:
    """Pickles as a call of os.system (what a malicious model file would hold)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def test_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"v_template": np.zeros(3), "x": _RunsCommand(f"touch {marker}")}, protocol=2)
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as err:
        safe_load_pickle(path)
    assert f"refusing global '{os.system.__module__}.system' in {path}" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_refuses_builtins_eval_at_any_protocol(protocol):
    with pytest.raises(UnsafePickleError, match="(__builtin__|builtins).eval' in memory"):
        safe_loads(pickle.dumps([_CallsEval()], protocol=protocol), source="memory")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_and_containers_round_trip(protocol):
    obj = {
        "f": np.arange(12, dtype=np.uint32).reshape(4, 3),
        "w": np.random.default_rng(0).random((5, 2)),
        "fortran": np.asfortranarray(np.ones((3, 2))),
        "scalar": np.float32(2.5),
        "s": {1, 2},
        "t": (1, "a", None),
        "text": "lbs",
    }
    back = safe_loads(pickle.dumps(obj, protocol=protocol), source="memory")
    assert back.keys() == obj.keys()
    for k in ("f", "w", "fortran"):
        np.testing.assert_array_equal(back[k], obj[k])
        assert back[k].dtype == obj[k].dtype
    assert back["scalar"] == obj["scalar"] and back["s"] == obj["s"] and back["t"] == obj["t"]


def test_python2_chumpy_pickle_becomes_arrays():
    x = np.random.default_rng(1).random((4, 3, 6))
    select = ChumpySelect(ChumpyCh(x), np.arange(0, x.size, 2), (4, 3, 3))
    jreg = sp.csc_matrix(np.eye(3, 4))
    data = dumps_legacy({"shapedirs": select, "v_template": ChumpyCh(x[:, :, 0]), "J_regressor": jreg})
    # written the way Python 2 wrote it: chumpy classes and scipy's old module path by name
    assert b"chumpy.ch\nCh\n" in data and b"chumpy.reordering\nSelect\n" in data
    assert b"scipy.sparse.csc\ncsc_matrix\n" in data and b"_codecs" not in data
    d = safe_loads(data, source="legacy.pkl")
    np.testing.assert_array_equal(d["shapedirs"], x.ravel()[::2].reshape(4, 3, 3))
    np.testing.assert_array_equal(d["v_template"], x[:, :, 0])
    assert sp.issparse(d["J_regressor"]) and np.array_equal(d["J_regressor"].toarray(), np.eye(3, 4))


def test_chumpy_and_sparse_can_be_switched_off():
    chumpy = dumps_legacy({"x": ChumpyCh(np.ones(2))})
    with pytest.raises(UnsafePickleError, match="chumpy.ch.Ch"):
        safe_loads(chumpy, source="shard.tar:a.pyd", allow_chumpy=False)
    sparse = pickle.dumps(sp.csr_matrix(np.eye(2)))
    with pytest.raises(UnsafePickleError, match="csr_matrix"):
        safe_loads(sparse, source="shard.tar:a.pyd", allow_sparse=False)
    assert np.array_equal(safe_loads(pickle.dumps(np.eye(2)), source="x", allow_chumpy=False, allow_sparse=False), np.eye(2))


def test_chumpy_computation_is_refused_with_advice():
    data = b"cchumpy.ch_ops\nadd\n)\x81}b."
    with pytest.raises(UnsafePickleError, match="chumpy.ch_ops.add' in model.pkl: only chumpy's Ch and Select"):
        safe_loads(data, source="model.pkl")


def test_codecs_encode_only_as_latin1():
    assert safe_loads(pickle.dumps(b"\x00\xffab", protocol=2), source="x") == b"\x00\xffab"
    evil = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_loads(evil, source="x")


def test_garbage_is_a_clear_unpickling_error():
    with pytest.raises(pickle.UnpicklingError, match="cannot read broken.pkl as a pickle"):
        safe_loads(b"\x80\x02}q\x00(X", source="broken.pkl")


def test_npz_object_member_goes_through_the_safe_unpickler(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.array([_RunsCommand(f"touch {marker}")], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, ok=np.arange(3), meta=evil)
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="SMPLX_NEUTRAL.npz:meta.npy"):
        read_asset(path)
    assert not marker.exists()
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(3), names=np.array({"pelvis": 0}, dtype=object))
    d = read_asset(good)
    assert d["names"] == {"pelvis": 0} and np.array_equal(d["a"], np.arange(3))
