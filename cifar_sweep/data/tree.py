"""The ImageFolder layout rules, shared by directories and archives.

A tree is `train/<class>/<image>` and `test/<class>/<image>`; classes are the sorted folder names
(so CIFAR-10's folders give its usual label order). Anything else inside train/ or test/ is an error
that names the offending path; entries outside train/ and test/ (a README, a LICENSE) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .bundle import DataError
from .decode import IMAGE_SUFFIXES

SPLITS = ("train", "test")
LAYOUT = "expected train/<class>/<image> and test/<class>/<image> (.jpg, .jpeg or .png)"


@dataclass(frozen=True)
class Tree:
    classes: list[str]
    images: dict[str, list[tuple[str, int]]]  # split -> [(key, label)], by class then file name


def find_prefix(paths: Iterable[str], where: str) -> str:
    """'' if train/ and test/ sit at the top, 'name/' if they sit under one top-level folder."""
    tops = set()
    for path in paths:
        parts = path.split("/")
        if parts[0] in SPLITS:
            return ""
        if len(parts) > 1 and parts[1] in SPLITS:
            tops.add(parts[0])
    if len(tops) > 1:
        raise DataError(f"{where}: holds several trees ({sorted(tops)}); point data.root at one of them")
    if not tops:
        raise DataError(f"{where}: no train/ or test/ folder at the top or under one top-level folder; {LAYOUT}")
    return tops.pop() + "/"


def index_tree(entries: dict[str, str], where: str, display: Callable[[str], str]) -> Tree:
    """Validate the layout of `entries` (relative path -> 'file' | 'dir' | 'other') and list images.

    Paths are visited in sorted order so that, of several problems, the same one is reported first.
    """
    folders: dict[str, set[str]] = {split: set() for split in SPLITS}
    files: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    seen = set()
    for key in sorted(entries):
        parts = key.split("/")
        if parts[0] not in SPLITS:
            continue
        split, kind = parts[0], entries[key]
        seen.add(split)
        _check_entry(parts, kind, display(key))
        if len(parts) >= 2:
            folders[split].add(parts[1])
        if len(parts) == 3:
            files[split].setdefault(parts[1], []).append(key)
    _check_splits(folders, files, seen, where)
    classes = sorted(folders["train"])
    images = {
        split: [(key, label) for label, name in enumerate(classes) for key in files[split][name]]
        for split in SPLITS
    }
    return Tree(classes, images)


def _check_entry(parts: list[str], kind: str, name: str) -> None:
    depth = len(parts)
    if kind == "other":
        raise DataError(f"{name}: not a regular file or folder (a link or special file); {LAYOUT}")
    if depth == 1 and kind != "dir":
        raise DataError(f"{name}: must be a folder; {LAYOUT}")
    if depth == 2 and kind != "dir":
        raise DataError(f"{name}: stray file directly under {parts[0]}/; move it into a class folder or delete it")
    if (depth == 3 and kind == "dir") or depth > 3:
        raise DataError(f"{name}: nested folders are not supported; {LAYOUT}")
    if depth == 3 and not parts[2].lower().endswith(IMAGE_SUFFIXES):
        raise DataError(f"{name}: stray non-image file (not .jpg, .jpeg or .png); delete it or move it out of the tree")


def _check_splits(folders: dict[str, set[str]], files: dict[str, dict], seen: set[str], where: str) -> None:
    for split in SPLITS:
        if split not in seen:
            raise DataError(f"{where}: no {split}/ folder; {LAYOUT}")
        if not folders[split]:
            raise DataError(f"{where}: {split}/ holds no class folders; {LAYOUT}")
        empty = sorted(folders[split] - set(files[split]))
        if empty:
            raise DataError(f"{where}: empty class folder(s) {[f'{split}/{c}' for c in empty]}; add images or remove them")
    only_train, only_test = folders["train"] - folders["test"], folders["test"] - folders["train"]
    if only_train or only_test:
        raise DataError(
            f"{where}: train/ and test/ must hold the same classes; only in train/: {sorted(only_train)}, "
            f"only in test/: {sorted(only_test)}"
        )


def scan_directory(root: Path) -> tuple[dict[str, str], list[tuple[str, int, int]]]:
    """Entries of root/train and root/test for `index_tree`, plus (key, size, mtime_ns) per file,
    which identify the tree's state for the cache."""
    entries: dict[str, str] = {}
    stats: list[tuple[str, int, int]] = []
    for split in SPLITS:
        if (root / split).is_dir():
            entries[split] = "dir"
            _scan(root / split, split, 2, entries, stats)
    return entries, stats


def _scan(folder: Path, prefix: str, depth: int, entries: dict[str, str], stats: list) -> None:
    with os.scandir(folder) as it:
        for entry in it:
            key = f"{prefix}/{entry.name}"
            if entry.is_dir():
                entries[key] = "dir"
                if depth < 3:  # deeper folders are reported by index_tree, not walked
                    _scan(Path(entry.path), key, depth + 1, entries, stats)
            elif entry.is_file():
                entries[key] = "file"
                st = entry.stat()
                stats.append((key, st.st_size, st.st_mtime_ns))
            else:
                entries[key] = "other"
