"""The folder loader on a tar archive: the same bundle as the directory, unsafe members refused, the
archive's sha256, a cut archive, and the real CIFAR-10 JPEG copy (slow)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest
import torch

from cifar_sweep.data import DataError, load_folder
from data_trees import assert_same_bundle, tar_tree
from helpers import JPEG_ARCHIVE as REAL_ARCHIVE


@pytest.mark.parametrize("top", ["cifar-tiny", None])
def test_archive_gives_the_same_bundle_as_the_directory(tree, cache, tmp_path, top):
    archive = tar_tree(tree, tmp_path / "tiny.tar.gz", top)
    from_dir = load_folder(tree, val_size=2, cache_dir=cache)
    from_tar = load_folder(archive, val_size=2, cache_dir=cache)
    assert_same_bundle(from_dir, from_tar)
    assert from_tar.source.startswith(f"folder:{archive} (")


# ---------------------------------------------------------------- unsafe and damaged archives


def _archive_with(tmp_path: Path, tree: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    archive = tar_tree(tree, tmp_path / "evil.tar", top=None)
    with tarfile.open(archive, "a") as tar:
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return archive


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (tarfile.TarInfo("../evil.png"), r"unsafe member '\.\./evil\.png' \('\.\.' in the path\)"),
        (tarfile.TarInfo("train/cat/../../../evil.png"), r"unsafe member .*'\.\.' in the path"),
        (tarfile.TarInfo("/tmp/evil.png"), r"unsafe member '/tmp/evil\.png' \(absolute path\)"),
        (_link("train/cat/link.png", "../../../../etc/passwd"), r"unsafe member 'train/cat/link\.png'.*outside"),
        (_link("train/cat/link.png", "/etc/passwd"), r"unsafe member 'train/cat/link\.png'.*absolute"),
        (_link("train/cat/dev", "", tarfile.CHRTYPE), r"unsafe member 'train/cat/dev'.*special file"),
        (_link("train/cat/inside.png", "0001.png"), r"train/cat/inside\.png: not a regular file"),
    ],
)
def test_unsafe_archive_members_are_refused(tree, cache, tmp_path, member, match):
    archive = _archive_with(tmp_path, tree, member, b"x" if member.isreg() else b"")
    with pytest.raises(DataError, match=match):
        load_folder(archive, val_size=2, cache_dir=cache)
    assert not (tmp_path / "evil.png").exists() and not list(cache.glob("*.pt"))


def test_archive_sha256_is_checked(tree, cache, tmp_path):
    archive = tar_tree(tree, tmp_path / "tiny.tar.gz")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"sha256 mismatch: expected {wrong} \\(from data.sha256\\), got {actual}"):
        load_folder(archive, val_size=2, cache_dir=cache, sha256=wrong)
    sidecar = tmp_path / "tiny.tar.gz.sha256"
    sidecar.write_text(f"{wrong}  tiny.tar.gz\n")
    with pytest.raises(DataError, match=f"expected {wrong} \\(from {sidecar}\\), got {actual}"):
        load_folder(archive, val_size=2, cache_dir=cache)
    sidecar.write_text(f"{actual}  tiny.tar.gz\n")
    load_folder(archive, val_size=2, cache_dir=cache)
    with pytest.raises(DataError, match=f"sha256 mismatch: expected {wrong}"):  # checked on cache hits too
        load_folder(archive, val_size=2, cache_dir=cache, sha256=wrong)
    with pytest.raises(DataError, match="not a sha256 digest"):
        load_folder(archive, val_size=2, cache_dir=cache, sha256="abc")


def test_truncated_archive_is_refused(tree, cache, tmp_path):
    archive = tar_tree(tree, tmp_path / "cut.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-300])
    with pytest.raises(DataError, match=rf"{archive}: cannot read the archive"):
        load_folder(archive, val_size=2, cache_dir=cache)


# ---------------------------------------------------------------- the real JPEG copy


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"{REAL_ARCHIVE} not present")
def test_real_cifar10_jpeg_archive(tmp_path):
    bundle = load_folder(REAL_ARCHIVE, val_size=5000, cache_dir=tmp_path)
    assert bundle.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45000, 5000, 10000)
    assert torch.bincount(bundle.val.labels).tolist() == [500] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    assert len(set(bundle.test.labels[:100].tolist())) > 5  # mixed, not class by class
    assert 100 < bundle.mean[0] < 140 and 50 < bundle.std[0] < 80
    start = time.perf_counter()
    again = load_folder(REAL_ARCHIVE, val_size=5000, cache_dir=tmp_path)
    assert again.source.endswith("(cache hit)") and time.perf_counter() - start < 5
    assert_same_bundle(bundle, again)
    pair = load_folder(REAL_ARCHIVE, val_size=0, classes=["airplane", "automobile"], cache_dir=tmp_path)
    assert (len(pair.train), len(pair.test), pair.val_is_test) == (10000, 2000, True)
