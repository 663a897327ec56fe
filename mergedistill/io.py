"""Atomic writes, fingerprints and stage manifests.

Every stage writes ONE output directory. It is built in a temporary sibling directory and renamed into
place at the end, so an interrupted stage never leaves a half-written output behind. The directory holds
a ``manifest.json`` with the fingerprint of everything it was made from; a later run compares fingerprints
to decide whether the stage can be skipped.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mergedistill import faults
from mergedistill.errors import UserError

MANIFEST = "manifest.json"


def fingerprint(*parts: Any) -> str:
    """A stable sha256 hex digest of JSON-serialisable parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, or of a directory's files (relative names + bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files and not path.exists():
        raise UserError(f"{path}: does not exist; check the path")
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temp file in the same directory, then rename it over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        faults.point("write")
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"{path}: no space left on device; free some disk space and re-run the same command"
            ) from None
        raise


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent if needed; raise a UserError if it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"{path.parent}: cannot create output directory ({err.strerror}); choose a writable path"
        ) from err
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path.parent}: output directory is not writable; choose a writable path")
    return path


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Delete the temp dirs/files a killed writer of ``final`` left beside it (``.<name>.*.tmp``, the
    names ``atomic_dir``/``write_text_atomic`` use, and ``.<name>.old``, the previous output a kill between
    ``atomic_dir``'s two renames leaves). Call only where one process writes ``final`` (rank 0)."""
    final = Path(final)
    removed = []
    old = final.with_name(f".{final.name}.old")
    for stale in [*final.parent.glob(f".{glob.escape(final.name)}.*.tmp"), *([old] if old.exists() else [])]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success replace ``final`` with it, on error delete it."""
    final = ensure_writable_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the final dir the usual permissions
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The directory's manifest, or None when it has none (or an unreadable one)."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def write_manifest(directory: str | os.PathLike, fingerprint_value: str, **contents: Any) -> None:
    from mergedistill import __version__

    write_json_atomic(
        Path(directory) / MANIFEST,
        {"fingerprint": fingerprint_value, "mergedistill_version": __version__, **contents},
    )


def is_current(directory: str | os.PathLike, fingerprint_value: str) -> bool:
    """True when ``directory`` holds a complete stage output made from ``fingerprint_value``."""
    manifest = read_manifest(directory)
    return manifest is not None and manifest.get("fingerprint") == fingerprint_value


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
