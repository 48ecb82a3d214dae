"""Tests for slamjax.data: IDX loading, look-up order, md5 checks, partition."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import shutil
import struct

import numpy as np
import pytest

from slamjax import data as D

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"

#: IDX file stems per split: (images, labels) — the standard MNIST / Fashion-MNIST names.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Class counts from shared/data/README.md (digits 0..9).
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}

needs_shared = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"shared MNIST not found at {SHARED_MNIST} (expected shared/ beside the repo)",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialize an array in IDX format (uint8 or int32 only, enough for tests)."""
    arr = np.asarray(arr)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[arr.dtype]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_split(directory: pathlib.Path, split: str = "test", n: int = 12, seed: int = 0, gz: bool = True):
    """Write a small synthetic split into ``directory``; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(SPLIT_FILES[split], (images, labels)):
        blob = idx_bytes(arr)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (directory / stem).write_bytes(blob)
    return images, labels


def fake_repo(tmp):
    return tmp / "world" / "repo"


def fake_debian(tmp):
    return tmp / "world" / "usr-share-datasets" / "fashion-mnist"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No SLAMJAX_DATA, a fake empty repo root and no Debian folder (the module's look-up
    roots are patched: there is no public setting for them)."""
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "_REPO_ROOT", fake_repo(tmp_path))
    monkeypatch.setattr(D, "_DEBIAN_FASHION", fake_debian(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- real MNIST


@needs_shared
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_mnist(split, n):
    x, y = D.load_mnist(split, path=SHARED_MNIST)
    assert x.shape == (n, 784) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == MNIST_COUNTS[split]
    # Repeated loads hit the digest cache and give the same data.
    x2, y2 = D.load_mnist(split, path=SHARED_MNIST)
    np.testing.assert_array_equal(y, y2)


@needs_shared
def test_default_lookup_finds_mnist(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    directory = D.find_data_dir("mnist")
    assert directory in (REPO_ROOT / "data" / "mnist", SHARED_MNIST)
    x, y = D.load_mnist("test", normalize=False)
    assert x.dtype == np.uint8 and x.max() == 255
    assert np.bincount(y).tolist() == MNIST_COUNTS["test"]


# ----------------------------------------------------------------------------- look-up


def test_env_var_directory_and_subfolders(isolated, monkeypatch):
    env = isolated / "env"
    flat = write_split(env, seed=1)
    mn = write_split(env / "mnist", seed=2)
    fa = write_split(env / "fashion_mnist", seed=3, gz=False)
    monkeypatch.setenv(D.ENV_VAR, str(env))
    # Sub-folders win over files directly in the directory.
    x, y = D.load_mnist("test", dataset="mnist", verify=False, normalize=False)
    np.testing.assert_array_equal(x, mn[0].reshape(-1, 784))
    np.testing.assert_array_equal(y, mn[1])
    x, y = D.load_mnist("test", dataset="fashion_mnist", verify=False)
    np.testing.assert_allclose(x, fa[0].reshape(-1, 784) / 255.0, rtol=1e-6)
    assert x.dtype == np.float32 and y.dtype == np.int32
    # Files directly in $SLAMJAX_DATA.
    shutil.rmtree(env / "mnist")
    assert D.find_data_dir("mnist", split="test") == env
    x, y = D.load_mnist("test", verify=False)
    np.testing.assert_array_equal(y, flat[1])


def test_explicit_path_beats_env_and_is_exclusive(isolated, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(isolated / "env"))
    write_split(isolated / "env", seed=1)
    imgs, lbls = write_split(isolated / "mine", seed=5, gz=False)
    x, y = D.load_mnist("test", path=isolated / "mine", verify=False, normalize=False)
    np.testing.assert_array_equal(x.reshape(-1, 28, 28), imgs)
    np.testing.assert_array_equal(y, lbls)
    # An explicit path without the files is an error, even though $SLAMJAX_DATA has them.
    with pytest.raises(D.DataNotFoundError):
        D.load_mnist("test", path=isolated / "empty", verify=False)


def test_repo_data_folder(isolated):
    repo = fake_repo(isolated)
    _, lbls = write_split(repo / "data" / "mnist", split="train", seed=7)
    assert D.find_data_dir("mnist", split="train") == repo / "data" / "mnist"
    _, y = D.load_mnist("train", verify=False)
    np.testing.assert_array_equal(y, lbls)


def test_missing_file_message_names_file_and_places(isolated, monkeypatch):
    env = isolated / "env"
    write_split(env)
    (env / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(D.ENV_VAR, str(env))
    with pytest.raises(FileNotFoundError) as info:
        D.load_mnist("test", verify=False)
    msg = str(info.value)
    assert isinstance(info.value, D.DataNotFoundError)
    assert "t10k-labels-idx1-ubyte" in msg
    repo = fake_repo(isolated)
    for place in (env, env / "mnist", repo / "data" / "mnist", repo.parent / "shared" / "data" / "mnist"):
        assert str(place) in msg
    assert "LeCun" in msg and "SLAMJAX_DATA" in msg

    with pytest.raises(D.DataNotFoundError) as info:
        D.find_data_dir("fashion_mnist")
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and str(fake_debian(isolated)) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "zalandoresearch/fashion-mnist" in msg


def test_bad_arguments(isolated):
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_mnist("test", dataset="cifar10")
    with pytest.raises(ValueError, match="unknown split"):
        D.load_mnist("validation", path=isolated)


# ----------------------------------------------------------------------------- md5 checks


def test_expected_md5_for_custom_files(tmp_path):
    write_split(tmp_path, gz=True)
    stems = SPLIT_FILES["test"]
    good = {s: hashlib.md5((tmp_path / (s + ".gz")).read_bytes()).hexdigest() for s in stems}
    D.load_mnist("test", path=tmp_path, expected_md5=good)
    # The md5 of the decompressed IDX content is accepted as well.
    raw = {s: hashlib.md5(gzip.decompress((tmp_path / (s + ".gz")).read_bytes())).hexdigest() for s in stems}
    D.load_mnist("test", path=tmp_path, expected_md5=raw)
    bad = dict(good, **{stems[1]: "0" * 32})
    with pytest.raises(D.CorruptDataError, match="0{32}.*" + good[stems[1]]):
        D.load_mnist("test", path=tmp_path, expected_md5=bad)
    # Canonical md5s do not fit synthetic files.
    with pytest.raises(ValueError, match="md5 mismatch"):
        D.load_mnist("test", path=tmp_path)


@pytest.fixture
def mnist_test_copy(tmp_path):
    if not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST not found at {SHARED_MNIST}")
    d = tmp_path / "copy"
    d.mkdir()
    for stem in SPLIT_FILES["test"]:
        shutil.copyfile(SHARED_MNIST / (stem + ".gz"), d / (stem + ".gz"))
    return d


def test_flipped_byte_in_gz_is_md5_error(mnist_test_copy):
    f = mnist_test_copy / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    f.write_bytes(bytes(blob))
    with pytest.raises(D.CorruptDataError) as info:
        D.load_mnist("test", path=mnist_test_copy)
    msg = str(info.value)
    assert str(f) in msg and "md5 mismatch" in msg
    assert "ec29112dd5afa0611ce80d1b7f02629c" in msg  # expected
    assert hashlib.md5(bytes(blob)).hexdigest() in msg  # actual


def test_flipped_byte_in_uncompressed_idx_is_md5_error(mnist_test_copy):
    gz = mnist_test_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    raw[100] = (raw[100] + 1) % 10  # still a valid label, so only md5 can tell
    f = mnist_test_copy / "t10k-labels-idx1-ubyte"
    f.write_bytes(bytes(raw))
    D.load_mnist("test", path=mnist_test_copy, verify=False)  # parses fine
    with pytest.raises(D.CorruptDataError) as info:
        D.load_mnist("test", path=mnist_test_copy)
    msg = str(info.value)
    assert "27ae3e4e09519cfbb04c329615203637" in msg and hashlib.md5(bytes(raw)).hexdigest() in msg


def test_uncompressed_and_recompressed_copies_verify(mnist_test_copy):
    # Uncompressed IDX, and a .gz with another gzip header (as Debian ships
    # Fashion-MNIST): both pass through the md5 of the decompressed content.
    img = mnist_test_copy / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(img.read_bytes())
    img.unlink()
    (mnist_test_copy / "t10k-images-idx3-ubyte").write_bytes(raw)
    lbl = mnist_test_copy / "t10k-labels-idx1-ubyte.gz"
    lbl.write_bytes(gzip.compress(gzip.decompress(lbl.read_bytes()), mtime=0))
    x, y = D.load_mnist("test", path=mnist_test_copy)
    assert x.shape == (10000, 784)
    assert np.bincount(y).tolist() == MNIST_COUNTS["test"]


def test_truncated_real_file_is_md5_error(mnist_test_copy):
    f = mnist_test_copy / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:50000])
    with pytest.raises(D.CorruptDataError, match="9fb629c4189551a2d022fa330f9573f3.*does not decompress"):
        D.load_mnist("test", path=mnist_test_copy)


def test_wrong_dataset_hint(mnist_test_copy):
    with pytest.raises(D.CorruptDataError, match="'mnist' dataset's"):
        D.load_mnist("test", path=mnist_test_copy, dataset="fashion_mnist")


def test_digest_cache(tmp_path, monkeypatch):
    f = tmp_path / "t10k-labels-idx1-ubyte"
    f.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)))
    md5 = hashlib.md5(f.read_bytes()).hexdigest()
    D.verify_file(f, expected=md5)

    def boom(*a, **k):
        raise AssertionError("md5 recomputed for an unchanged file")

    with monkeypatch.context() as m:
        m.setattr(D.hashlib, "md5", boom)
        D.verify_file(f, expected=md5)  # served from the cache
    f.write_bytes(idx_bytes(np.arange(9, dtype=np.uint8)))  # changed: size and mtime
    with pytest.raises(D.CorruptDataError):
        D.verify_file(f, expected=md5)


