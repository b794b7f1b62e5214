"""Bad data files are refused with a message naming the file; good ones load unchanged."""

from __future__ import annotations

import builtins
import io
import math
import os
import pathlib
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_flowebm.datasets import load, load_file, load_images, npy_shape, validate_data

# The largest magnitude validate_data admits, as its docstring states.
BOUND = 1e15
# Advice no message may give: to unpickle or to turn the weights-only loader off.
UNSAFE_ADVICE = ("allow_pickle=True", "weights_only=False", "weights_only` set to `False")
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


class Touch:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# Writers of bad files: each takes the path to write and the marker a hostile pickle makes.


def _header_only(shape: tuple[int, ...], descr: str = "<f8") -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        with open(path, "wb") as f:
            header = {"descr": descr, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)

    return write


def _cut_npy(keep: int | None = None, drop: int = 0) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        np.save(path, np.arange(200.0).reshape(100, 2))
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep is not None else data[: len(data) - drop])

    return write


def _npy(array: np.ndarray) -> Callable[[Path, Path], None]:
    return lambda path, marker: np.save(path, array)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)  # to a buffer: np.save appends .npy to any other file name
    return buffer.getvalue()


def _bytes(data: bytes) -> Callable[[Path, Path], None]:
    return lambda path, marker: path.write_bytes(data)


def _text(text: str) -> Callable[[Path, Path], None]:
    return lambda path, marker: path.write_text(text, encoding="utf-8")


def _pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Touch(marker)))


def _object_npy(path: Path, marker: Path) -> None:
    array = np.array([[Touch(marker), 1.0], [2.0, 3.0]], dtype=object)
    np.save(path, array, allow_pickle=True)


def _object_images(path: Path, marker: Path) -> None:
    np.save(path, np.full((2, 2, 2), Touch(marker), dtype=object), allow_pickle=True)


def _npz(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros((3, 2)))


def _torch(obj: object, **kwargs) -> Callable[[Path, Path], None]:
    return lambda path, marker: torch.save(obj, path, **kwargs)


def _torch_touch(path: Path, marker: Path) -> None:
    torch.save({"data": torch.zeros(3, 2), "hook": Touch(marker)}, path)


def _legacy_touch(path: Path, marker: Path) -> None:
    torch.save(Touch(marker), path, _use_new_zipfile_serialization=False)


def _raw_header(text: str) -> Callable[[Path, Path], None]:
    """A version 1.0 .npy file whose header is ``text``, padded as numpy pads it."""
    header = text.encode("latin1") + b" " * (117 - len(text)) + b"\n"
    return _bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)


def _zip_version(path: Path, marker: Path) -> None:
    """torch.save's archive whose first record needs a zip version no reader implements."""
    torch.save(torch.zeros(3, 2), path)
    data = bytearray(path.read_bytes())
    data[data.index(b"PK\x01\x02") + 6] = 255  # version needed to extract: 25.5
    path.write_bytes(bytes(data))


def _cut_pt(path: Path, marker: Path) -> None:
    torch.save(torch.zeros(50, 2), path)
    path.write_bytes(path.read_bytes()[:300])


def _rezip(shorten_storage: bool) -> Callable[[Path, Path], None]:
    """torch.save's archive with its storage record cut short, or its records compressed."""

    def write(path: Path, marker: Path) -> None:
        buffer = io.BytesIO()
        torch.save(torch.arange(10.0).reshape(5, 2), buffer)
        out = io.BytesIO()
        with zipfile.ZipFile(buffer) as old, zipfile.ZipFile(out, "w") as new:
            for name in old.namelist():
                data = old.read(name)
                if shorten_storage and name.endswith("data/0"):
                    new.writestr(name, data[:8])
                else:
                    kind = zipfile.ZIP_STORED if shorten_storage else zipfile.ZIP_DEFLATED
                    new.writestr(name, data, compress_type=kind)
        path.write_bytes(out.getvalue())

    return write


NOT_NPY = "not a NumPy .npy file"
NOT_PT = "expected a .pt file written by torch.save"
TOO_LARGE = "magnitude at most 1e\\+15 .*got largest absolute value"
OBJECTS = "got dtype object \\(Python objects, which are never unpickled\\)"
NOT_UTF8 = "expected UTF-8 text .*which is not UTF-8"
SHORT = "the file is truncated or its header is damaged"

