"""Tar archives of an image tree: checksum verification and safe, extraction-free reading.

Members are read straight from the (compressed) stream into memory; nothing is written to disk, and
every member name passes the same rules as `tarfile`'s "data" extraction filter first, so a
hostile archive cannot even name a path outside the tree.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# data_filter checks link targets against a destination; nothing is extracted, so any absolute
# path that cannot exist serves.
_NOWHERE = "/nonexistent-cifar-sweep-archive-root"
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class Member:
    path: str  # normalised ("./a//b" -> "a/b"), relative, checked
    name: str  # as stored in the archive, for messages
    kind: str  # "file", "dir" or "link"
    read: Callable[[], bytes]  # valid only until the iteration moves on


def expected_sha256(archive: Path, given: str | None) -> tuple[str | None, str]:
    """The digest the archive must have, and where it came from (for the error message)."""
    if given:
        return _check_digest(str(given).strip(), "data.sha256"), "data.sha256"
    sidecar = archive.with_name(archive.name + ".sha256")
    if not sidecar.is_file():
        return None, ""
    first = sidecar.read_text(encoding="utf-8", errors="replace").split()
    return _check_digest(first[0] if first else "", str(sidecar)), str(sidecar)


def verify_sha256(archive: Path, given: str | None) -> str:
    """The archive's sha256; raises if it differs from data.sha256 or a `.sha256` file beside it."""
    expected, origin = expected_sha256(archive, given)
    actual = file_sha256(archive)
    if expected is not None and actual != expected.lower():
        raise DataError(
            f"{archive}: sha256 mismatch: expected {expected.lower()} (from {origin}), got {actual}. "
            f"The archive is corrupt, truncated or not the one expected: download it again, "
            f"or correct {origin}."
        )
    return actual


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest would need Python 3.11
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_digest(digest: str, origin: str) -> str:
    if not _SHA256_RE.match(digest):
        raise DataError(f"{origin}: {digest!r} is not a sha256 digest (64 hex digits)")
    return digest


def iter_members(archive: Path) -> Iterator[Member]:
    """Every member in stored order; each is checked before it is yielded, and nothing touches the disk."""
    with _read_errors(archive), tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            path = _safe_path(archive, info)
            if info.isreg():
                yield Member(path, info.name, "file", functools.partial(_read_member, archive, tar, info))
            elif info.isdir():
                yield Member(path, info.name, "dir", _no_data)
            else:  # a link that stays inside the tree (data_filter refused the rest)
                yield Member(path, info.name, "link", _no_data)


def _read_member(archive: Path, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    try:  # inline rather than `with _read_errors(...)`: this runs once per image
        return tar.extractfile(info).read()
    except _TAR_ERRORS as err:
        raise _unreadable(archive, err) from err


@contextmanager
def _read_errors(archive: Path):
    try:
        yield
    except _TAR_ERRORS as err:
        raise _unreadable(archive, err) from err


def _unreadable(archive: Path, err: Exception) -> DataError:
    return DataError(f"{archive}: cannot read the archive ({err}); it is truncated or not a tar archive: download it again")


def _safe_path(archive: Path, info: tarfile.TarInfo) -> str:
    parts = info.name.split("/")
    problem = None
    if info.name.startswith("/"):
        problem = "absolute path"
    elif ".." in parts:
        problem = "'..' in the path"
    elif not (info.isreg() or info.isdir()):
        # Links and special files get the full "data" filter. It resolves paths on disk (slow), and
        # for plain files and folders it checks nothing the two tests above do not already cover
        # when, as here, nothing is extracted.
        problem = _link_problem(info)
    if problem:
        raise DataError(f"{archive}: unsafe member {info.name!r} ({problem}); refusing to read this archive")
    return "/".join(part for part in parts if part not in ("", "."))


def _link_problem(info: tarfile.TarInfo) -> str | None:
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python before 3.10.12 / 3.11.4
        return "a link or special file, and this Python has no tarfile.data_filter to vet it"
    try:
        data_filter(info, _NOWHERE)
    except tarfile.FilterError as err:
        return str(err).replace(_NOWHERE, "<tree>")
    return None


def _no_data() -> bytes:
    return b""
