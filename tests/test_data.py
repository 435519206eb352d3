"""The data layer: loaders, splits, caches, archive safety and the error messages users see."""

from __future__ import annotations

import hashlib
import inspect
import io
import multiprocessing
import os
import pickle
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_sweep.data import DataBundle, DataError, DataNotFoundError, load_cifar10, load_folder, load_synthetic
from cifar_sweep.data import decode as decode_module
from cifar_sweep.data.bundle import mean_std, stratified_split

REPO = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"


# ---------------------------------------------------------------- helpers


def pixels(seed: int, size: tuple[int, int] = (32, 32), channels: int = 3) -> np.ndarray:
    shape = (*size, channels) if channels > 1 else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def make_tree(root: Path, classes=("cat", "dog"), n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    """A tiny tree of random 32x32 images: PNG (lossless, so pixels can be compared) and one JPEG
    per class. Returns the PNG pixels by relative path."""
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                rel = f"{split}/{name}/{i:04d}"
                if i == 0:
                    save(root / f"{rel}.jpg", pixels(zlib.crc32(rel.encode())), "JPEG")
                else:
                    array = pixels(zlib.crc32(rel.encode()))
                    save(root / f"{rel}.png", array)
                    expected[f"{rel}.png"] = array
    return expected


def tar_tree(tree: Path, archive: Path, top: str | None = "cifar-tiny") -> Path:
    with tarfile.open(archive, "w" if archive.suffix == ".tar" else "w:gz") as tar:
        tar.add(tree, arcname=top or ".")
    return archive


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in images}


def assert_same_bundle(a: DataBundle, b: DataBundle) -> None:
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images), split
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels), split
    assert (a.classes, a.mean, a.std, a.val_is_test) == (b.classes, b.mean, b.std, b.val_is_test)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "tree")
    return tmp_path / "tree"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b, c = load_synthetic(seed=3), load_synthetic(seed=3), load_synthetic(seed=4)
    assert_same_bundle(a, b)
    assert not torch.equal(a.train.images, c.train.images)


def test_synthetic_shapes_dtypes_and_sizes():
    start = time.perf_counter()
    bundle = load_synthetic(n_train=2000, n_test=500, val_size=500)
    assert time.perf_counter() - start < 1.0  # about 0.1 s; generous for a loaded CI machine
    for split, n in (("train", 1500), ("val", 500), ("test", 500)):
        s = getattr(bundle, split)
        assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert s.labels.shape == (n,) and s.labels.dtype == torch.int64
    assert bundle.classes[:2] == ["airplane", "automobile"] and len(bundle.classes) == 10
    assert not bundle.val_is_test and bundle.source.startswith("synthetic:")


def test_synthetic_val_is_stratified_and_disjoint_from_train():
    bundle = load_synthetic(n_train=2000, val_size=500)
    assert torch.bincount(bundle.val.labels, minlength=10).tolist() == [50] * 10
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [150] * 10
    assert not rows(bundle.train.images) & rows(bundle.val.images)


def test_every_split_is_shuffled():
    bundle = load_synthetic()
    for split in (bundle.train, bundle.val, bundle.test):
        assert len(set(split.labels[:20].tolist())) > 3  # class-sorted order would give one class


def test_synthetic_is_learnable_but_not_trivial():
    """Nearest class mean on raw pixels (what a linear model can do): well above chance, below 100%."""
    bundle = load_synthetic()
    x, y = bundle.train.images.flatten(1).double(), bundle.train.labels
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(bundle.val.images.flatten(1).double(), centroids).argmin(1)
    accuracy = (pred == bundle.val.labels).double().mean().item()
    assert 0.35 < accuracy < 0.95