BAD_FILES = [
    # name, writer, loader, pattern of the message
    ("empty.npy", _bytes(b""), "load_file", "got an empty file \\(0 bytes\\): " + NOT_NPY),
    ("text.npy", _text("1,2\n3,4\n"), "load_file", "starting with b'1,2\\\\n3,': " + NOT_NPY),
    ("pickle.npy", _pickle, "load_file", NOT_NPY),
    ("npz.npy", _npz, "load_file", "starting with b'PK" + ".*" + NOT_NPY),
    ("object.npy", _object_npy, "load_file", OBJECTS),
    ("strings.npy", _npy(np.array([["a", "b"], ["c", "d"]])), "load_file", "got dtype <U1"),
    ("records.npy", _npy(np.zeros(3, dtype="f8,i4")), "load_file", "numeric NumPy array"),
    ("dates.npy", _npy(np.zeros((2, 2), dtype="M8[s]")), "load_file", "got dtype datetime64"),
    ("huge.npy", _header_only((10**12, 2)), "load_file", "16000000000000 bytes .*got 64: "),
    ("cut_data.npy", _cut_npy(drop=8), "load_file", "1600 bytes .*got 1592: " + SHORT),
    ("cut_header.npy", _cut_npy(keep=20), "load_file", "damaged or unsupported header"),
    ("cut_magic.npy", _cut_npy(keep=7), "load_file", "damaged or unsupported header"),
    ("bad_header.npy", _header_only((-3, 2)), "load_file", "got the shape \\(-3, 2\\)"),
    ("bad_descr.npy", _header_only((3, 2), "<q9"), "load_file", "damaged or unsupported"),
    ("open_paren.npy", _raw_header("{'descr': '<f8', 'shape': (3, 2, }"), "load", "damaged"),
    ("not_dict.npy", _raw_header("[1, 2]"), "load_file", "damaged or unsupported header"),
    ("version.npy", _bytes(b"\x93NUMPY\x09\x00" + b"\0" * 64), "load_file", "unsupported"),
    ("f32_inf.npy", _npy(np.array([[1.0], [1e39]])), "load_file", TOO_LARGE + " 1e\\+39"),
    ("big.npy", _npy(np.array([[1e30], [-2.0]])), "load_file", TOO_LARGE + " 1e\\+30"),
    ("ints.npy", _npy(np.array([[2**62], [0]])), "load", TOO_LARGE + " 4.6\\d*e\\+18"),
    ("latin1.csv", _bytes(b"x,y\n1,2\n\xe9,3\n"), "load_file", NOT_UTF8),
    ("binary.csv", _bytes(bytes(range(256))), "load", "byte b'\\\\x80' at offset 128"),
    ("f32_inf.csv", _text("x\n1\n1e39\n"), "load_file", TOO_LARGE + " 1e\\+39"),
    ("empty.pt", _bytes(b""), "load_file", NOT_PT),
    ("text.pt", _text("hello\n"), "load_file", NOT_PT),
    ("npy.pt", _bytes(_npy_bytes(np.zeros((3, 2)))), "load_file", NOT_PT),
    ("cut.pt", _cut_pt, "load_file", NOT_PT),
    ("pickle.pt", _pickle, "load_file", NOT_PT),
    ("legacy.pt", _legacy_touch, "load", "legacy format"),
    ("touch.pt", _torch_touch, "load_file", "Python objects that are never unpickled"),
    ("zip_version.pt", _zip_version, "load_file", NOT_PT),
    ("short.pt", _rezip(shorten_storage=True), "load_file", "got a damaged file"),
    ("deflated.pt", _rezip(shorten_storage=False), "load_file", "got a damaged archive"),
    ("dict.pt", _torch({"x": torch.zeros(3, 2)}), "load_file", "one tensor .*got dict"),
    ("list.pt", _torch([torch.zeros(3, 2)]), "load_file", "one tensor .*got list"),
    (
        "expanded.pt",
        _torch(torch.zeros(2).expand(10**12, 2)),
        "load",
        "8000000000000 bytes of data fit in",
    ),
    ("sparse.pt", _torch(torch.eye(3).to_sparse()), "load_file", "dense tensor"),
    ("f32_inf.pt", _torch(torch.tensor([[1.0], [1e39]], dtype=torch.float64)), "load", "1e\\+39"),
    ("empty.npy", _bytes(b""), "images", "got an empty file \\(0 bytes\\): " + NOT_NPY),
    ("text.npy", _text("0 1\n1 0\n"), "images", NOT_NPY),
    ("pickle.npy", _pickle, "images", NOT_NPY),
    ("object.npy", _object_images, "images", OBJECTS),
    ("huge.npy", _header_only((10**12, 8, 8), "|u1"), "images", "64000000000000 bytes"),
    ("cut.npy", _header_only((100, 8, 8), "|u1"), "images", "6400 bytes .*got 64: " + SHORT),
    ("strings.npy", _npy(np.array([["ab"]])), "images", "got dtype <U2"),
    ("empty.npy", _bytes(b""), "npy_shape", "got an empty file"),
    ("object.npy", _object_npy, "npy_shape", OBJECTS),
    ("huge.npy", _header_only((10**12, 2)), "npy_shape", SHORT),
]

