"""`cifar-still-wrong` on the seeded store, with a fake DataBundle standing in for the test images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from datasets_store import datasets_store  # noqa: F401  (module-scoped fixture)
from helpers import run_cli
from store_fixtures import CLASSES, seeded_store  # noqa: F401  (module-scoped fixture)

from cifar_sweep.analysis import ranking as lb
from cifar_sweep.tracking import queries as rq
from cifar_sweep.commands import still_wrong as sw


def fake_bundle(n: int = 10):
    """Same API as cifar_sweep.data's DataBundle: .test.images uint8 (N,3,32,32), .test.labels, .classes."""
    torch = pytest.importorskip("torch")
    images = torch.zeros((n, 3, 32, 32), dtype=torch.uint8)
    for i in range(n):  # a distinct flat colour per image, to find it in the grid
        images[i, 0], images[i, 1], images[i, 2] = 20 * i, 255 - 20 * i, 100
    return SimpleNamespace(test=SimpleNamespace(images=images, labels=torch.zeros(n, dtype=torch.long)),
                           classes=CLASSES)


def table(rows):
    return pd.DataFrame(rows, columns=["index", "true", "pred"])


def test_tally_and_pick():
    tables = {"r1": table([(1, 3, 5), (2, 0, 8)]), "r2": table([(1, 3, 5), (4, 9, 1)]), "r3": table([(1, 3, 2)])}
    counts = sw.tally(tables).set_index("index")
    assert counts.loc[1].tolist() == [3, 3, 5, 2]  # true cat, missed by 3, as dog by 2
    picked = sw.pick(counts.reset_index(), n_runs=3)
    assert list(picked["index"]) == [1]
    assert list(sw.pick(counts.reset_index(), n_runs=3, min_share=0.3)["index"]) == [1, 2, 4]


def test_runs_of_other_seeds_are_tallied_by_each_image_s_source_position():
    # One image (source 40) at position 1 in one run's shuffled split and at 6 in the other's.
    r1 = table([(1, 3, 5), (2, 0, 8)]).assign(source_index=[40, 7])
    r2 = table([(6, 3, 5), (5, 9, 1)]).assign(source_index=[40, 12])
    counts = sw.tally({"r1": r1, "r2": r2}).set_index("index")
    assert counts.loc[40].tolist() == [3, 2, 5, 2] and sorted(counts.index) == [7, 12, 40]
    # One run from before source positions were logged: the split positions count, as before.
    assert sorted(sw.tally({"r1": r1, "r2": r2.drop(columns=["source_index"])}).loc[:, "index"]) == [1, 2, 5, 6]


def test_runs_that_saw_different_test_splits_are_refused():
    with pytest.raises(rq.StoreError, match="disagree on the true class of test images \\[1\\]"):
        sw.tally({"r1": table([(1, 3, 5)]), "r2": table([(1, 4, 5)])})


def test_still_wrong_on_seeded_store(seeded_store):
    # Top 3 runs by best_val_acc: B (0.90), A2 (0.74), A1 (0.72).
    image, picked, n_runs = sw.still_wrong(lb.Query(tracking_uri=seeded_store.uri), top=3, bundle=fake_bundle())
    assert n_runs == 3
    assert picked[["index", "true_name", "missed_by", "top_pred_name", "top_pred_count"]].values.tolist() == [
        [1, "cat", 3, "dog", 2], [2, "airplane", 3, "ship", 2], [4, "truck", 2, "automobile", 2]]
    tile, caption, pad = sw.TILE, sw.CAPTION, sw.PAD
    assert image.size == (pad + 3 * (tile + pad), pad + tile + caption + pad)
    # The first tile is test image 1, upscaled.
    assert image.getpixel((pad + tile // 2, pad + tile // 2)) == (20, 235, 100)


def test_main_writes_png(seeded_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sw, "load_bundle", lambda client, run_id: fake_bundle())
    out = tmp_path / "wrong.png"
    assert sw.main(["--tracking-uri", seeded_store.uri, "--top", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 images missed by most of 3 runs" in capsys.readouterr().err


def test_top_runs_come_from_one_dataset_real_cifar10_first(datasets_store, capsys, monkeypatch, tmp_path):
    """Synthetic and two-class runs rank above every real one across datasets: they must not be
    counted (their test splits differ: tallying them together is refused), nor crowd the real runs out."""
    image, picked, n_runs = sw.still_wrong(lb.Query(tracking_uri=datasets_store.uri), top=3, bundle=fake_bundle())
    assert n_runs == 2  # R1 and R2, the only real CIFAR-10 runs with a misclassified.csv
    assert picked[["index", "missed_by"]].values.tolist() == [[1, 2]]
    monkeypatch.setattr(sw, "load_bundle", lambda client, run_id: fake_bundle())
    assert sw.main(["--tracking-uri", datasets_store.uri, "--top", "3", "--out", str(tmp_path / "w.png")]) == 0
    err = capsys.readouterr().err
    assert "the top 2 runs on data cifar10-jpeg (other data in this store: cifar10-jpeg[cat,dog], cifar2, " \
           "synthetic; --data picks one)" in err
    assert sw.main(["--tracking-uri", datasets_store.uri, "--data", "synthetic", "--top", "3",
                    "--out", str(tmp_path / "s.png")]) == 0
    assert "on data synthetic" in capsys.readouterr().err


PNG = b"\x89PNG\r\n\x1a\n"


def test_main_writes_beside_the_store_not_in_the_working_folder(seeded_store, tmp_path, capsys, monkeypatch):
    """No --out: the grid goes to still_wrong/<experiment>-<data>.png in the runs folder of the SQLite
    store, and the folder the command ran in stays empty."""
    monkeypatch.setattr(sw, "load_bundle", lambda client, run_id: fake_bundle())
    monkeypatch.chdir(tmp_path)
    assert sw.main(["--tracking-uri", seeded_store.uri, "--top", "3"]) == 0
    expected = Path(seeded_store.uri[len("sqlite:///"):]).parent / "still_wrong" / "cifar_sweep-cifar10-jpeg.png"
    assert expected.read_bytes()[:8] == PNG
    assert list(tmp_path.iterdir()) == []
    assert f"wrote {expected}: 3 images missed by most of 3 runs" in capsys.readouterr().err


@pytest.mark.cli
def test_cli_default_out_is_under_the_runs_folder(tmp_path):
    """As a user runs it: two real synthetic runs, then `cifar-still-wrong` from another folder."""
    home = tmp_path / "home"
    home.mkdir()
    light = ["diagnostics.embedding=false", "diagnostics.pr_curves=false", "diagnostics.confusion=false",
             "tracking.misclassified_grid=false", "tracking.system_metrics_s=0"]
    # One seed (the synthetic test split's order depends on it), two learning rates: two runs to tally.
    res = run_cli(["-m", "data=synthetic", "model=logreg", "trainer.epochs=1", "optimizer.lr=0.001,0.003", *light],
                  home, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "cifar_sweep.commands.still_wrong", "--top", "2", "--min-share", "0.4"],
                          cwd=elsewhere, env={**os.environ, "CIFAR_SWEEP_HOME": str(home)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = home / "runs" / "still_wrong" / "cifar_sweep-synthetic.png"
    assert f"wrote {out}: " in done.stderr, done.stderr
    assert out.read_bytes()[:8] == PNG
    assert list(elsewhere.iterdir()) == []
