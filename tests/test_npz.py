"""fastdist.data.npz: the one reader of untrusted .npz files (checkpoints, saved worker
states, datasets and their cache). Each damaged file must end in one NpzError line that
names the file, before anything large is allocated and without unpickling anything."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest

from fastdist.data import npz
from fastdist.data.npz import MissingArrays, NpzError, read_npz
from fastdist.errors import ConfigError
from fastdist.run.checkpoint import read_checkpoint
from fastdist.run.states import load_states

UNPICKLED: list[str] = []


class Recorder:
    """Unpickling one appends to UNPICKLED: proof that a pickle was run."""

    def __setstate__(self, state):
        UNPICKLED.append("unpickled")


def _arrays() -> dict[str, np.ndarray]:
    return {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.int64(7),
        "extra_c": np.array(["x", "yz"]),
    }


def _write(path, **arrays):
    np.savez(path, **(arrays or _arrays()))
    return path


def _member_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    return buf.getvalue()


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def _patch_central_entry(path, name: str, flags: int | None = None, method: int | None = None):
    """Set the flags or compression method that the zip's central directory (which
    zipfile trusts) gives member ``name``."""
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        n_name, n_extra, n_comment = struct.unpack_from("<HHH", raw, pos + 28)
        if raw[pos + 46 : pos + 46 + n_name] == name.encode():
            if flags is not None:
                struct.pack_into("<H", raw, pos + 8, flags)
            if method is not None:
                struct.pack_into("<H", raw, pos + 10, method)
        pos = raw.find(b"PK\x01\x02", pos + 46 + n_name + n_extra + n_comment)
    path.write_bytes(bytes(raw))


def _refused(path, match: str, **kwargs) -> NpzError:
    with pytest.raises(NpzError, match=match) as info:
        read_npz(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return info.value


def test_an_intact_file_reads_what_is_asked_for(tmp_path):
    path = _write(tmp_path / "ok.npz")
    got = read_npz(path, ["a", "b"], optional=lambda key: key.startswith("extra_"))
    assert list(got) == ["a", "b", "extra_c"]
    for key, value in _arrays().items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == value.dtype
    assert list(read_npz(path, ["b"])) == ["b"]


def test_members_not_asked_for_are_never_read(tmp_path):
    path = _zip(tmp_path / "x.npz", {"a.npy": _member_bytes(np.ones(3)), "junk.npy": b"junk"})
    np.testing.assert_array_equal(read_npz(path, ["a"])["a"], np.ones(3))


def test_a_missing_array_is_named(tmp_path):
    path = _write(tmp_path / "ok.npz")
    with pytest.raises(MissingArrays, match=r"missing array\(s\) z, y") as info:
        read_npz(path, ["a", "z", "y"])
    assert info.value.missing == ["z", "y"]


def test_a_missing_file(tmp_path):
    error = _refused(tmp_path / "absent.npz", "No such file")
    assert isinstance(error, ConfigError)


def test_a_file_that_is_not_a_zip(tmp_path):
    (tmp_path / "text.npz").write_bytes(b"not a zip file at all")
    _refused(tmp_path / "text.npz", "not a zip file")
    np.save(tmp_path / "plain.npy", np.ones(3))  # np.load would return it as an array
    _refused(tmp_path / "plain.npy", "not a zip file", required=["a"])


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_a_truncated_zip(tmp_path, keep):
    path = _write(tmp_path / "cut.npz")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    _refused(path, "not a zip file", required=["a", "b"])


def test_a_pickled_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.ones(2), extra_o=np.array([Recorder(), 1], dtype=object))
    UNPICKLED.clear()
    _refused(path, "extra_o is an object array", required=["a", "extra_o"])
    _refused(path, "extra_o is an object array", optional=lambda key: True)
    assert UNPICKLED == []


def test_a_member_that_is_not_an_npy_array(tmp_path):
    path = _zip(tmp_path / "raw.npz", {"a.npy": b"just some bytes here"})
    _refused(path, "magic string", required=["a"])


def _damaged_header() -> bytes:
    """An .npy member whose header's dict literal is broken where NumPy, failing
    ast.literal_eval, re-tokenizes it (found by the fuzz: a TokenError traceback)."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (10, 28, 28s, }"
    header = (text + " " * (63 - len(text) % 64) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16


def test_a_damaged_header_is_refused_in_one_line(tmp_path):
    path = _zip(tmp_path / "damaged.npz", {"a.npy": _damaged_header()})
    with pytest.raises(NpzError):
        read_npz(path, ["a"])
    import fastdist
    from fastdist.data.datasets import load_dataset
    from fastdist.data.npy_files import declared_shape

    npy = tmp_path / "x.npy"
    npy.write_bytes(_damaged_header())
    files = [f"dataset.{key}={npy}" for key in ("x_train", "y_train", "x_test", "y_test")]
    cfg = fastdist.compose(["dataset=npy", *files]).dataset
    assert declared_shape(cfg, "x_train") is None
    with pytest.raises(ConfigError, match="not a readable .npy array"):
        load_dataset(cfg)


def _forged(shape, dtype="<f4", data=b"\0" * 16) -> bytes:
    """An .npy member whose header declares ``shape`` but which holds ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + data


def test_a_forged_shape_is_refused_before_it_is_allocated(tmp_path):
    path = _zip(tmp_path / "big.npz", {"a.npy": _forged((2**40, 4))})
    _refused(path, r"a declares \(1099511627776, 4\) float32 .* but holds 16 bytes", required=["a"])
    path = _zip(tmp_path / "neg.npz", {"a.npy": _forged((-4,))})
    _refused(path, "negative dimension", required=["a"])


def test_arrays_larger_than_the_memory_are_refused(tmp_path, monkeypatch):
    path = _write(tmp_path / "ok.npz")
    monkeypatch.setattr(npz, "available_ram_bytes", lambda: 40)
    _refused(path, "need 56 B, more than the 40 B of memory", required=["a", "b"])


def test_a_flipped_byte_fails_the_crc(tmp_path):
    path = _write(tmp_path / "crc.npz")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a.npy")
    raw[info.header_offset + 30 + len(info.filename) + info.compress_size - 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    _refused(path, "Bad CRC-32", required=["a"])


def test_bytes_after_the_array_are_crc_checked_too(tmp_path):
    # Longer than zipfile's read-ahead (4 KiB), so only reading to the end checks them.
    tail = b"tail" * 4096
    path = _zip(tmp_path / "tail.npz", {"a.npy": _member_bytes(np.ones(3)) + tail})
    np.testing.assert_array_equal(read_npz(path, ["a"])["a"], np.ones(3))  # tolerated
    raw = bytearray(path.read_bytes())
    raw[raw.rindex(b"tail") + 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    _refused(path, "Bad CRC-32", required=["a"])


def test_an_unknown_compression_method(tmp_path):
    path = _write(tmp_path / "m.npz")
    _patch_central_entry(path, "a.npy", method=99)
    _refused(path, "compression method is not supported", required=["a"])


def test_an_encrypted_member(tmp_path):
    path = _write(tmp_path / "e.npz")
    _patch_central_entry(path, "a.npy", flags=0x1)
    _refused(path, "encrypted", required=["a"])


def test_the_callers_keep_their_own_wording(tmp_path):
    ckpt = _zip(tmp_path / "ckpt.npz", {"params.npy": _forged((2**40,))})
    with pytest.raises(ConfigError, match=r"^resume=.*: not a readable checkpoint \(missing"):
        read_checkpoint(ckpt, "")
    members = {f"{key}.npy": _member_bytes(np.int64(0)) for key in ("step", "seed")}
    members |= {"opt_state.npy": _member_bytes(np.zeros(1)), "config_hash.npy": b"?"}
    with zipfile.ZipFile(ckpt, "a") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    with pytest.raises(
        ConfigError, match=r"^resume=.*: not a readable checkpoint \(params declares"
    ):
        read_checkpoint(ckpt, "")
    states = _zip(tmp_path / "states.npz", {"worker_params.npy": _forged((2**40,))})
    with pytest.raises(ConfigError, match=r"not a complete worker-states file \(missing"):
        load_states(states, 2, 10)
    scalars = {"validation_fraction": np.float64(0), "sync": np.str_("none")}
    with zipfile.ZipFile(states, "a") as zf:
        for key, value in {**scalars, "split_hash": np.str_("h")}.items():
            zf.writestr(f"{key}.npy", _member_bytes(value))
        zf.writestr("samples_seen.npy", _member_bytes(np.zeros(2)))
    with pytest.raises(
        ConfigError,
        match=r"not a readable worker-states file \(worker_params has shape \(1099511627776,\)",
    ):
        load_states(states, 2, 10)
