"""Offline loaders for MNIST and Fashion-MNIST (IDX format, gzip'd or not).

Nothing is ever downloaded.  The four files of a dataset are looked up, in
this order (see :func:`find_data_dir`):

1. the explicit ``path`` argument (a directory holding the files directly or
   in a ``mnist/`` / ``fashion_mnist/`` sub-folder); when given, nothing else
   is searched;
2. the ``SLAMJAX_DATA`` environment variable (same layout);
3. ``<repo root>/data/<dataset>/``;
4. ``<repo root>/../shared/data/<dataset>/``;
5. for Fashion-MNIST only, Debian's ``dataset-fashion-mnist`` package:
   ``/usr/share/datasets/fashion-mnist/``.

Each file may be ``<name>.gz`` or the uncompressed ``<name>``.  With
``verify=True`` a file is accepted when either the md5 of the file itself
equals the canonical md5 of the ``.gz`` distribution file, or the md5 of its
decompressed IDX content equals the canonical md5 of the IDX data.  The second
rule accepts uncompressed copies and re-compressed ones, such as Debian's:
its ``.gz`` files carry a normalized gzip header (no stored file name, mtime
2020-06-05) and so have other md5s than the Zalando release, but their deflate
streams are byte-identical to it, so the decompressed IDX md5s match.
Digests are cached per (path, size, mtime, inode) in :data:`_DIGEST_CACHE`,
so repeated loads of an unchanged file do not hash it again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from slamjax.caches import LRUCache

__all__ = [
    "DATASETS",
    "KNOWN_MD5",
    "CorruptDataError",
    "DataNotFoundError",
    "find_data_dir",
    "load_mnist",
    "partition",
    "read_idx",
    "verify_file",
]

DATASETS = ("mnist", "fashion_mnist")
"""Supported dataset names."""

ENV_VAR = "SLAMJAX_DATA"
"""Environment variable naming a data directory."""

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")

_SUBDIRS = {"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")}
"""Sub-folder names accepted under a data directory, per dataset."""

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""IDX file stems per split: (images, labels)."""

KNOWN_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
}
"""Canonical md5s per dataset and file stem: (md5 of the .gz, md5 of the IDX)."""

_WHERE_TO_GET = {
    "mnist": (
        "Get the original MNIST IDX files of LeCun, Cortes & Burges "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) and put them into "
        f"{_REPO_ROOT / 'data' / 'mnist'}, or set {ENV_VAR} to a directory that "
        "holds them (directly or in a mnist/ sub-folder)."
    ),
    "fashion_mnist": (
        "Install Debian's package (`apt-get install dataset-fashion-mnist`, files "
        f"in {_DEBIAN_FASHION}), or get the zalandoresearch/fashion-mnist release "
        "files (same names as MNIST's) and put them into "
        f"{_REPO_ROOT / 'data' / 'fashion_mnist'}, or set {ENV_VAR} to a directory "
        "that holds them (directly or in a fashion_mnist/ sub-folder)."
    ),
}

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801

_DIGEST_CACHE = LRUCache(maxsize=64)
"""(resolved path, size, mtime_ns, inode) -> {"file": md5, "idx": md5 or None} (bounded;
emptied by :func:`slamjax.clear_caches`)."""


class DataNotFoundError(FileNotFoundError):
    """A data file or directory is missing; the message says where we looked."""


class CorruptDataError(ValueError):
    """A data file is damaged: md5 mismatch, bad magic, truncated, bad gzip."""


# --------------------------------------------------------------------------- IDX


def _decompress(blob: bytes, path: os.PathLike | str) -> bytes:
    """Gunzip ``blob`` if it starts with the gzip magic, else return it as is."""
    if blob[:2] != b"\x1f\x8b":
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise CorruptDataError(f"{path}: not a valid gzip file (truncated or damaged?): {exc}") from exc


