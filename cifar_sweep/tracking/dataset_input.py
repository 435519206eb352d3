"""The data a run trained on, as an MLflow dataset input: the UI's Datasets column reads it."""

from __future__ import annotations

from cifar_sweep.tracking.run import dataset_digest


def log_dataset_input(tracker, name: str, bundle, root) -> None:
    """The data as an MLflow dataset input (name, digest of the images, split sizes) and as tags."""
    split = lambda s: (s.images.numpy(), s.labels.numpy())  # noqa: E731
    pool = [split(bundle.train)] + ([] if bundle.val_is_test else [split(bundle.val)])
    digest = dataset_digest(pool, [split(bundle.test)])
    profile = {"train": len(bundle.train), "val": 0 if bundle.val_is_test else len(bundle.val),
               "test": len(bundle.test), "classes": len(bundle.classes), "class_names": list(bundle.classes)}
    tracker.log_dataset(name, digest, str(root) if root else None, profile)
    tracker.set_tags({"dataset_digest": digest})  # the `dataset` tag (its name) is set when the run starts
