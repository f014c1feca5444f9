"""The weights lock file: every model file dxgraph loads is checked against a recorded sha256 first.

A lock file is JSON: ``{"format": 1, "entries": {relative path: WeightsEntry}}``, paths relative
to the lock file's folder. A file or directory (a MONAI bundle, a transformers checkpoint) is
hashed; a directory's hash covers every file's relative path and bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dxgraph.errors import UserError

PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Where the weights dxgraph trained itself are shipped."""
PACKAGED_LOCK = PACKAGED_WEIGHTS_DIR / "weights.lock.json"
"""The lock file of the shipped weights."""
LOCK_FORMAT = 1


class WeightsError(UserError):
    """A weights file is missing, not in its lock file, or does not match its recorded hash."""


class WeightsEntry(BaseModel):
    """What the lock file records about one weights file or directory."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the file, or of the directory's files and their relative paths."""
    size_bytes: int = Field(ge=0)
    """Total size."""
    licence: str
    """Licence of the weights (and of the data they were trained on)."""
    source: str
    """Where the weights come from: a URL, a paper, or ``trained by dxgraph``."""
    training_data: str = ""
    """The data they were trained on."""
    command: str = ""
    """The command that produced them."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Recorded evaluation figures, such as cross-validated Dice."""


class WeightsLock(BaseModel):
    """A lock file's contents."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    format: int = LOCK_FORMAT
    """Lock file format version."""
    entries: dict[str, WeightsEntry] = Field(default_factory=dict)
    """Path relative to the lock file's folder -> entry."""


def sha256_of_path(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory's files (relative paths included), in 1 MiB reads."""
    path = Path(path)
    if path.is_file():
        h, size = hashlib.sha256(), 0
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
    if path.is_dir():
        h, size = hashlib.sha256(), 0
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            digest, n = sha256_of_path(sub)
            h.update(f"{sub.relative_to(path).as_posix()}\0{digest}\n".encode())
            size += n
        return h.hexdigest(), size
    raise WeightsError(f"weights not found: {path}")


def read_lock(lock_path: Path) -> WeightsLock:
    """Parse a lock file; WeightsError naming the file when it is missing or malformed."""
    try:
        return WeightsLock.model_validate_json(Path(lock_path).read_bytes())
    except FileNotFoundError:
        raise WeightsError(f"weights lock file not found: {lock_path}") from None
    except ValidationError as e:
        raise WeightsError(f"weights lock file {lock_path} is malformed: {e.errors()[0]['msg']}") from None


def _key(path: Path, lock_path: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(lock_path).resolve().parent)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_posix()


def verify_weights(path: Path, lock_path: Path = PACKAGED_LOCK) -> WeightsEntry:
    """Check weights against their lock entry before anything loads them; WeightsError on any mismatch."""
    path = Path(path)
    lock = read_lock(lock_path)
    key = _key(path, lock_path)
    entry = lock.entries.get(key)
    if entry is None:
        raise WeightsError(
            f"weights {path} have no entry in the lock file {lock_path}; record them with "
            "dxgraph.tools.record_weights (sha256, licence, source) before loading"
        )
    digest, _ = sha256_of_path(path)
    if digest != entry.sha256:
        raise WeightsError(
            f"weights {path} do not match their lock entry in {lock_path}: sha256 is {digest[:16]}…, "
            f"the lock records {entry.sha256[:16]}…; the file was changed or replaced"
        )
    return entry


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    key = hashlib.sha256(str(Path(lock_path).resolve()).encode()).hexdigest()[:16]
    guard = Path(tempfile.gettempdir()) / f"dxgraph-weights-lock-{key}.guard"
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with guard.open("a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def record_weights(
    path: Path,
    *,
    licence: str,
    source: str,
    training_data: str = "",
    command: str = "",
    metrics: dict[str, float] | None = None,
    lock_path: Path = PACKAGED_LOCK,
) -> WeightsEntry:
    """Hash weights and write (or replace) their entry in the lock file, atomically."""
    digest, size = sha256_of_path(Path(path))
    entry = WeightsEntry(
        sha256=digest,
        size_bytes=size,
        licence=licence,
        source=source,
        training_data=training_data,
        command=command,
        metrics=metrics or {},
    )
    with _locked(lock_path):
        lock = read_lock(lock_path) if Path(lock_path).exists() else WeightsLock()
        entries = dict(lock.entries)
        entries[_key(Path(path), lock_path)] = entry
        text = json.dumps(
            WeightsLock(entries=dict(sorted(entries.items()))).model_dump(mode="json"), indent=2
        )
        tmp = Path(str(lock_path) + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(lock_path)
    return entry
