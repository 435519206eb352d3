"""Generated, deterministic, learnable CIFAR-shaped data for tests and demos (no files)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .bundle import DataBundle, DataError, LabeledImages, build_bundle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Fixed, seed-independent class definitions: different seeds draw different samples of the *same*
# task, so accuracies across seeds are comparable.
_PROTOTYPE_SEED = 20261122
_STREAM_TRAIN, _STREAM_TEST = 10, 11

# Signal and noise levels (0..255 scale), tuned so that a linear model, which can only use the
# class colour, scores well above chance but far from 100%, while a small CNN can also read the
# stripe orientation and frequency (invisible to a linear model because the phase is random).
_COLOUR_JITTER = 24.0
_STRIPE_AMPLITUDE = 45.0
_NOISE_HALF_WIDTH = 48  # uniform pixel noise in [-48, 48], std about 28


def load_synthetic(
    val_size: int = 500,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
) -> DataBundle:
    """Class-coloured, striped 32x32 images plus noise; same seed -> identical tensors.

    Class names are the CIFAR-10 names for up to 10 classes (so presets such as data.classes=[cat,dog]
    work unchanged), "class0".. beyond that.
    """
    _check_sizes(n_train, n_test, num_classes)
    names = list(CIFAR10_CLASSES[:num_classes]) if num_classes <= 10 else [f"class{i}" for i in range(num_classes)]
    protos = _prototypes(num_classes)
    train = _sample(n_train, protos, np.random.default_rng([int(seed), _STREAM_TRAIN]))
    test = _sample(n_test, protos, np.random.default_rng([int(seed), _STREAM_TEST]))
    source = f"synthetic:{num_classes} classes, {n_train} train + {n_test} test, seed {seed}"
    return build_bundle(train, test, names, val_size=val_size, subset=classes, seed=seed, source=source)


def _check_sizes(n_train: int, n_test: int, num_classes: int) -> None:
    if not 2 <= num_classes <= 1000:
        raise DataError(f"data.num_classes must be between 2 and 1000, got {num_classes}")
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if n < num_classes:
            raise DataError(f"data.{key}={n} must be at least data.num_classes={num_classes} (one image per class)")


def _prototypes(num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_PROTOTYPE_SEED)
    angle = np.pi * np.arange(num_classes) / num_classes + rng.uniform(0, 0.1, num_classes)
    return {
        "colour": rng.uniform(60.0, 195.0, size=(num_classes, 3)),
        "angle": angle,
        "cycles": np.where(np.arange(num_classes) % 2 == 0, 2.0, 4.0),  # stripes across the image
    }


def _sample(n: int, protos: dict[str, np.ndarray], rng: np.random.Generator) -> LabeledImages:
    num_classes = len(protos["angle"])
    labels = np.arange(n) % num_classes  # balanced; build_bundle shuffles
    yy, xx = (np.mgrid[0:32, 0:32] / 32.0).astype(np.float32)
    angle, cycles = protos["angle"][labels, None, None], protos["cycles"][labels, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    wave = (2 * np.pi * cycles * np.cos(angle)).astype(np.float32) * xx
    wave += (2 * np.pi * cycles * np.sin(angle)).astype(np.float32) * yy
    wave += phase.astype(np.float32)
    stripes = np.sin(wave, out=wave) * np.float32(_STRIPE_AMPLITUDE)
    colour = protos["colour"][labels] + rng.normal(0.0, _COLOUR_JITTER, size=(n, 3))
    signal = np.rint(colour.astype(np.float32)[:, :, None, None] + stripes[:, None]).astype(np.int16)
    # Uniform integer noise: as learnable-but-noisy as Gaussian here, and ten times cheaper to draw.
    signal += rng.integers(-_NOISE_HALF_WIDTH, _NOISE_HALF_WIDTH + 1, size=(n, 3, 32, 32), dtype=np.int16)
    images = torch.from_numpy(np.clip(signal, 0, 255, out=signal).astype(np.uint8))
    return LabeledImages.from_images(images, torch.from_numpy(labels.astype(np.int64)))
