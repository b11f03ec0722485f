"""Reading datasets from anywhere fsspec reaches, and writing outputs atomically.

A dataset argument may be a file, a directory (every *.jsonl / *.json in it), a glob
(`data/*.jsonl`) or an fsspec URL (`gs://bucket/x.jsonl`, `s3://...`) when the matching
backend (gcsfs, s3fs, ...) is installed. Every write goes to a temporary name first and is
renamed into place, so a killed process never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

from rlhfkit.errors import RlhfkitError

DATA_SUFFIXES = (".jsonl", ".json")
# Backends users are most likely to need, by URL scheme.
_BACKENDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs",
             "hf": "huggingface_hub", "http": "aiohttp", "https": "aiohttp"}


def _filesystem(spec: str) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol = spec.split("://", 1)[0] if "://" in spec else "file"
    try:
        fs, path = fsspec.core.url_to_fs(spec)
    except ImportError as exc:
        pkg = _BACKENDS.get(protocol, f"the fsspec backend for {protocol}://")
        raise RlhfkitError(
            f"{spec}: reading {protocol}:// needs {pkg}; install it with `pip install {pkg}`"
        ) from exc
    except ValueError as exc:
        raise RlhfkitError(f"{spec}: {exc}") from exc
    return fs, path


def expand_paths(spec: str) -> list[str]:
    """Resolve a dataset argument to a sorted list of files (URLs keep their scheme).

    >>> expand_paths("data/*.jsonl")  # doctest: +SKIP
    ['data/a.jsonl', 'data/b.jsonl']
    """
    if not spec or not spec.strip():
        raise RlhfkitError("no dataset given (an empty path would read the current directory)")
    if "\0" in spec:
        raise RlhfkitError(f"{visible(spec)}: a path cannot contain a NUL byte")
    fs, path = _filesystem(spec)
    scheme = spec.split("://", 1)[0] + "://" if "://" in spec else ""

    def full(p: str) -> str:
        return scheme + p if scheme and not p.startswith(scheme) else p

    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        if not files:
            raise RlhfkitError(f"{spec}: no file matches this pattern")
        return _regular([full(p) for p in files] if scheme else files)
    if not fs.exists(path):
        raise RlhfkitError(f"{spec}: no such file or directory")
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(DATA_SUFFIXES))
        if not files:
            raise RlhfkitError(f"{spec}: directory holds no .jsonl or .json file")
        return _regular([full(p) for p in files] if scheme else files)
    return _regular([spec])


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _regular(paths: list[str]) -> list[str]:
    """Refuse local paths that are not regular files, looking only at `stat`: opening a
    FIFO for reading blocks until a writer comes, and /dev/zero or /dev/urandom never end.
    Remote (fsspec URL) objects are always plain objects."""
    for p in paths:
        if "://" in p and not p.startswith("file://"):
            continue
        local = p[len("file://"):] if p.startswith("file://") else p
        try:
            mode = os.stat(local).st_mode
        except OSError as exc:
            raise RlhfkitError(f"{visible(p)}: cannot read: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
            raise RlhfkitError(f"{visible(p)}: is {what}, not a regular file; save the "
                               "dataset to a file first")
    return paths


def visible(text: str) -> str:
    """`text` with control characters escaped (\\x00, \\x1b, ...) so a printed path
    or value cannot move the cursor, ring the bell or hide itself."""
    return "".join(ch if ch.isprintable() or ch in "\t\n" else ascii(ch)[1:-1]
                   for ch in text)


def read_bytes(path: str) -> bytes:
    fs, p = _filesystem(path)
    with fs.open(p, "rb") as f:
        return f.read()


# -- atomic writes ---------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # ENOSPC, EDQUOT, EIO...: one line naming the file
            raise write_error(exc, path) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` only if the block succeeds.

    Used for model directories (reward_model/, policy/): readers see the old complete
    directory or the new complete one, never a mix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as exc:
        raise write_error(exc, path) from exc
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk while writing the directory's files
            raise write_error(exc, path) from exc
        raise


# -- output locations, checked before any work ------------------------------------------

def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path("/")


def _probe_writable(directory: Path, target: Path) -> None:
    """Create and delete a temporary file in `directory` (the only sure test: /proc, a
    read-only mount or an ACL may pass `os.access`)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rlhfkit-probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise RlhfkitError(f"{target}: cannot write here ({directory}: "
                           f"{exc.strerror or exc})") from None


def check_output_dir(path: str | os.PathLike) -> Path:
    """A directory we will create or write into: fail in one line, writing nothing, when
    it is a file, lies under a file, or cannot be written."""
    path = Path(path)
    if "://" in str(path):
        raise RlhfkitError(f"{path}: outputs are written to a local directory")
    if path.exists() and not path.is_dir():
        raise RlhfkitError(f"{path}: is a file, not a directory")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise RlhfkitError(f"{path}: {base} is a file, not a directory")
    _probe_writable(base, path)
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """A file we will write (atomically, next to itself): fail in one line, writing
    nothing, when it is a directory, lies under a file, or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise RlhfkitError(f"{path}: is a directory; give a file name (e.g. "
                           f"{path / 'eval_results.jsonl'})")
    if path.exists() and not path.is_file():
        raise RlhfkitError(f"{path}: exists and is not a regular file")
    check_output_dir(path.absolute().parent)
    return path


_TMP_PART = re.compile(r"(^|/)\.([^/]+)\.[A-Za-z0-9_]{8}\.tmp(?=/|$)")


def write_error(exc: OSError, path: str | os.PathLike | None = None) -> RlhfkitError:
    """One line for a failed write (ENOSPC, EROFS, EACCES, ...), naming the file as the
    user knows it (RUN/reward_model/x, not the temporary directory it was written in)."""
    name = _TMP_PART.sub(r"\1\2", str(exc.filename or path or "output"))
    return RlhfkitError(f"{name}: cannot write: {exc.strerror or exc}")