def test_mean_std_match_a_direct_float64_computation():
    bundle = load_synthetic()
    x = bundle.train.images.double()
    assert np.allclose(bundle.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(bundle.std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)


def test_mean_std_extremes_are_exact():
    white = torch.full((4, 3), 255 * 1024, dtype=torch.int64), torch.full((4, 3), 255**2 * 1024, dtype=torch.int64)
    assert mean_std(*white) == ((255.0,) * 3, (0.0,) * 3)


# ---------------------------------------------------------------- classes and val_size


def test_class_subset_reindexes_labels_in_the_given_order():
    full = load_synthetic()
    sub = load_synthetic(classes=["cat", "airplane"], val_size=100)
    assert sub.classes == ["cat", "airplane"]
    assert set(sub.test.labels.tolist()) == {0, 1}
    assert rows(sub.test.images[sub.test.labels == 0]) == rows(full.test.images[full.test.labels == 3])
    assert rows(sub.test.images[sub.test.labels == 1]) == rows(full.test.images[full.test.labels == 0])


def test_class_subset_accepts_an_omegaconf_list():
    from omegaconf import OmegaConf

    sub = load_synthetic(classes=OmegaConf.create({"c": ["cat", "dog"]}).c, val_size=100)
    assert sub.classes == ["cat", "dog"]


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (["cat", "unicorn"], r"unknown class \['unicorn'\]; valid classes: \['airplane', 'automobile'"),
        ("cat", "must be a list of class names"),
        (["cat", "cat"], "lists a class twice"),
        (["cat"], "at least 2 classes"),
    ],
)
def test_bad_class_subsets_are_refused(classes, match):
    with pytest.raises(DataError, match=match):
        load_synthetic(classes=classes)


def test_val_size_zero_validates_on_test():
    bundle = load_synthetic(val_size=0)
    assert bundle.val_is_test and bundle.val is bundle.test and len(bundle.train) == 2000


@pytest.mark.parametrize(("val_size", "match"), [(2000, "must be smaller than the 2000 training images"), (-1, ">= 0"), (0.5, "whole number")])
def test_bad_val_sizes_are_refused(val_size, match):
    with pytest.raises(DataError, match=match):
        load_synthetic(val_size=val_size)


def test_val_size_may_not_empty_a_class():
    with pytest.raises(DataError, match="without training images"):
        stratified_split(torch.tensor([0] * 9 + [1]), 9, 2, seed=0)


def test_stratified_split_follows_class_shares():
    labels = torch.tensor([0] * 70 + [1] * 30)
    fit, val = stratified_split(labels, 10, 2, seed=0)
    assert torch.bincount(labels[val], minlength=2).tolist() == [7, 3]
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(100))


# ---------------------------------------------------------------- folder: directory and archive


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


@pytest.mark.parametrize("top", ["cifar-tiny", None])
def test_archive_gives_the_same_bundle_as_the_directory(tree, cache, tmp_path, top):
    archive = tar_tree(tree, tmp_path / "tiny.tar.gz", top)
    from_dir = load_folder(tree, val_size=2, cache_dir=cache)
    from_tar = load_folder(archive, val_size=2, cache_dir=cache)
    assert_same_bundle(from_dir, from_tar)
    assert from_tar.source.startswith(f"folder:{archive} (")


def test_second_load_is_a_cache_hit(tree, cache, tmp_path):
    archive = tar_tree(tree, tmp_path / "tiny.tgz")
    for root in (tree, archive):
        first, second = load_folder(root, val_size=2, cache_dir=cache), load_folder(root, val_size=2, cache_dir=cache)
        assert "cached" in first.source and second.source.endswith("(cache hit)")
        assert_same_bundle(first, second)
    assert len(list(cache.glob("*.pt"))) == 2 and len(list(cache.glob("*.pt.sha256"))) == 2


def test_changed_directory_misses_the_cache_and_replaces_it(tree, cache):
    load_folder(tree, val_size=2, cache_dir=cache)
    save(tree / "train/cat/new.png", pixels(99))
    bundle = load_folder(tree, val_size=2, cache_dir=cache)
    assert "decoded" in bundle.source and len(bundle.train) + len(bundle.val) == 13
    assert len(list(cache.glob("*.pt"))) == 1  # the stale cache of the same source is gone