# ----------------------------------------------------------------------------- IDX format errors


def test_read_idx_roundtrip_and_dtypes(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "a.idx").write_bytes(idx_bytes(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(a)))
    for name in ("a.idx", "a.idx.gz"):
        b = D.read_idx(tmp_path / name)
        assert b.dtype == np.int32 and b.dtype.isnative
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        D.read_idx(tmp_path / "nope.idx")


def test_bad_magic(tmp_path):
    write_split(tmp_path, gz=False)
    f = tmp_path / "t10k-labels-idx1-ubyte"
    f.write_bytes(b"\x12\x34\x08\x01" + f.read_bytes()[4:])
    with pytest.raises(D.CorruptDataError, match="bad IDX magic number 0x12340801"):
        D.read_idx(f)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*magic"):
        D.load_mnist("test", path=tmp_path, verify=False)
    # Images and labels swapped: valid IDX, wrong content.
    imgs = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(imgs.read_bytes())
    imgs.write_bytes(idx_bytes(np.zeros(12, np.uint8)))
    with pytest.raises(D.CorruptDataError, match="shape"):
        D.load_mnist("test", path=tmp_path, verify=False)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, gz):
    write_split(tmp_path, gz=gz)
    f = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(D.CorruptDataError, match="gzip" if gz else "truncated"):
        D.load_mnist("test", path=tmp_path, verify=False)
    if not gz:
        f.write_bytes(blob[:10])
        with pytest.raises(D.CorruptDataError, match="truncated IDX header"):
            D.read_idx(f)


