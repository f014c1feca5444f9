"""A zipped DICOM series, unpacked without trusting the archive.

Archives come from users and over the network, so every member is checked before a byte is written:
its name stays inside the folder (no ``..``, no absolute or drive paths, no backslashes), it is a plain
file or folder (no symbolic links), it is not encrypted; and while unpacking, the bytes actually written
are counted against the members' declared sizes and the limits below, since a header can lie (a "zip
bomb" expands a few kilobytes into gigabytes).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from dxgraph.errors import CaseError

MAX_ARCHIVE_MEMBERS = 10_000
"""Most members (files and folders) in one archive."""
MAX_ARCHIVE_EXPANDED_BYTES = 2 * 1024**3
"""Most bytes an archive may expand to."""
MAX_COMPRESSION_RATIO = 200.0
"""Most expanded bytes per compressed byte, over the whole archive (DICOM series compress 2-20-fold)."""
_CHUNK_BYTES = 1024 * 1024


def is_zip(head: bytes) -> bool:
    """Whether bytes start like a zip archive."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _unsafe_name(name: str) -> str | None:
    """Why a member name could write outside the folder, or None when it cannot."""
    if "\\" in name or "\x00" in name:
        return "holds a backslash or a NUL"
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return "is an absolute path"
    if ".." in path.parts:
        return "climbs out of the folder (..)"
    return None


def extract_zip(archive: Path, dest: Path) -> int:
    """Unpack ``archive`` into the folder ``dest`` after checking every member; the files written.

    CaseError, naming the archive and what is wrong, for an unreadable archive, an unsafe member or one
    that expands beyond ``MAX_ARCHIVE_EXPANDED_BYTES`` or ``MAX_COMPRESSION_RATIO``; ``dest`` may then
    hold part of the archive, and the caller removes it.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise CaseError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            raise CaseError(f"{archive}: {len(infos):,} members, more than {MAX_ARCHIVE_MEMBERS:,}")
        for info in infos:
            why = _unsafe_name(info.filename)
            if why is not None:
                raise CaseError(f"{archive}: member {info.filename!r} {why}; refusing the archive")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise CaseError(
                    f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive"
                )
            if info.flag_bits & 0x1:
                raise CaseError(f"{archive}: member {info.filename!r} is encrypted")
        declared = sum(i.file_size for i in infos)
        if declared > MAX_ARCHIVE_EXPANDED_BYTES:
            raise CaseError(
                f"{archive}: declares {declared:,} bytes unpacked, more than {MAX_ARCHIVE_EXPANDED_BYTES:,}"
            )
        compressed = max(archive.stat().st_size, 1)
        limit = min(MAX_ARCHIVE_EXPANDED_BYTES, int(compressed * MAX_COMPRESSION_RATIO) + _CHUNK_BYTES)
        root = dest.resolve()
        written = files = 0
        for info in infos:
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(root):
                raise CaseError(f"{archive}: member {info.filename!r} resolves outside the folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            member = 0
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    while chunk := src.read(_CHUNK_BYTES):
                        member += len(chunk)
                        written += len(chunk)
                        if member > info.file_size or written > limit:
                            raise CaseError(
                                f"{archive}: expands beyond {limit:,} bytes ({MAX_COMPRESSION_RATIO:g} times its"
                                f" size, at most {MAX_ARCHIVE_EXPANDED_BYTES:,}) or beyond its declared sizes;"
                                " refusing it as a possible zip bomb"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
                raise CaseError(f"{archive}: member {info.filename!r} cannot be unpacked ({e})") from None
            files += 1
        if files == 0:
            raise CaseError(f"{archive}: the archive holds no files")
        return files