def test_corrupt_cache_is_named_discarded_and_rebuilt(tree, cache, caplog):
    first = load_folder(tree, val_size=2, cache_dir=cache)
    (cache_file,) = cache.glob("*.pt")
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache_file.write_bytes(data)
    rebuilt = load_folder(tree, val_size=2, cache_dir=cache)
    assert "cache rebuilt (checksum mismatch)" in rebuilt.source
    assert cache_file.name in caplog.text and "checksum mismatch" in caplog.text
    assert_same_bundle(first, rebuilt)
    assert load_folder(tree, val_size=2, cache_dir=cache).source.endswith("(cache hit)")


def test_missing_checksum_file_rebuilds(tree, cache):
    load_folder(tree, val_size=2, cache_dir=cache)
    next(cache.glob("*.sha256")).unlink()
    assert "cache rebuilt (no checksum)" in load_folder(tree, val_size=2, cache_dir=cache).source


def _load_in_child(tree: str, cache: str, queue) -> None:
    torch.set_num_threads(1)
    bundle = load_folder(tree, val_size=2, cache_dir=cache)
    queue.put(hashlib.sha256(bundle.train.images.numpy().tobytes()).hexdigest())


def test_two_processes_preparing_one_cache_agree(tree, cache):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_load_in_child, args=(str(tree), str(cache), queue)) for _ in range(2)]
    for child in children:
        child.start()
    digests = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert digests[0] == digests[1]
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".pt", ".sha256"]  # no temporary leftovers
    assert load_folder(tree, val_size=2, cache_dir=cache).source.endswith("(cache hit)")


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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io, called directly here
def test_pil_decoder_agrees_with_the_default(tree):
    array = pixels(5)
    data = save(tree / "x.png", array)
    assert np.array_equal(decode_module.decode_pil(data), array.transpose(2, 0, 1))
    assert np.array_equal(decode_module._backend()(data), array.transpose(2, 0, 1))
    with pytest.raises(OSError):
        decode_module.decode_pil(data[:100])


# ---------------------------------------------------------------- torchvision CIFAR10


def test_cifar10_offline_without_a_copy_fails_within_seconds(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    # An unresolvable host: the same path an offline machine takes, and never a real download.
    monkeypatch.setattr(CIFAR10, "url", "https://cifar-sweep.invalid/cifar-10-python.tar.gz")
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=rf"CIFAR-10 not found in {tmp_path}.*data\.root.*data=folder"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 10
    with pytest.raises(DataNotFoundError, match="data.download is false"):
        load_cifar10(tmp_path, download=False, cache_dir=tmp_path / "cache")


def test_cifar10_local_copy_is_converted_and_cached(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # fake files, no md5
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    first = load_cifar10(tmp_path, val_size=10, cache_dir=tmp_path / "cache")
    assert (len(first.train), len(first.val), len(first.test), first.classes) == (90, 10, 20, names)
    expected = {bytes(row.tobytes()) for row in batches["test_batch"]["data"]}  # CHW-flat rows
    assert rows(first.test.images) == expected
    second = load_cifar10(tmp_path, val_size=10, cache_dir=tmp_path / "cache")
    assert second.source.endswith("(cache hit)")
    assert_same_bundle(first, second)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("option", sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml")))
def test_config_keys_match_the_loader(option, tmp_path):
    import dataclasses

    from hydra import compose, initialize_config_dir
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    import cifar_sweep.config.schema  # noqa: F401  the data options' typed keys
    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.options import loader_kwargs

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(overrides=[f"+data={option}", f"+paths.root={REPO}", f"+paths.repo={REPO}",
                                 f"+paths.cache={tmp_path}"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert set(data.pop("augment")) == {f.name for f in dataclasses.fields(Augment)}
    loader = get_method(data.pop("_target_"))
    inspect.signature(loader).bind(**data, seed=0)  # raises on a key the loader does not take
    if option == "synthetic":
        from hydra.utils import instantiate

        bundle = instantiate(loader_kwargs(cfg.data), seed=1)
        assert isinstance(bundle, DataBundle) and len(bundle.train) == 1500


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
