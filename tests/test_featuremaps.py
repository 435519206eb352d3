"""`cifar-featuremaps`: rebuild a run's network from its artifacts and draw every conv layer's output.

Nothing is trained: each run holds the state dict of a freshly built model, as the training loop
would log it (`checkpoint/last.pt`, key "model"), and the resolved config composed with
data=synthetic. A 900x900 PNG stands in for the Keras write-up's photo.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cifar_sweep.commands import featuremaps, shell
from cifar_sweep.data.options import loader_kwargs
from cifar_sweep.analysis import figures
from cifar_sweep.tracking.run import RunTracker
from cifar_sweep.tracking.store import StoreError, open_store
from helpers import CONF, run_cli

MODELS = ("cnn_simple", "resnet_seed")
LAYER_PNG = re.compile(r"^\d\d_trunk[\w.]*\.png$")
PIXELS = 250_000  # a quarter of the default budget: the same code, a quarter of the PNG encoding


def compose_run_config(model: str):
    from cifar_sweep.config import paths, schema  # noqa: F401  schema registers the typed config blocks

    paths.register_resolvers()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["data=synthetic", f"model={model}"])


def log_run(uri: str, model_name: str, with_stats: bool, tmp: Path) -> tuple[str, nn.Module]:
    """A finished run holding config.yaml and checkpoint/last.pt of a fresh model, as train.py logs them."""
    cfg = compose_run_config(model_name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    bundle = instantiate(loader_kwargs(resolved["data"]), seed=cfg.seed)
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    tracker = RunTracker.start(uri, "featuremaps", model_name, {"model": model_name})
    tracker.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    if with_stats:  # what train.py logs once the lead adds them; spares loading the data
        tracker.log_params({"data.mean": list(bundle.mean), "data.std": list(bundle.std)})
    folder = tmp / model_name
    folder.mkdir()
    torch.save({"model": model.state_dict()}, folder / "last.pt")
    tracker.log_file(folder / "last.pt", "checkpoint")
    tracker.finish()
    return tracker.run_id, model


def conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.trunk.modules())


def logged(client: MlflowClient, run_id: str, folder: str) -> list[str]:
    return sorted(Path(a.path).name for a in client.list_artifacts(run_id, folder))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {
        name: log_run(uri, name, with_stats=(name == "cnn_simple"), tmp=root)
        for name in MODELS
    }
    return uri, runs


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 900x900 RGB picture: a gradient with a disc and bars, so every layer has edges to respond to."""
    y, x = np.mgrid[0:900, 0:900]
    img = np.stack([x * 255 // 899, y * 255 // 899, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    img[(x - 450) ** 2 + (y - 400) ** 2 < 200 ** 2] = (240, 240, 30)
    img[((x // 60) % 2 == 0) & (y > 700)] = (20, 20, 20)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize("model_name", MODELS)
def test_one_figure_per_conv_layer_for_a_900px_photo(store, photo, tmp_path, model_name):
    uri, runs = store
    run_id, model = runs[model_name]
    out = tmp_path / "out"
    argv = ["--run", run_id, "--image", str(photo), "--tracking-uri", uri, "--out", str(out), "--max-pixels", str(PIXELS)]
    assert featuremaps.main(argv) == 0
    written = sorted(p.name for p in out.iterdir() if LAYER_PNG.match(p.name))
    assert len(written) == conv_count(model) > 0
    assert (out / "input.png").exists()
    for name in written:
        with Image.open(out / name) as img:
            assert img.format == "PNG"
            assert 300 <= img.size[0] and img.size[0] * img.size[1] <= PIXELS
    client = MlflowClient(uri)
    assert logged(client, run_id, "featuremaps/photo") == sorted([*written, "input.png"])


@pytest.mark.cli
def test_command_runs_as_a_module(store, photo, tmp_path):
    uri, runs = store
    run_id, model = runs["cnn_simple"]
    out = tmp_path / "cli_out"
    res = run_cli(["--run", run_id, "--image", str(photo), "--tracking-uri", uri, "--out", str(out), "--no-log",
                   "--max-pixels", str(PIXELS)], tmp_path, timeout=120, module="cifar_sweep.commands.featuremaps")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"wrote {conv_count(model)} conv-layer figures" in res.stdout
    assert len([p for p in out.iterdir() if LAYER_PNG.match(p.name)]) == conv_count(model)


def test_default_image_is_a_test_image_with_its_prediction(store, tmp_path):
    uri, runs = store
    run_id, model = runs["cnn_simple"]
    out = tmp_path / "default"
    featuremaps.main(["--run", run_id, "--tracking-uri", uri, "--out", str(out), "--test-index", "3",
                      "--max-pixels", str(PIXELS)])
    assert len([p for p in out.iterdir() if LAYER_PNG.match(p.name)]) == conv_count(model)
    with Image.open(out / "input.png") as img:
        assert img.size == (32, 32)
    # logged under the test index and its true class, beside the photo's folder
    folders = [a.path for a in MlflowClient(uri).list_artifacts(run_id, "featuremaps")]
    assert any(re.fullmatch(r"featuremaps/test_00003_[a-z]+", f) for f in folders), folders


def test_activations_are_downsampled_in_the_hook(store, photo):
    """A 900x900 map per channel would cost GBs over a deep net: the hook keeps only what is drawn."""
    uri, runs = store
    _, model = runs["resnet_seed"]
    data = featuremaps.RunData([120.0] * 3, [60.0] * 3, None, None)
    image = featuremaps.load_image(photo, max_side=300)  # scaled down on load, as --max-side does
    assert image.shape == (1, 3, 300, 300)
    layers, prediction = featuremaps.conv_activations(model.eval(), image, data, max_channels=8, max_pixels=100_000)
    assert prediction is None  # not 32x32: the dense head never ran
    assert len(layers) == conv_count(model)
    first = layers[0]
    assert first.size == (300, 300) and first.channels == 16 and first.maps.shape[0] == 8
    assert max(first.maps.shape[-2:]) <= featuremaps.tile_limit(8, 100_000) < 300


def test_a_32px_image_also_runs_the_head(store):
    _, runs = store
    _, model = runs["cnn_simple"]
    classes = [chr(ord("a") + k) for k in range(model.head.out_features)]
    data = featuremaps.RunData([120.0] * 3, [60.0] * 3, classes, None)
    image = torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)
    _, prediction = featuremaps.conv_activations(model.eval(), image, data, 64, figures.DEFAULT_MAX_PIXELS)
    assert prediction is not None and re.fullmatch(r"[a-z] \(\d+%\)", prediction)


def test_unknown_run_and_missing_checkpoint_are_named(store, tmp_path, capsys):
    uri, _ = store
    assert featuremaps.main(["--run", "deadbeef", "--tracking-uri", uri]) == 1
    assert re.search(r"^cifar-featuremaps: no run 'deadbeef'", capsys.readouterr().err)
    tracker = RunTracker.start(uri, "featuremaps", "no checkpoint", {})
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.to_container(compose_run_config("cnn_simple"), resolve=True)),
                     "config.yaml")
    assert featuremaps.main(["--run", tracker.run_id, "--tracking-uri", uri, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"^cifar-featuremaps: .*no artifact checkpoint/last.pt.*tracking.checkpoint=false", err), err
    assert len(err.strip().splitlines()) == 1


def test_a_run_id_prefix_is_enough_and_an_unknown_one_is_named(store, photo, tmp_path):
    uri, runs = store
    run_id, model = runs["cnn_simple"]
    out = tmp_path / "by_prefix"
    argv = ["--run", run_id[:8], "--image", str(photo), "--tracking-uri", uri, "--out", str(out), "--no-log",
            "--max-pixels", str(PIXELS)]
    assert featuremaps.main(argv) == 0  # the 8 characters summaries print
    assert len([p for p in out.iterdir() if LAYER_PNG.match(p.name)]) == conv_count(model)
    client = open_store(uri)
    assert shell.resolve_run(client, run_id[:8], uri).info.run_id == run_id
    with pytest.raises(StoreError, match="no run 'zz' in"):
        shell.resolve_run(client, "zz", uri)
    # "" would match every run: refused, not guessed.
    with pytest.raises(StoreError, match="empty run id"):
        shell.resolve_run(client, " ", uri)
