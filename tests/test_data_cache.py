"""The decoded-tensor cache of the folder loader: hits, misses, corruption, two processes at once."""

from __future__ import annotations

import hashlib
import multiprocessing

import torch

from cifar_sweep.data import load_folder
from data_trees import assert_same_bundle, pixels, save, tar_tree


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