LOADERS: dict[str, Callable[[Path], object]] = {
    "load_file": load_file,
    "load": load,
    "images": lambda path: load_images(path, "all"),
    "npy_shape": npy_shape,
}


@pytest.mark.parametrize(
    "name, write, loader, match",
    BAD_FILES,
    ids=[f"{loader}-{name}" for name, _, loader, _ in BAD_FILES],
)
def test_bad_files_are_refused_naming_the_file_and_running_no_code(
    tmp_path: Path, name, write, loader, match
):
    path, marker = tmp_path / name, tmp_path / "MARKER"
    write(path, marker)
    with pytest.raises(ValueError, match=match) as info:
        LOADERS[loader](path)
    message = str(info.value)
    # Exactly ValueError: not UnicodeDecodeError or another subclass escaping raw.
    assert type(info.value) is ValueError, type(info.value)
    assert str(path) in message
    assert not any(advice in message for advice in UNSAFE_ADVICE), message
    assert not marker.exists()


def test_the_hostile_pickles_do_run_code_when_unpickled(tmp_path: Path):
    """The refusals above are meaningful: the same files, unpickled, create the marker."""
    for name, write, read in [
        ("object.npy", _object_npy, lambda path: np.load(path, allow_pickle=True)),
        ("touch.pt", _torch_touch, lambda path: torch.load(path, weights_only=False)),
        ("legacy.pt", _legacy_touch, lambda path: torch.load(path, weights_only=False)),
    ]:
        path, marker = tmp_path / name, tmp_path / "MARKER"
        write(path, marker)
        read(path)
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("name", ["d.npy", "d.csv", "d.pt", "images.npy"])
def test_a_file_without_read_permission_is_refused_naming_it(tmp_path, monkeypatch, name):
    path = tmp_path / name
    if name == "images.npy":
        np.save(path, np.zeros((2, 2, 2), dtype=np.uint8))
    else:
        _save(path, np.zeros((3, 2)))
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anyway: deny it as the OS would
            monkeypatch.setattr(builtins, "open", denied)
        loader = LOADERS["images" if name == "images.npy" else "load_file"]
        with pytest.raises(ValueError, match="expected a readable file, got .*: permission denied"):
            loader(path)
    finally:
        path.chmod(0o600)


def test_missing_files_are_file_not_found_naming_the_path(tmp_path: Path):
    for loader in ["load_file", "images", "npy_shape"]:
        path = tmp_path / "missing.npy"
        with pytest.raises(FileNotFoundError, match="no such file") as info:
            LOADERS[loader](path)
        assert str(path) in str(info.value)


def test_npy_shape_reads_the_header_of_every_numeric_layout(tmp_path: Path):
    cases = {
        "images.npy": np.zeros((5, 1, 8, 8), dtype=np.uint8),
        "big_endian.npy": np.zeros((3, 2), dtype=">f8"),
        "fortran.npy": np.asfortranarray(np.zeros((4, 3), dtype=np.float32)),
        "bool.npy": np.zeros((2, 2), dtype=bool),
        "complex.npy": np.zeros(7, dtype=np.complex64),
        "scalar.npy": np.float64(3.0),
        "no_data.npy": np.zeros((0, 4)),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        assert npy_shape(tmp_path / name) == np.shape(array), name
    with open(tmp_path / "v3.npy", "wb") as f:
        np.lib.format.write_array(f, np.ones((2, 3)), version=(3, 0))
    assert npy_shape(str(tmp_path / "v3.npy")) == (2, 3)


def test_big_endian_and_spreadsheet_files_load(tmp_path: Path):
    np.save(tmp_path / "be.npy", np.array([[1.5, -2.0], [3.0, 4.0]], dtype=">f8"))
    assert load_file(tmp_path / "be.npy").tolist() == [[1.5, -2.0], [3.0, 4.0]]
    (tmp_path / "bom.csv").write_bytes("\ufeffx,y\n1,2\n3,4\n".encode())
    assert load_file(tmp_path / "bom.csv").tolist() == [[1.0, 2.0], [3.0, 4.0]]


# Properties of loading, over arrays drawn by hypothesis.


def _save(path: Path, array: np.ndarray, header: bool = False) -> None:
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(array), path)
    else:
        names = ",".join(f"c{j}" for j in range(array.shape[1])) + "\n" if header else ""
        rows = "".join(",".join(f"{v:.17g}" for v in row) + "\n" for row in array.tolist())
        path.write_text(names + rows, encoding="utf-8")


SUFFIXES = st.sampled_from([".npy", ".csv", ".pt"])
FLOATS = st.sampled_from([np.float32, np.float64])
SHAPES = st.tuples(st.integers(2, 6), st.integers(1, 4))
# The bound rounded into float32 (999999986991104.0, just below it): float32 arrays too.
LIMIT32 = float(np.float32(BOUND))
TRAINABLE = st.floats(-LIMIT32, LIMIT32, allow_nan=False, width=32)


