"""`data=folder`: an ImageFolder tree, as a directory or a tar archive, decoded once and cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .archive import iter_members, verify_sha256
from .bundle import DataBundle, DataError, LabeledImages, build_bundle
from .cache import cached, pack, unpack
from .decode import IMAGE_SUFFIXES, ChunkDecoder
from .roots import ARCHIVE_SUFFIXES, resolve_root
from .tree import LAYOUT, SPLITS, Tree, find_prefix, index_tree, scan_directory

log = logging.getLogger(__name__)


def load_folder(
    root: str | os.PathLike,
    val_size: int = 5000,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
) -> DataBundle:
    """Load `train/<class>/*` and `test/<class>/*` from a directory or a .tar/.tar.gz/.tgz archive.

    The first load decodes every image (.jpg/.jpeg/.png, 32x32; grayscale and RGBA are converted to
    RGB) into a cache file under cache_dir (the config's paths.cache: runs/cache); later loads read that file,
    verified by its checksum. An archive is checked against data.sha256, or else a `.sha256` file
    beside it, on every load. Classes are the sorted folder names.
    """
    path = resolve_root(root)
    if path.is_dir():
        if sha256:
            raise DataError(f"data.sha256 checks an archive, but {path} is a directory; set data.sha256=null")
        payload, status = _load_directory(path, cache_dir)
    else:
        payload, status = _load_archive(path, cache_dir, sha256)
    train, test, names = unpack(payload)
    return build_bundle(train, test, names, val_size=val_size, subset=classes, seed=seed, source=f"folder:{path} ({status})")


def _load_directory(path: Path, cache_dir: str | os.PathLike) -> tuple[dict, str]:
    entries, stats = scan_directory(path)
    if not entries:
        _suggest_subfolder(path)
    tree = index_tree(entries, str(path), display=lambda key: str(path / key))
    state = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()

    def build() -> dict:
        with ChunkDecoder() as decoder:
            for split in SPLITS:
                for key, _ in tree.images[split]:
                    decoder.add(key, str(path / key), str(path / key))
            return _pack_tree(decoder, tree, key_of=str, origin=str(path), source_sha256="")

    return cached(cache_dir, _stem(path), str(path), state, build)


def _suggest_subfolder(path: Path) -> None:
    inner = [child for child in sorted(path.iterdir()) if (child / "train").is_dir()]
    hint = f"; did you mean data.root={inner[0]}?" if len(inner) == 1 else ""
    raise DataError(f"{path}: no train/ or test/ folder; {LAYOUT}{hint}")


def _load_archive(path: Path, cache_dir: str | os.PathLike, sha256: str | None) -> tuple[dict, str]:
    # Keyed by content: the digest is needed for the check anyway (about 20 ms for CIFAR-10).
    digest = verify_sha256(path, sha256)
    return cached(cache_dir, _stem(path), str(path), {"sha256": digest}, lambda: _decode_archive(path, digest))


def _decode_archive(path: Path, digest: str) -> dict:
    """Read the archive once; images are decoded by workers while later members are still read."""
    entries: dict[str, str] = {}
    names: dict[str, str] = {}
    with ChunkDecoder() as decoder:
        for member in iter_members(path):
            key = member.path
            if not key:  # the archive's own "." entry
                continue
            if key in entries and member.kind == "file":
                raise DataError(f"{path}:{member.name}: stored twice in the archive; repack it")
            entries[key] = "other" if member.kind == "link" else member.kind
            names[key] = member.name
            if member.kind == "file" and _may_be_tree_image(key.split("/")):
                decoder.add(key, f"{path}:{member.name}", member.read())
        prefix = find_prefix(entries, str(path))
        inside = {key[len(prefix) :]: kind for key, kind in entries.items() if key.startswith(prefix) and key + "/" != prefix}
        tree = index_tree(inside, str(path), display=lambda key: f"{path}:{names[prefix + key]}")
        return _pack_tree(decoder, tree, key_of=lambda key: prefix + key, origin=str(path), source_sha256=digest)


def _may_be_tree_image(parts: list[str]) -> bool:
    return len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _pack_tree(decoder: ChunkDecoder, tree: Tree, key_of: Callable[[str], str], **meta: str) -> dict:
    listed = [item for split in SPLITS for item in tree.images[split]]
    log.info("decoding %d images (%s)", len(listed), meta.get("origin"))
    images, sums, sumsq = decoder.collect([key_of(key) for key, _ in listed])
    labels = torch.tensor([label for _, label in listed], dtype=torch.int64)
    n = len(tree.images["train"])
    train = LabeledImages(images[:n], labels[:n], sums[:n], sumsq[:n])
    test = LabeledImages(images[n:], labels[n:], sums[n:], sumsq[n:])
    return pack(train, test, tree.classes, **meta)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return "folder-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "root")