def _parse_idx(raw: bytes, path: os.PathLike | str) -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian array."""
    if len(raw) < 4:
        raise CorruptDataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise CorruptDataError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTDD with a "
            f"known type code TT, e.g. 0x{_IMAGES_MAGIC:08x} for images, "
            f"0x{_LABELS_MAGIC:08x} for labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    want = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != want:
        kind = "truncated" if len(raw) < want else "has trailing bytes"
        raise CorruptDataError(
            f"{path}: IDX file {kind}: header says shape {shape} ({want} bytes), file has {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: os.PathLike | str) -> np.ndarray:
    """Read an IDX file (gzip'd or not, detected from its content) into an array.

    Raises :class:`DataNotFoundError` if the file is missing and
    :class:`CorruptDataError` for a bad magic number, a truncated file or a
    damaged gzip stream.  No md5 check is made here (see :func:`verify_file`).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file not found: {path}")
    return _parse_idx(_decompress(path.read_bytes(), path), path)


# --------------------------------------------------------------------------- md5


def _cache_key(path: pathlib.Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _file_stem(path: pathlib.Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def verify_file(
    path: os.PathLike | str,
    dataset: str = "mnist",
    expected: str | tuple[str, ...] | None = None,
    *,
    _blob: bytes | None = None,
    _raw: bytes | None = None,
) -> None:
    """Check a data file's md5; raise :class:`CorruptDataError` on a mismatch.

    The file passes when the md5 of its bytes, or of its decompressed IDX
    content, is one of ``expected`` (default: the canonical .gz and IDX md5s
    of ``dataset`` for the file's name, from :data:`KNOWN_MD5`).  Digests are
    cached per path, size, mtime and inode.
    """
    path = pathlib.Path(path)
    stem = _file_stem(path)
    if expected is None:
        try:
            expected = KNOWN_MD5[dataset][stem]
        except KeyError:
            raise ValueError(f"no known md5 for {dataset!r} file {path.name!r}; pass expected=") from None
        wanted = f"{expected[0]} (canonical .gz) or {expected[1]} (decompressed IDX)"
    else:
        expected = (expected,) if isinstance(expected, str) else tuple(expected)
        wanted = " or ".join(expected)
    key = _cache_key(path)
    digests = _DIGEST_CACHE.get(key, lambda: {"file": None, "idx": None})
    if digests["file"] is None:
        blob = _blob if _blob is not None else path.read_bytes()
        digests["file"] = hashlib.md5(blob).hexdigest()
    if digests["file"] in expected:
        return
    error = ""
    if digests["idx"] is None:
        try:
            if _raw is None:
                blob = _blob if _blob is not None else path.read_bytes()
                _raw = _decompress(blob, path)
            digests["idx"] = hashlib.md5(_raw).hexdigest()
        except CorruptDataError as exc:
            error = f" (and it does not decompress: {exc})"
    if digests["idx"] in expected:
        return
    hint = ""
    for other, table in KNOWN_MD5.items():
        if other != dataset and {digests["file"], digests["idx"]} & set(table.get(stem, ())):
            hint = f" This is the {other!r} dataset's {stem}, not a {dataset!r} file."
    actual = f"md5 of file {digests['file']}"
    if digests["idx"] is not None and digests["idx"] != digests["file"]:
        actual += f", md5 of decompressed IDX {digests['idx']}"
    raise CorruptDataError(
        f"{path}: md5 mismatch for {dataset!r} {stem}: expected {wanted}; "
        f"got {actual}{error}.{hint} "
        "Replace the file with an intact copy (or pass verify=False to skip the check)."
    )


# --------------------------------------------------------------------------- look-up


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def _candidate_dirs(dataset: str, path: os.PathLike | str | None) -> list[tuple[str, pathlib.Path]]:
    """Directories to search, in order, each with a short label of its origin."""
    subs = _SUBDIRS[dataset]

    def under(base: pathlib.Path, origin: str) -> list[tuple[str, pathlib.Path]]:
        return [(origin, base / s) for s in subs] + [(origin, base)]

    if path is not None:
        return under(pathlib.Path(path).expanduser(), "path argument")
    out: list[tuple[str, pathlib.Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out += under(pathlib.Path(env).expanduser(), f"${ENV_VAR}")
    out += [("repo data/", _REPO_ROOT / "data" / s) for s in subs]
    out += [("shared data", _REPO_ROOT.parent / "shared" / "data" / s) for s in subs]
    if dataset == "fashion_mnist":
        out.append(("Debian dataset-fashion-mnist", _DEBIAN_FASHION))
    return out


def _find_file(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(dataset: str = "mnist", path: os.PathLike | str | None = None, split: str | None = None) -> pathlib.Path:
    """Return the first directory that holds the needed files of ``dataset``.

    The files needed are those of ``split`` ("train" or "test"), or of both
    splits when ``split`` is None.  See the module docstring for the search
    order.  An explicit ``path`` is the only place searched when given.
    Raises :class:`DataNotFoundError` naming the missing files, every
    directory searched and where to get the data.
    """
    _check_dataset(dataset)
    splits = [split] if split is not None else list(_SPLIT_FILES)
    for s in splits:
        if s not in _SPLIT_FILES:
            raise ValueError(f"unknown split {s!r}; expected 'train' or 'test'")
    stems = [stem for s in splits for stem in _SPLIT_FILES[s]]
    lines = []
    for origin, directory in _candidate_dirs(dataset, path):
        missing = [st for st in stems if _find_file(directory, st) is None]
        if not missing:
            return directory
        state = "no such directory" if not directory.is_dir() else "missing " + ", ".join(m + "[.gz]" for m in missing)
        lines.append(f"  - {directory} ({origin}): {state}")
    raise DataNotFoundError(
        f"{dataset} data not found: need {', '.join(s + '.gz' for s in stems)} "
        "(or the uncompressed files). Searched:\n" + "\n".join(lines) + "\n" + _WHERE_TO_GET[dataset]
    )


# --------------------------------------------------------------------------- loading


def _load_file(path: pathlib.Path, dataset: str, verify: bool, expected_md5: Mapping[str, object] | None) -> np.ndarray:
    """Read, optionally md5-check, decompress and parse one IDX file."""
    blob = path.read_bytes()
    if not verify:
        return _parse_idx(_decompress(blob, path), path)
    try:
        raw = _decompress(blob, path)
    except CorruptDataError:
        raw = None  # verify_file reports it, together with the md5s
    expected = None
    if expected_md5 is not None:
        expected = expected_md5.get(_file_stem(path))
        if expected is None:
            raise ValueError(f"expected_md5 has no entry for {_file_stem(path)!r}")
    verify_file(path, dataset, expected, _blob=blob, _raw=raw)
    return _parse_idx(raw if raw is not None else _decompress(blob, path), path)


def load_mnist(
    split: str = "train",
    path: os.PathLike | str | None = None,
    dataset: str = "mnist",
    verify: bool = True,
    normalize: bool = True,
    expected_md5: Mapping[str, str | tuple[str, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of MNIST or Fashion-MNIST from local IDX files.

    Args:
      split: "train" (60000 examples) or "test" (10000).
      path: directory to use instead of the default search (see module doc).
      dataset: "mnist" or "fashion_mnist".
      verify: check md5s (canonical ones, or ``expected_md5``).
      normalize: images as float32 in [0, 1]; if False, raw uint8 pixels 0..255.
      expected_md5: optional ``{file stem: md5 or tuple of md5s}`` replacing
        the canonical table, e.g. for custom files; each md5 may be that of the
        file or of its decompressed IDX content.

    Returns:
      ``(images, labels)``: images of shape (N, 784) (float32, or uint8 if not
      normalized), labels int32 of shape (N,) with values 0..9.
    """
    _check_dataset(dataset)
    directory = find_data_dir(dataset, path, split)
    img_stem, lbl_stem = _SPLIT_FILES[split]
    img_path, lbl_path = _find_file(directory, img_stem), _find_file(directory, lbl_stem)
    images = _load_file(img_path, dataset, verify, expected_md5)
    labels = _load_file(lbl_path, dataset, verify, expected_md5)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise CorruptDataError(f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CorruptDataError(f"{lbl_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise CorruptDataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise CorruptDataError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
    images = images.reshape(len(images), 28 * 28)
    if normalize:
        images = np.divide(images, np.float32(255.0), dtype=np.float32)
    return images, labels.astype(np.int32)


def partition(
    images: np.ndarray,
    labels: np.ndarray,
    n_agents: int,
    per_agent: int,
    seed: int = 0,
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a dataset into ``n_agents`` disjoint shards of ``per_agent`` examples.

    With ``shuffle`` the examples are drawn by a permutation from
    ``np.random.default_rng(seed)`` (deterministic given the seed); otherwise
    the first ``n_agents * per_agent`` examples are used in order.

    Returns ``(images, labels)`` stacked on a leading agent axis, of shapes
    ``(n_agents, per_agent, *images.shape[1:])`` and ``(n_agents, per_agent)``.
    Raises ``ValueError`` if ``n_agents < 1``, ``per_agent < 1``, the arrays
    differ in length, or ``n_agents * per_agent`` exceeds the data.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if int(n_agents) != n_agents or n_agents < 1:
        raise ValueError(f"n_agents must be an integer >= 1, got {n_agents!r}")
    if int(per_agent) != per_agent or per_agent < 1:
        raise ValueError(f"per_agent must be an integer >= 1, got {per_agent!r}")
    n_agents, per_agent = int(n_agents), int(per_agent)
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    need = n_agents * per_agent
    if need > len(images):
        raise ValueError(
            f"n_agents * per_agent = {n_agents} * {per_agent} = {need} exceeds the {len(images)} examples available"
        )
    order = np.random.default_rng(seed).permutation(len(images)) if shuffle else np.arange(len(images))
    idx = order[:need].reshape(n_agents, per_agent)
    return images[idx], labels[idx]