@PROPERTY
@given(
    array=hnp.arrays(FLOATS, SHAPES, elements=TRAINABLE),
    suffix=SUFFIXES,
    header=st.booleans(),
)
def test_any_trainable_array_round_trips_in_float32(array, suffix, header):
    torch.set_default_dtype(torch.float32)  # as the command line runs; conftest restores
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data" + suffix)
        _save(path, array, header)
        x = load_file(path)
    assert x.dtype == torch.float32 and tuple(x.shape) == array.shape
    assert torch.equal(x, torch.from_numpy(array.astype(np.float32)))


BAD_VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(BOUND, 1e300, exclude_min=True),
    st.floats(-1e300, -BOUND, exclude_max=True),
)


@PROPERTY
@given(
    array=hnp.arrays(np.float64, SHAPES, elements=TRAINABLE),
    bad=BAD_VALUES,
    where=st.tuples(st.integers(0, 5), st.integers(0, 3)),
    suffix=SUFFIXES,
)
def test_any_non_finite_or_too_large_entry_is_refused_naming_the_file(array, bad, where, suffix):
    array[where[0] % array.shape[0], where[1] % array.shape[1]] = bad
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data" + suffix)
        _save(path, array)
        with pytest.raises(
            ValueError, match="expected (finite values|data in .* magnitude)"
        ) as info:
            load_file(path)
    assert str(path) in str(info.value)


@PROPERTY
@given(
    shape=st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=3).filter(lambda s: len(s) != 2),
        st.tuples(st.integers(0, 1), st.integers(1, 3)),
        st.tuples(st.integers(2, 3), st.just(0)),
    ),
    suffix=st.sampled_from([".npy", ".pt"]),
)
def test_any_array_not_of_shape_n_by_d_is_refused_naming_the_file(shape, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data" + suffix)
        _save(path, np.zeros(shape))
        with pytest.raises(ValueError, match="expected data in .* of shape \\(n, d\\)") as info:
            load_file(path)
    assert str(path) in str(info.value)


@PROPERTY
@given(
    array=hnp.arrays(
        st.one_of(
            hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64, 128)),
            hnp.integer_dtypes(endianness="?"),
            hnp.unsigned_integer_dtypes(endianness="?"),
        ),
        SHAPES,
    )
)
def test_validate_data_returns_only_finite_trainable_values(array):
    try:
        x = validate_data(array)
    except ValueError:
        with np.errstate(over="ignore"):
            wide = array.astype(np.float64)
        assert not np.isfinite(wide).all() or np.abs(wide).max() > BOUND
        return
    assert bool(torch.isfinite(x.float()).all()) and float(x.abs().max()) <= BOUND
    assert torch.equal(x.double(), torch.from_numpy(array.astype(np.float64)))


@PROPERTY
@given(
    array=hnp.arrays(
        st.one_of(
            hnp.boolean_dtypes(),
            hnp.integer_dtypes(endianness="?"),
            hnp.floating_dtypes(endianness="?"),
            hnp.complex_number_dtypes(endianness="?"),
        ),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0),
    ),
    cut=st.floats(0, 1, exclude_max=True),
)
def test_every_strict_prefix_of_a_npy_file_is_refused(array, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data.npy")
        np.save(path, array)
        assert npy_shape(path) == array.shape
        data = path.read_bytes()
        path.write_bytes(data[: int(cut * len(data))])
        with pytest.raises(ValueError) as info:
            npy_shape(path)
    assert type(info.value) is ValueError and str(path) in str(info.value)


@PROPERTY
@given(n=st.integers(2, 50), cut=st.floats(0, 1, exclude_max=True))
def test_every_strict_prefix_of_a_pt_file_is_refused(n, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data.pt")
        torch.save(torch.ones(n, 2), path)
        data = path.read_bytes()
        path.write_bytes(data[: int(cut * len(data))])
        with pytest.raises(ValueError, match=NOT_PT) as info:
            load_file(path)
    assert type(info.value) is ValueError and str(path) in str(info.value)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    suffix=st.sampled_from([".npy", ".pt"]),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
    in_header=st.booleans(),
)
def test_any_corrupted_file_loads_or_is_refused_naming_it(suffix, edits, in_header):
    """Damaged bytes anywhere (or in the first 128, a .npy header) give data or a ValueError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data" + suffix)
        _save(path, np.arange(20.0).reshape(10, 2))
        data = bytearray(path.read_bytes())
        for where, value in edits:
            data[int(where * (128 if in_header else len(data)))] = value
        path.write_bytes(bytes(data))
        try:
            x = load_file(path)
        except ValueError as e:
            assert type(e) is ValueError and str(path) in str(e), repr(e)
        else:
            assert x.ndim == 2 and bool(torch.isfinite(x).all())
