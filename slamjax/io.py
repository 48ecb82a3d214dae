"""Output files: places checked before any compute, one atomic writer, strict JSON.

* :func:`check_output_dir` / :func:`check_output_file` — a ``ValueError`` naming the argument
  and a valid alternative when a place cannot be written (checked before a run starts);
* :func:`write_bytes` / :func:`write_text` — a temporary file in the same directory, fsync,
  then ``os.replace``: an earlier file at the target is never left half-written (a full disk
  or an interrupt leaves it as it was), and a symlink at the target is replaced, never
  written through;
* :func:`to_json` / :func:`write_json` — strict JSON (RFC 8259): NaN and ±Inf become
  ``null``, NumPy and JAX values become lists and numbers;
* :func:`save_figure` — a matplotlib figure through the same writer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_output_dir", "check_output_file", "write_bytes", "write_text", "to_json",
           "write_json", "jsonable", "save_figure", "check_name"]


def _existing_ancestor(path: Path, arg: str) -> Path:
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{arg} {path}: {anc} is a file, so nothing can be created under "
                         f"it; pass a path under a directory (e.g. {arg} "
                         f"{anc.parent / 'results'})")
    return anc


def _check_writable(where: Path, target: Path, arg: str) -> None:
    try:  # a probe write (os.access says yes to root even on read-only file systems)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        alt = Path(tempfile.gettempdir()) / "slamjax-results"
        raise ValueError(f"{arg} {target}: cannot write in {where} ({e.strerror or e}); "
                         f"pass a writable place (e.g. {arg} {alt})") from None


def check_output_dir(path, arg: str = "--out") -> Path:
    """``path`` as an output *directory* that can be created and written, else a
    ``ValueError`` naming ``arg`` and a valid alternative. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{arg} {path} is an existing file, not a directory: pass a "
                             f"directory (e.g. {arg} {path.parent / 'results'}) or move "
                             "the file away")
        _check_writable(path, path, arg)
    else:
        _check_writable(_existing_ancestor(path, arg), path, arg)
    return path


def check_output_file(path, arg: str = "--out") -> Path:
    """``path`` as an output *file* (an existing file is replaced): not a directory, under a
    directory that exists or can be created, writable. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir() and not path.is_symlink():
        raise ValueError(f"{arg} {path} is a directory, but it names an output file: pass a "
                         f"file path (e.g. {arg} {path / 'results.json'})")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{arg} {path}: {parent} is a file, so nothing can be created under "
                         f"it; pass a path under a directory (e.g. {arg} "
                         f"{parent.parent / path.name})")
    where = parent if parent.exists() else _existing_ancestor(path, arg)
    _check_writable(where, path, arg)
    if path.exists() and not path.is_symlink() and not os.access(path, os.W_OK):
        raise ValueError(f"{arg} {path} exists and is read-only: pass another file name "
                         f"(e.g. {arg} {path.with_name(path.stem + '-new' + path.suffix)})")
    return path


def check_name(name: str, arg: str = "--name") -> str:
    """An output base name: a plain file name (no path separator, not absolute, not '.' or
    '..'), so that every output stays inside its output directory."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.sep in text \
            or Path(text).is_absolute():
        raise ValueError(f"{arg} {text!r} must be a plain file name (no '/', not absolute, not "
                         f"'..'): outputs are written inside the output directory; choose the "
                         f"directory with --out")
    return text


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, fsync,
    then ``os.replace`` (a symlink at ``path`` is replaced by the file, not followed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    """:func:`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def jsonable(o: Any) -> Any:
    """``o`` with arrays, NumPy scalars, dataclasses and tuples made JSON values, and every
    non-finite float replaced by ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if hasattr(o, "_asdict"):  # a NamedTuple: by field name
        return jsonable(o._asdict())
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, str) or o is None:
        return o
    if hasattr(o, "__array__") and not callable(getattr(o, "tree_flatten", None)):
        return jsonable(np.asarray(o).tolist())
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {"type": type(o).__name__, **jsonable(dataclasses.asdict(o))}
    return repr(o)


def to_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as strict JSON, written atomically."""
    return write_text(path, to_json(obj, indent) + "\n")


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` into memory, then :func:`write_bytes` (atomic). The format follows
    the suffix (``.png`` by default)."""
    import io as _io

    path = Path(path)
    buf = _io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return write_bytes(path, buf.getvalue())
