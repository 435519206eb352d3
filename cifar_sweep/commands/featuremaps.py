"""`cifar-featuremaps --run RUN [--image PATH]`: what each conv layer of a trained run responds to.

Rebuilds the run's network from its logged `config.yaml` and `checkpoint/last.pt`, standardises
the image with the run's training statistics, and records every `nn.Conv2d` of the convolutional
trunk with forward hooks. The trunk takes images of any size (the Keras RMSprop write-up showed a
900x900 photo); the dense layers only fit 32x32 inputs, so they run (and the prediction is shown)
only then. One figure per conv layer goes to `--out` and to the run under `featuremaps/<image>/`.
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from cifar_sweep.analysis import figures
from cifar_sweep.commands import shell
from cifar_sweep.config import paths
from cifar_sweep.data.batches import Standardize
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.tracking import lookup
from cifar_sweep.tracking.run import RunTracker
from cifar_sweep.tracking.store import open_store

log = logging.getLogger("cifar_sweep.commands.featuremaps")


class FeatureMapsError(CifarSweepError):
    """A run, image or checkpoint this command cannot use; the message says which and why."""

PROG = "cifar-featuremaps"

CHECKPOINT = "checkpoint/last.pt"
NATIVE_SIZE = 32  # what the dense layers were built for
# Per figure. Below the training diagnostics' cap: a deep net gives dozens of these per image, and
# noisy activation maps compress poorly (about 1 byte per pixel as PNG).
MAX_PIXELS = 1_000_000


@dataclass
class LayerMaps:
    name: str          # module path, e.g. "trunk.1.conv"
    module: str        # its repr, e.g. "Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1))"
    channels: int      # channels the layer produced (maps may hold fewer)
    size: tuple[int, int]
    maps: torch.Tensor  # (shown channels, h, w), possibly downsampled to fit the figure


@dataclass
class RunData:
    mean: list[float]
    std: list[float]
    classes: list[str] | None        # None when only the params were read
    test_images: torch.Tensor | None  # uint8 (N, 3, 32, 32)
    test_labels: torch.Tensor | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True,
                   help="MLflow run id of a finished training run, or an unambiguous prefix (the 8 characters summaries print)")
    p.add_argument("--image", type=Path, help="image file of any size (default: a test image of the run's data)")
    p.add_argument("--test-index", type=int, default=0, help="test image to use when --image is not given (default 0)")
    shell.add_store_options(p, experiment=False)
    p.add_argument("--out", type=Path, help="folder for the PNGs (default: runs/featuremaps/<run>/<image>)")
    p.add_argument("--max-channels", type=int, default=64, help="channels shown per layer (default 64)")
    p.add_argument("--max-side", type=int, default=2048, help="larger images are scaled down to this side first")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"pixel budget of each figure (default {MAX_PIXELS:,}: about 1 MB of PNG per layer)")
    p.add_argument("--no-log", action="store_true", help="write the PNGs only, log nothing to the run")
    return p.parse_args(argv)


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    client = open_store(args.tracking_uri)
    uri = client.tracking_uri
    run = shell.resolve_run(client, args.run, uri)
    run_id = run.info.run_id  # the whole id from here on, whatever prefix was given
    cfg = load_run_config(client, run_id)
    state = load_checkpoint(client, run_id)
    data = load_run_data(cfg, run.data.params, need_images=args.image is None,
                         class_names=logged_class_names(client, run_id))
    model = build_model(cfg, state, data)
    image, stem = _pick_image(args, data)
    layers, prediction = conv_activations(model, image, data, args.max_channels, args.max_pixels)
    out = args.out or paths.runs_dir() / "featuremaps" / run_id / stem
    written = write_figures(layers, image, out, stem, prediction, args.max_pixels)
    print(f"wrote {len(written) - 1} conv-layer figures (+ input.png) to {out}")
    if not args.no_log:
        tracker = RunTracker(client, run_id)
        for path in written:
            tracker.log_file(path, f"featuremaps/{stem}")
        print(f"logged them to run {run_id} under featuremaps/{stem}/")
    return 0


# ---------------------------------------------------------------- the run's pieces


def load_run_config(client, run_id: str) -> DictConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = _download(client, run_id, "config.yaml", tmp)
        return OmegaConf.load(path)


def load_checkpoint(client, run_id: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = _download(client, run_id, CHECKPOINT, tmp)
        # weights_only: a checkpoint is data; never let unpickling one run code.
        return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _download(client, run_id: str, artifact: str, folder: str) -> str:
    hint = " (was it trained with tracking.checkpoint=false?)" if artifact == CHECKPOINT else ""
    return lookup.download(client, run_id, artifact, folder, hint)


def load_run_data(cfg: DictConfig, params: dict[str, str], need_images: bool,
                  class_names: list[str] | None = None) -> RunData:
    """The run's standardisation statistics, from its params when logged, else from its data config.

    Reading `data.mean`/`data.std` params spares loading the data set (and works where it is
    absent); the data set is needed anyway when the default test image is wanted.
    """
    if not need_images and "data.mean" in params and "data.std" in params:
        return RunData(_floats(params["data.mean"]), _floats(params["data.std"]), class_names, None)
    from cifar_sweep.assembly import load_data  # only this path needs the data loaders

    try:
        bundle = load_data(cfg.data, cfg.seed)
    except Exception as err:
        raise FeatureMapsError(f"could not load the run's data ({cfg.data.get('_target_')}): {err}. "
                               "Pass --image, or make the run's data.root reachable") from err
    return RunData(list(bundle.mean), list(bundle.std), list(bundle.classes), bundle.test.images, bundle.test.labels)


def logged_class_names(client, run_id: str) -> list[str] | None:
    """Class names from the run's per_class.csv (diagnostics), so a prediction can be named without the data."""
    text = lookup.read_text_or_none(client, run_id, "per_class.csv")
    if text is None:
        return None
    return [line.split(",")[0] for line in text.splitlines()[1:] if line]


