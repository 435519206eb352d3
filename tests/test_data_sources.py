"""The other data sources: torchvision's CIFAR-10 (offline, a local copy), and every conf/data option
against the loader it names."""

from __future__ import annotations

import inspect
import pickle
import time

import numpy as np
import pytest

from cifar_sweep.data import DataBundle, DataNotFoundError, load_cifar10
from data_trees import assert_same_bundle, rows
from helpers import REPO


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
