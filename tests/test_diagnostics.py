"""End-of-training diagnostics: every artifact exists, and each agrees with the predictions it came from.

One small cnn_simple, trained for a second on coloured synthetic images so its confusion matrix is
neither all-correct nor degenerate, is evaluated with the real `engine.evaluate` and diagnosed into
a real SQLite MLflow store; the tests then read the artifacts back as a user would.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score

from cifar_sweep.analysis import figures
from cifar_sweep.data.augment import Augment
from cifar_sweep.data.batches import Standardize, TrainBatches
from cifar_sweep.training.device import setup_hardware
from cifar_sweep.config.schema import Diagnostics
from cifar_sweep.analysis.diagnostics import (
    embedding_size,
    log_test_diagnostics,
    metric_key,
    pca_2d,
)
from cifar_sweep.training.engine import EvalResult, evaluate, train_one_epoch
from cifar_sweep.tracking.run import RunTracker
from helpers import CONF

CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
N_TEST = 200
OPTIONS = Diagnostics(embedding_points=150, tsne_points=60, tsne=True, figures=True)
ARTIFACT_BUDGET = 20e6  # the "about 20 MB per run"


# ---------------------------------------------------------------- fixtures


def coloured_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k tints the image with its own colour: learnable in a few steps, not trivially."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    palette = torch.tensor([[150, 110, 110], [110, 150, 110], [110, 110, 150], [140, 140, 110], [125, 125, 125]])
    noise = torch.randint(-110, 110, (n, 3, 32, 32), generator=g)
    images = (palette[labels].view(n, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def artifact_sizes(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    out = {}
    for item in client.list_artifacts(run_id, path):
        out.update(artifact_sizes(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return out


def read_artifact(client: MlflowClient, run_id: str, path: str, tmp: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp)))


def read_csv(client, run_id, path, tmp) -> list[dict[str, str]]:
    with open(read_artifact(client, run_id, path, tmp), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store per module: creating one runs MLflow's migrations (seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('diag_store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def diagnosed(store):
    """(client, run_id, model, result, returned metrics) of one diagnosed run."""
    torch.manual_seed(0)
    hw = setup_hardware("cpu", "fp32", None)
    model = instantiate(OmegaConf.load(CONF / "model" / "cnn_simple.yaml"), num_classes=len(CLASSES))
    train_x, train_y = coloured_images(320, seed=1)
    test_x, test_y = coloured_images(N_TEST, seed=2)
    standardize = Standardize([128.0] * 3, [64.0] * 3, hw.device, channels_last=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = TrainBatches(train_x, train_y, 64, standardize, Augment(), torch.Generator().manual_seed(0))
    train_one_epoch(model, batches, optimizer, scheduler, hw, epoch=0)
    result = evaluate(model, test_x, test_y, 100, standardize, hw)
    tracker = RunTracker.start(store, "diag", "diag run", {})
    metrics = log_test_diagnostics(tracker, model, result, test_x, CLASSES, standardize, hw, OPTIONS)
    tracker.finish()
    return tracker.client, tracker.run_id, model, result, metrics


# ---------------------------------------------------------------- options


def test_config_block_matches_the_defaults(compose_cfg):
    block = OmegaConf.load(CONF / "train.yaml")
    assert Diagnostics(**block.diagnostics) == Diagnostics()
    assert OmegaConf.to_object(compose_cfg(["data=synthetic"]).diagnostics) == Diagnostics()


def test_unknown_option_lists_the_valid_ones(compose_cfg):
    from cifar_sweep.config.rules import validate

    with pytest.raises(ValueError, match=r"diagnostics\.confusoin is not a config key; did you mean diagnostics\.confusion\?"):
        validate(compose_cfg(["data=synthetic", "+diagnostics.confusoin=true"]))
    with pytest.raises(ValueError, match="embedding_points"):
        validate(compose_cfg(["data=synthetic", "diagnostics.embedding_points=0"]))


def test_embedding_size_respects_the_byte_cap():
    opts = Diagnostics(embedding_points=2000, embedding_max_mb=4.0)
    assert embedding_size(10_000, 128, opts) == 2000           # narrow features: the configured count
    assert embedding_size(10_000, 2304, opts) * 2304 * 2 <= 4e6  # cnn_simple's 2304: fewer points
    assert embedding_size(50, 16, opts) == 50                  # never more than the test set


def test_pca_matches_sklearn():
    rng = np.random.default_rng(0)
    # Features with a clear spectrum (as trained networks give): the leading directions are defined.
    x = (rng.standard_normal((300, 40)) * np.geomspace(10, 0.1, 40)).astype(np.float32)
    points, share = pca_2d(x)
    reference = PCA(2, svd_solver="full").fit(x)
    assert share == pytest.approx(reference.explained_variance_ratio_, rel=1e-3)
    expected = reference.transform(x)
    for k in range(2):  # each component is defined up to its sign
        assert abs(np.corrcoef(points[:, k], expected[:, k])[0, 1]) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- the diagnosed run


def test_every_artifact_and_metric_is_logged(diagnosed):
    client, run_id, _, result, metrics = diagnosed
    files = set(artifact_sizes(client, run_id))
    assert files == {
        "per_class.csv", "misclassified.csv", "confusion_matrix.csv", "confusion_matrix_normalized.csv",
        "confusion_matrix.png", "pr_curves.png", "embedding_pca.png", "embedding_tsne.png", "embedding.npz",
    }
    logged = client.get_run(run_id).data.metrics
    expected = {metric_key(p, c) for p in ("class_acc", "class_ap") for c in CLASSES} | {"mean_ap"}
    assert set(metrics) == expected
    assert {k: logged[k] for k in expected} == pytest.approx(metrics)


def test_confusion_matrix_agrees_with_predictions(diagnosed, tmp_path):
    client, run_id, _, result, metrics = diagnosed
    rows = read_csv(client, run_id, "confusion_matrix.csv", tmp_path)
    assert [r["true\\pred"] for r in rows] == CLASSES
    counts = np.array([[int(r[c]) for c in CLASSES] for r in rows])
    assert counts.sum() == N_TEST
    assert np.trace(counts) == (result.preds == result.labels).sum().item()
    assert counts.sum(1).tolist() == torch.bincount(result.labels, minlength=len(CLASSES)).tolist()
    assert counts.sum(0).tolist() == torch.bincount(result.preds, minlength=len(CLASSES)).tolist()
    assert 0 < np.trace(counts) < N_TEST, "the fixture should make some mistakes and get some right"
    for k, name in enumerate(CLASSES):
        assert counts[k, k] / counts[k].sum() == pytest.approx(metrics[f"class_acc/{name}"])

    normalised = read_csv(client, run_id, "confusion_matrix_normalized.csv", tmp_path)
    norm = np.array([[float(r[c]) for c in CLASSES] for r in normalised])
    assert norm.sum(1) == pytest.approx(np.ones(len(CLASSES)), abs=1e-3)
    assert np.diag(norm) == pytest.approx([metrics[f"class_acc/{c}"] for c in CLASSES], abs=1e-4)


def test_per_class_table_agrees_with_metrics(diagnosed, tmp_path):
    client, run_id, _, result, metrics = diagnosed
    rows = read_csv(client, run_id, "per_class.csv", tmp_path)
    assert [r["class"] for r in rows] == CLASSES
    assert sum(int(r["support"]) for r in rows) == N_TEST
    assert sum(int(r["correct"]) for r in rows) == (result.preds == result.labels).sum().item()
    for r in rows:
        assert float(r["accuracy"]) == pytest.approx(metrics[f"class_acc/{r['class']}"], abs=1e-4)
        assert float(r["average_precision"]) == pytest.approx(metrics[f"class_ap/{r['class']}"], abs=1e-4)


def test_average_precision_matches_sklearn(diagnosed):
    _, _, _, result, metrics = diagnosed
    for k, name in enumerate(CLASSES):
        ap = metrics[f"class_ap/{name}"]
        assert 0.0 <= ap <= 1.0
        expected = average_precision_score((result.labels == k).numpy(), result.probs[:, k].double().numpy())
        assert ap == pytest.approx(expected, abs=1e-9)
    assert metrics["mean_ap"] == pytest.approx(np.mean([metrics[f"class_ap/{c}"] for c in CLASSES]))


def test_misclassified_table_lists_every_mistake(diagnosed, tmp_path):
    client, run_id, _, result, _ = diagnosed
    path = read_artifact(client, run_id, "misclassified.csv", tmp_path)
    assert path.read_text().splitlines()[0] == "index,true,pred,confidence,true_name,pred_name"
    rows = read_csv(client, run_id, "misclassified.csv", tmp_path)
    wrong = (result.preds != result.labels).nonzero().flatten().tolist()
    assert [int(r["index"]) for r in rows] == wrong
    for r in rows:
        i = int(r["index"])
        assert int(r["true"]) == result.labels[i] and int(r["pred"]) == result.preds[i] != result.labels[i]
        assert r["true_name"] == CLASSES[int(r["true"])] and r["pred_name"] == CLASSES[int(r["pred"])]
        assert float(r["confidence"]) == pytest.approx(result.probs[i].max().item(), abs=1e-4)


def test_embedding_npz_loads_with_the_right_shapes(diagnosed, tmp_path):
    client, run_id, model, result, _ = diagnosed
    data = np.load(read_artifact(client, run_id, "embedding.npz", tmp_path))
    n = OPTIONS.embedding_points
    dim = model.features(torch.zeros(1, 3, 32, 32)).shape[1]
    assert data["features"].shape == (n, dim) and data["features"].dtype == np.float16
    assert data["labels"].tolist() == result.labels[:n].tolist()
    assert data["preds"].tolist() == result.preds[:n].tolist()
    assert data["index"].tolist() == list(range(n))
    assert data["classes"].tolist() == CLASSES
    assert data["pca"].shape == (n, 2) and np.isfinite(data["pca"]).all()
    assert data["tsne"].shape == (OPTIONS.tsne_points, 2) and np.isfinite(data["tsne"]).all()


def test_figures_are_pngs_of_sane_size(diagnosed, tmp_path):
    client, run_id, _, _, _ = diagnosed
    for name in ("confusion_matrix.png", "pr_curves.png", "embedding_pca.png", "embedding_tsne.png"):
        with Image.open(read_artifact(client, run_id, name, tmp_path)) as img:
            img.load()
            w, h = img.size
            assert img.format == "PNG"
            assert 500 <= w <= 4000 and 400 <= h <= 4000, (name, img.size)
            assert w * h <= OPTIONS.max_image_pixels, name
            # not blank: a rendered figure has many distinct colours
            assert len(img.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50, name


def test_artifacts_stay_under_the_budget(diagnosed):
    client, run_id, _, _, _ = diagnosed
    sizes = artifact_sizes(client, run_id)
    assert sum(sizes.values()) < ARTIFACT_BUDGET / 4, sizes  # leave most of the budget to grids and checkpoint


# ---------------------------------------------------------------- exact values, switches, caps


def test_known_predictions_give_known_tables(store, tmp_path):
    """A hand-made result: 3 classes, the third absent from the test set."""
    classes = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 0])
    probs = torch.full((5, 3), 0.1)
    probs[torch.arange(5), preds] = 0.8
    result = EvalResult(loss=1.0, acc=0.6, probs=probs, labels=labels, seconds=0.0)
    hw = setup_hardware("cpu", "fp32", None)
    tracker = RunTracker.start(store, "diag", "known", {})
    options = Diagnostics(embedding=False)
    images = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    metrics = log_test_diagnostics(tracker, None, result, images, classes, None, hw, options)
    assert metrics["class_acc/a"] == pytest.approx(2 / 3) and metrics["class_acc/b"] == pytest.approx(0.5)
    assert "class_acc/c" not in metrics and "class_ap/c" not in metrics  # no images of c: undefined, not 0
    counts = read_artifact(tracker.client, tracker.run_id, "confusion_matrix.csv", tmp_path).read_text()
    assert counts == "true\\pred,a,b,c\na,2,1,0\nb,1,1,0\nc,0,0,0\n"
    per_class = read_csv(tracker.client, tracker.run_id, "per_class.csv", tmp_path)
    assert per_class[2]["support"] == "0" and per_class[2]["accuracy"] == "nan"


def test_switches_off_log_nothing(store):
    result = EvalResult(1.0, 0.5, torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]), 0.0)
    tracker = RunTracker.start(store, "diag", "all off", {})
    off = Diagnostics(per_class=False, misclassified_table=False, confusion=False, pr_curves=False,
                             embedding=False)
    hw = setup_hardware("cpu", "fp32", None)
    assert log_test_diagnostics(tracker, None, result, torch.zeros(2, 3, 32, 32), ["x", "y"], None, hw, off) == {}
    assert artifact_sizes(tracker.client, tracker.run_id) == {}
    assert tracker.client.get_run(tracker.run_id).data.metrics == {}


def test_max_image_pixels_caps_a_figure(tmp_path):
    counts = np.arange(100).reshape(10, 10)
    fig = figures.confusion_figure(counts, [f"class{i}" for i in range(10)], max_pixels=300_000)
    fig.savefig(tmp_path / "small.png")
    with Image.open(tmp_path / "small.png") as img:
        assert img.size[0] * img.size[1] <= 300_000


def test_many_classes_still_draw(tmp_path):
    """Past 20 classes (CIFAR-100, say): no per-cell numbers, a two-column legend, still within the cap."""
    k = 30
    names = [f"c{i}" for i in range(k)]
    fig = figures.confusion_figure(np.eye(k, dtype=int) * 5, names)
    fig.savefig(tmp_path / "cm.png")
    rng = np.random.default_rng(0)
    curves = [(np.sort(rng.random(20))[::-1], np.linspace(0, 1, 20)) for _ in range(k)]
    figures.pr_curves_figure(curves, [0.5] * k, names).savefig(tmp_path / "pr.png")
    for name in ("cm.png", "pr.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] * img.size[1] <= figures.DEFAULT_MAX_PIXELS


# ---------------------------------------------------------------- through the training loop


@pytest.fixture(scope="module")
def trained_run(store):
    """One real `train()` on synthetic data with per-step loss logging on."""
    import cifar_sweep.train as train_module

    overrides = ["data=synthetic", "trainer.epochs=1", "trainer.log_every_n_steps=2", "trainer.threads=2",
                 f"tracking.uri={store}", "tracking.experiment=diag_train"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train_module.train(cfg)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("diag_train")
    (run,) = client.search_runs([exp.experiment_id])
    return client, run, cfg


def test_train_loss_step_every_n_steps(trained_run):
    client, run, cfg = trained_run
    history = client.get_metric_history(run.info.run_id, "train_loss_step")
    steps = [m.step for m in history]
    assert steps and steps == sorted(steps)
    assert all(s % 2 == 0 for s in steps)
    assert steps[1] - steps[0] == 2
    assert all(np.isfinite(m.value) for m in history)


def test_training_run_holds_the_diagnostics(trained_run):
    client, run, cfg = trained_run
    assert "diagnostics" in cfg
    files = artifact_sizes(client, run.info.run_id)
    for name in ("per_class.csv", "misclassified.csv", "confusion_matrix.png", "confusion_matrix.csv",
                 "pr_curves.png", "embedding_pca.png", "embedding.npz"):
        assert name in files, name
    metrics = run.data.metrics
    assert "mean_ap" in metrics and any(k.startswith("class_acc/") for k in metrics)
    assert sum(files.values()) < ARTIFACT_BUDGET
