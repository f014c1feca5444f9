"""Zipped DICOM series: read as the folder they came from, and hostile archives refused before harm."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dxgraph
from dxgraph.errors import CaseError
from dxgraph.imaging import MAX_COMPRESSION_RATIO, extract_zip, read_image
from dxgraph.phantoms import write_nodule_case


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path, float]:
    """A CT nodule phantom written as a DICOM series folder, the same series zipped, and its diameter."""
    tmp = tmp_path_factory.mktemp("series")
    case = write_nodule_case(tmp, 4, diameter_mm=10.0, nodule_type="solid", dicom=True)
    folder = case.images[0].path
    archive = tmp / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"study/series 1/{f.name}")
    return folder, archive, float(case.truth["diameter_mm"])


def test_a_zipped_series_reads_as_its_folder(series):
    folder, archive, _ = series
    from_folder, from_zip = read_image(folder), read_image(archive)
    assert from_zip.dims == from_folder.dims == "3d" and from_zip.format == "dicom"
    assert np.array_equal(from_zip.array, from_folder.array)
    assert from_zip.spacing_mm == from_folder.spacing_mm and from_zip.file_sha256 == from_folder.file_sha256


def test_a_zipped_series_is_diagnosed_like_its_folder(series, tmp_path):
    folder, archive, diameter_mm = series
    db = str(tmp_path / "t.db")
    options = dxgraph.RunOptions(review_rounds=0)
    zipped = dxgraph.diagnose("pulmonary nodule", archive, options, db=db)
    plain = dxgraph.diagnose("pulmonary nodule", folder, options, db=db)
    size = [e.value for e in zipped.evidence if e.indicator == "size_category" and e.superseded_by is None]
    assert zipped.diagnosis.label == plain.diagnosis.label
    assert size and abs(float(size[0]) - diameter_mm) < 1.5


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("members", "symlink", "message"),
    [
        ({"../evil.dcm": b"x"}, None, "climbs out of the folder"),
        ({"a/../../evil.dcm": b"x"}, None, "climbs out of the folder"),
        ({"/etc/evil.dcm": b"x"}, None, "absolute path"),
        ({"C:/evil.dcm": b"x"}, None, "absolute path"),
        ({"a\\..\\evil.dcm": b"x"}, None, "backslash"),
        ({"ok.dcm": b"x"}, "link.dcm", "symbolic link"),
        ({"empty/": b""}, None, "holds no files"),
    ],
)
def test_unsafe_archives_are_refused_and_write_nothing_outside(tmp_path, members, symlink, message):
    archive = _zip(tmp_path / "bad.zip", members, symlink=symlink)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CaseError, match=message):
        extract_zip(archive, dest)
    assert not (tmp_path / "evil.dcm").exists() and not Path("/etc/evil.dcm").exists()
    with pytest.raises(CaseError, match=message):
        read_image(archive)


def test_a_zip_bomb_is_refused_before_it_fills_the_disk(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.dcm", "w", force_zip64=True) as f:
            block = bytes(1024 * 1024)
            for _ in range(64):
                f.write(block)  # 64 MiB of zeros: about 64 KiB zipped, ~1000-fold
    assert archive.stat().st_size * MAX_COMPRESSION_RATIO < 64 * 1024 * 1024
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CaseError, match="zip bomb"):
        extract_zip(archive, dest)
    written = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    assert written <= archive.stat().st_size * MAX_COMPRESSION_RATIO + 2 * 1024 * 1024


def test_a_member_that_lies_about_its_size_is_caught(tmp_path):
    archive = _zip(tmp_path / "liar.zip", {"a.dcm": bytes(100_000)})
    data = bytearray(archive.read_bytes())
    # shrink the declared size in the central directory to 10 bytes: the bytes written must not trust it
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("a.dcm")
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    lh = data.find(b"PK\x03\x04")
    data[lh + 22 : lh + 26] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    assert info.file_size == 100_000
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CaseError):
        extract_zip(archive, dest)


def test_not_a_zip_and_not_an_image_says_so(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 but nothing after")
    with pytest.raises(CaseError, match="not a readable zip archive"):
        read_image(junk)
    other = tmp_path / "other.bin"
    other.write_bytes(b"hello")
    with pytest.raises(CaseError, match="zipped DICOM series"):
        read_image(other)
