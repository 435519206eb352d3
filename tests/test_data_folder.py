"""The folder loader on an ImageFolder tree: exact pixels, parallel decoding, colour modes, bad trees
refused naming the file, and the checks of data.root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_sweep.data import DataError, DataNotFoundError, load_folder
from cifar_sweep.data import decode as decode_module
from data_trees import assert_same_bundle, make_tree, pixels, rows, save, tar_tree
from helpers import REPO


# ---------------------------------------------------------------- folder: directory


def test_folder_directory_loads_pixels_exactly(tmp_path, cache):
    tree = tmp_path / "exact"
    expected = make_tree(tree)
    bundle = load_folder(tree, val_size=2, cache_dir=cache)
    assert bundle.classes == ["cat", "dog"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 2, 6)
    assert torch.bincount(bundle.val.labels).tolist() == [1, 1]
    loaded = rows(bundle.train.images) | rows(bundle.val.images)
    train_pngs = {bytes(a.transpose(2, 0, 1).tobytes()) for k, a in expected.items() if k.startswith("train/")}
    assert train_pngs <= loaded and len(loaded) == 12
    for image, label in zip(bundle.test.images, bundle.test.labels):
        matches = [k for k, a in expected.items() if bytes(a.transpose(2, 0, 1).tobytes()) == image.numpy().tobytes()]
        assert not matches or matches[0].split("/")[1] == bundle.classes[label]


def test_parallel_decoding_matches_inline(tree, cache, tmp_path, monkeypatch):
    inline = load_folder(tree, val_size=2, cache_dir=cache)
    monkeypatch.setattr(decode_module, "CHUNK", 4)  # several chunks -> worker processes
    monkeypatch.setenv(decode_module.WORKERS_ENV, "2")
    parallel = load_folder(tar_tree(tree, tmp_path / "t.tar"), val_size=2, cache_dir=tmp_path / "other")
    assert_same_bundle(inline, parallel)


def test_grayscale_and_rgba_images_become_rgb(tree, cache):
    gray, rgba = pixels(1, channels=1), pixels(2, channels=4)
    save(tree / "train/cat/gray.png", gray)
    save(tree / "train/cat/rgba.png", rgba)
    bundle = load_folder(tree, val_size=0, cache_dir=cache)
    images = rows(bundle.train.images)
    assert bytes(np.stack([gray] * 3).tobytes()) in images
    assert bytes(rgba[..., :3].transpose(2, 0, 1).tobytes()) in images


# ---------------------------------------------------------------- folder: errors


def _truncated_jpeg(tree: Path) -> None:
    path = tree / "train/cat/0000.jpg"
    path.write_bytes(path.read_bytes()[:200])


BAD_TREES = {
    "empty class folder": (lambda t: (t / "train/bird").mkdir(), r"empty class folder\(s\) \['train/bird'\]"),
    "class sets differ": (lambda t: save(t / "test/bird/0.png", pixels(0)), r"only in test/: \['bird'\]"),
    "stray non-image": (lambda t: (t / "train/cat/notes.txt").write_text("x"), r"train/cat/notes\.txt: stray non-image"),
    "file beside classes": (lambda t: (t / "train/README").write_text("x"), r"train/README: stray file directly under train/"),
    "truncated jpeg": (_truncated_jpeg, r"train/cat/0000\.jpg: cannot decode image"),
    "garbage png": (lambda t: (t / "test/dog/0001.png").write_bytes(b"not a png"), r"test/dog/0001\.png: cannot decode image"),
    "empty file": (lambda t: (t / "test/dog/0001.png").write_bytes(b""), r"test/dog/0001\.png: empty file"),
    "wrong size": (lambda t: save(t / "train/dog/big.png", pixels(0, (48, 64))), r"train/dog/big\.png: image is 64x48, expected 32x32"),
    "16-bit png": (lambda t: Image.fromarray(np.full((32, 32), 999, np.uint16)).save(t / "train/dog/deep.png"), r"train/dog/deep\.png: .*16-bit"),
    "nested folder": (lambda t: save(t / "train/dog/sub/x.png", pixels(0)), r"train/dog/sub.*nested folders"),
    "no test folder": (lambda t: os.rename(t / "test", t / "tests"), r"no test/ folder"),
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_tree_is_refused_naming_the_problem(tree, cache, case):
    spoil, match = BAD_TREES[case]
    spoil(tree)
    with pytest.raises(DataError, match=match):
        load_folder(tree, val_size=2, cache_dir=cache)


def test_bad_image_in_an_archive_names_archive_and_member(tree, cache, tmp_path):
    _truncated_jpeg(tree)
    archive = tar_tree(tree, tmp_path / "bad.tar.gz")
    with pytest.raises(DataError, match=rf"{archive}:cifar-tiny/train/cat/0000\.jpg: cannot decode image"):
        load_folder(archive, cache_dir=cache, val_size=2)
    assert not list(cache.glob("*.pt"))  # nothing cached from a bad tree


# ---------------------------------------------------------------- data.root


def test_missing_root_fails_fast_naming_the_path(tmp_path):
    missing = tmp_path / "no/such/path"
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=rf"{missing} does not exist; point data.root at .*cifar10-jpeg\.tar\.gz"):
        load_folder(missing, cache_dir=tmp_path)
    assert time.perf_counter() - start < 1.0


def test_root_check_needs_no_torch(tmp_path):
    """The entry point can check data.root before it spends seconds importing torch."""
    code = (
        "import sys; from cifar_sweep.data.roots import resolve_root; from cifar_sweep.data import DataError\n"
        f"try: resolve_root({str(tmp_path / 'nowhere')!r})\nexcept DataError as e: print(e)\n"
        "assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path / 'nowhere'} does not exist" in out.stdout


def test_root_that_is_neither_folder_nor_archive(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"data\.zip is neither a directory nor a \.tar"):
        load_folder(tmp_path / "data.zip", cache_dir=tmp_path)


def test_sha256_with_a_directory_is_refused(tree, cache):
    with pytest.raises(DataError, match="data.sha256 checks an archive"):
        load_folder(tree, cache_dir=cache, sha256="0" * 64)


# ---------------------------------------------------------------- decoders


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io, called directly here
def test_pil_decoder_agrees_with_the_default(tree):
    array = pixels(5)
    data = save(tree / "x.png", array)
    assert np.array_equal(decode_module.decode_pil(data), array.transpose(2, 0, 1))
    assert np.array_equal(decode_module._backend()(data), array.transpose(2, 0, 1))
    with pytest.raises(OSError):
        decode_module.decode_pil(data[:100])