def test_count_mismatch_and_label_range(tmp_path):
    write_split(tmp_path, n=12, gz=False)
    lbl = tmp_path / "t10k-labels-idx1-ubyte"
    lbl.write_bytes(idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(D.CorruptDataError, match="12 images but .* 11 labels"):
        D.load_mnist("test", path=tmp_path, verify=False)
    lbl.write_bytes(idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(D.CorruptDataError, match="out of range"):
        D.load_mnist("test", path=tmp_path, verify=False)


# ----------------------------------------------------------------------------- partition


def _toy(n=100):
    x = np.arange(n * 784, dtype=np.float32).reshape(n, 784)
    return x, np.arange(n, dtype=np.int32)


def test_partition_shapes_disjoint_deterministic():
    x, y = _toy()
    px, py = D.partition(x, y, n_agents=4, per_agent=20, seed=3)
    assert px.shape == (4, 20, 784) and py.shape == (4, 20)
    assert len(np.unique(py)) == 80  # disjoint shards
    np.testing.assert_array_equal(px[..., 0] / 784, py)  # images stay with labels
    qx, qy = D.partition(x, y, 4, 20, seed=3)
    np.testing.assert_array_equal(py, qy)
    np.testing.assert_array_equal(px, qx)
    _, ry = D.partition(x, y, 4, 20, seed=4)
    assert not np.array_equal(py, ry)
    _, sy = D.partition(x, y, 4, 25, seed=0, shuffle=False)
    np.testing.assert_array_equal(sy, np.arange(100).reshape(4, 25))


def test_partition_errors():
    x, y = _toy(50)
    with pytest.raises(ValueError, match="exceeds the 50 examples"):
        D.partition(x, y, 6, 10, seed=0)
    with pytest.raises(ValueError, match="n_agents"):
        D.partition(x, y, 0, 10, seed=0)
    with pytest.raises(ValueError, match="per_agent"):
        D.partition(x, y, 2, 0, seed=0)
    with pytest.raises(ValueError, match="differ in length"):
        D.partition(x, y[:-1], 2, 3, seed=0)
    D.partition(x, y, 5, 10, seed=0)  # exactly all of it is fine


# ----------------------------------------------------------------------------- Fashion-MNIST


def _fashion_dir():
    try:
        return D.find_data_dir("fashion_mnist")
    except FileNotFoundError:
        return None


@pytest.mark.skipif(
    _fashion_dir() is None,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, "
    "or put the files in data/fashion_mnist or $SLAMJAX_DATA)",
)
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, n):
    x, y = D.load_mnist(split, dataset="fashion_mnist")  # md5-verified
    assert x.shape == (n, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10