def _floats(text: str) -> list[float]:
    return [float(v) for v in ast.literal_eval(text)]


def build_model(cfg: DictConfig, state: dict[str, torch.Tensor], data: RunData) -> nn.Module:
    from cifar_sweep.assembly import rebuild_logged_run

    num_classes = len(data.classes) if data.classes else _classes_in_checkpoint(state)
    return rebuild_logged_run(cfg, state, with_data=False, num_classes=num_classes).model


def _classes_in_checkpoint(state: dict[str, torch.Tensor]) -> int:
    # Every zoo model ends in a linear `head`: its weight is (num_classes, features).
    weight = state.get("head.weight")
    if weight is None:
        raise FeatureMapsError("cannot tell the number of classes (no head.weight in the checkpoint)")
    return int(weight.shape[0])


# ---------------------------------------------------------------- image and activations


def _pick_image(args: argparse.Namespace, data: RunData) -> tuple[torch.Tensor, str]:
    if args.image is not None:
        return load_image(args.image, args.max_side), _safe(args.image.stem)
    n = len(data.test_images)
    if not 0 <= args.test_index < n:
        raise FeatureMapsError(f"--test-index {args.test_index} is outside the {n} test images")
    true = data.classes[int(data.test_labels[args.test_index])]  # in the name: the figures say what it is
    return data.test_images[args.test_index:args.test_index + 1].cpu(), _safe(f"test_{args.test_index:05d}_{true}")


def load_image(path: Path, max_side: int) -> torch.Tensor:
    """uint8 (1, 3, H, W); images larger than max_side are scaled down (a 12 MP photo would need GBs)."""
    try:
        img = Image.open(path).convert("RGB")
    except OSError as err:
        raise FeatureMapsError(f"cannot read image {path}: {err}") from None
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        log.info("scaling %s from %dx%d by %.2f", path, img.width, img.height, scale)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).unsqueeze(0)


def tile_limit(channels: int, max_pixels: int) -> int:
    """Largest tile side that keeps a grid of `channels` tiles within the figure's pixel budget."""
    return max(8, int(0.9 * math.sqrt(max_pixels / max(channels, 1))))


@torch.no_grad()
def conv_activations(
    model: nn.Module, image_u8: torch.Tensor, data: RunData, max_channels: int, max_pixels: int,
) -> tuple[list[LayerMaps], str | None]:
    """Every conv layer's output for one image (first `max_channels` channels, downsampled to fit).

    Returns the layers in execution order and, for a 32x32 image, the predicted class.
    """
    layers: list[LayerMaps] = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            c = output.shape[1]
            maps = output[0, :max_channels].float()
            side = tile_limit(len(maps), max_pixels)
            h, w = maps.shape[-2:]
            if max(h, w) > side:  # shrink here, in the hook: full-size maps of a big photo cost GBs
                scale = side / max(h, w)
                maps = F.interpolate(maps[None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                     mode="area")[0]
            layers.append(LayerMaps(name, repr(module), c, (h, w), maps.cpu()))
        return hook

    convs = [(f"trunk.{n}" if n else "trunk", m) for n, m in model.trunk.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise FeatureMapsError(f"{type(model).__name__} has no conv layers to show")
    handles = [m.register_forward_hook(hook_for(name)) for name, m in convs]
    try:
        x = Standardize(data.mean, data.std, torch.device("cpu"), channels_last=False)(image_u8)
        prediction = None
        if tuple(x.shape[-2:]) == (NATIVE_SIZE, NATIVE_SIZE):
            probs = model(x).softmax(1)[0]
            k = int(probs.argmax())
            name = data.classes[k] if data.classes else f"class {k}"
            prediction = f"{name} ({probs[k]:.0%})"
        else:
            model.trunk(x)  # dense layers are built for 32x32 inputs only
    finally:
        for h in handles:
            h.remove()
    return layers, prediction


def write_figures(
    layers: list[LayerMaps], image_u8: torch.Tensor, out: Path, stem: str, prediction: str | None, max_pixels: int,
) -> list[Path]:
    """input.png plus one NN_<layer>.png per conv layer; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    h, w = image_u8.shape[-2:]
    source = out / "input.png"
    Image.fromarray(image_u8[0].permute(1, 2, 0).numpy()).save(source)
    written = [source]
    seen = f"; predicted {prediction}" if prediction else ""
    for i, layer in enumerate(layers):
        title = f"{stem} ({w}x{h}{seen}) - layer {i + 1}/{len(layers)} {layer.name}: {layer.module}"
        fig = figures.featuremap_figure(layer.maps, title, layer.channels, max_pixels, size=layer.size)
        path = out / f"{i:02d}_{_safe(layer.name)}.png"
        fig.savefig(path)
        fig.clear()
        written.append(path)
    return written


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "image"


if __name__ == "__main__":
    sys.exit(main())
