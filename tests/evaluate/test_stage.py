"""`excon evaluate` end to end on a tiny trained + probed run."""

import csv
import json

import numpy as np
import pytest

from excon.evaluate import per_image
from excon.evaluate.report import load_eval_metrics
from excon.evaluate.stage import evaluate, subset
from excon.evaluate.uncertainty import weighted_ece, weighted_mean
from excon.probe import probe
from excon.train import pretrain

EVAL = [
    "eval.corruptions=[gaussian_noise, contrast]",
    "eval.severities=[1, 5]",
    "eval.shift_images=8",
    "eval.attack_images=8",
    "eval.eps=[0, 4]",
    "eval.pgd_steps=2",
    "eval.expl_images=8",
    "eval.deletion_steps=4",
    "eval.grid_images=2",
]


def test_evaluate_writes_every_metric(prepared, tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shift cache lives under ./data/shift
    cfg = tiny_config("method.name=excon", "method.exp_epochs=1", "train.epochs=1", *EVAL)
    run = tmp_path / "run"
    pretrain(cfg, prepared, run)
    probe_metrics = probe(cfg, prepared, run)
    metrics = evaluate(cfg, prepared, run)

    assert metrics["method"] == "excon" and metrics["seed"] == 0
    # the probe's reported accuracy is what evaluation measures with the saved head
    assert metrics["test/top1"] == probe_metrics["test/top1"]
    for key in (
        "online/top1",
        "calib/ece",
        "calib/nll",
        "calib/brier",
        "shift/mean/ece",
        "shift/gaussian_noise/5/acc",
        "shift/contrast/1/nll",
        "shift/sev5/ece",
        "adv/fgsm/eps4/acc",
        "adv/pgd/eps4/ece",
        "adv/pgd/eps0/acc",
        "expl/avg_drop",
        "expl/increase",
        "expl/deletion_auc",
        "expl/insertion_auc",
        "expl/pointing_game",
        "expl/energy_pointing_game",
    ):
        assert key in metrics, key
    # eps 0 is no attack: the clean accuracy of the attacked subset
    assert 0 <= metrics["adv/pgd/eps4/acc"] <= 1
    out = run / "eval"
    # each part wrote its own metrics.json; merged they are what evaluate returned
    assert load_eval_metrics(run) == metrics
    adv = json.loads((out / "robustness" / "metrics.json").read_text())
    assert adv["method"] == "excon" and all(k.startswith("adv/") for k in adv if "/" in k)
    rows = list(csv.DictReader((out / "calibration" / "shift.csv").open()))
    assert len(rows) == 4 and {r["source"] for r in rows} == {"generated"}
    rows = list(csv.DictReader((out / "robustness" / "robustness.csv").open()))
    assert [(r["attack"], float(r["eps"])) for r in rows] == [
        ("fgsm", 0.0),
        ("fgsm", 4.0),
        ("pgd", 0.0),
        ("pgd", 4.0),
    ]
    assert len(list(csv.DictReader((out / "calibration" / "reliability.csv").open()))) == 10
    for png in (
        "calibration/reliability.png",
        "robustness/robustness.png",
        "calibration/shift_ece.png",
        "calibration/shift_acc.png",
        "explanations/saliency_test.png",
    ):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    # corrupted sets are cached: a second evaluation reads them back
    cached = sorted(p.name for p in (tmp_path / "data" / "shift" / "blobs").iterdir())
    assert cached == [
        "contrast_s1.npz",
        "contrast_s5.npz",
        "gaussian_noise_s1.npz",
        "gaussian_noise_s5.npz",
    ]
    _per_image_values_reproduce_the_metrics(run, metrics)
    assert evaluate(cfg, prepared, run) == metrics
    # a part run alone (as its DAG stage does) gives exactly what it gave in the full run
    assert evaluate(cfg, prepared, run, ["robustness"]) == {
        k: v for k, v in metrics.items() if k.startswith("adv/") or "/" not in k
    }


def _per_image_values_reproduce_the_metrics(run, metrics):
    """Each part's per_image.npz holds what its metrics are computed from, rows by test index."""
    parts = per_image.load(run)
    assert set(parts) == {"calibration", "robustness", "explanations"}
    assert parts["calibration"]["index"].tolist() == list(range(24))  # 6 per class x 4
    assert parts["robustness"]["index"].tolist() == subset(24, 8, 0).tolist()
    assert parts["calibration"]["shift_set"].tolist() == [
        "gaussian_noise/1",
        "gaussian_noise/5",
        "contrast/1",
        "contrast/5",
    ]
    for key in (
        "test/top1",
        "test/top5",
        "online/top1",
        "calib/ece",
        "calib/nll",
        "calib/brier",
        "shift/mean/acc",
        "shift/mean/ece",
        "shift/mean/nll",
        "adv/fgsm/eps4/acc",
        "adv/pgd/eps4/ece",
        "expl/avg_drop",
        "expl/increase",
        "expl/deletion_auc",
        "expl/pointing_game",
    ):
        s = per_image.statistic(key, parts)
        full = np.ones((1, len(s.index)), np.float32)
        if s.values is not None:
            got = weighted_mean(full, s.values)[0]
        else:
            got = weighted_ece(full, s.confidence, s.correct, s.n_bins)[0]
        assert got == pytest.approx(metrics[key], abs=1e-5), key


def test_unknown_part_is_a_config_error(prepared, tiny_config, tmp_path):
    from excon.config import ConfigError

    with pytest.raises(ConfigError, match="evaluation parts"):
        evaluate(tiny_config(), prepared, tmp_path, ["accuracy"])


def test_unknown_corruption_is_a_config_error(prepared, tiny_config, tmp_path):
    from excon.config import ConfigError
    from excon.evaluate.stage import corruption_names

    with pytest.raises(ConfigError, match=r"eval\.corruptions: unknown"):
        corruption_names(tiny_config("eval.corruptions=[rain]"))


def test_subset_is_fixed_and_sorted():
    a = subset(100, 10, seed=3)
    assert list(a) == sorted(a) and len(set(a)) == 10
    assert (a == subset(100, 10, seed=3)).all()
    assert len(subset(5, None, 0)) == 5 and len(subset(5, 50, 0)) == 5


def test_online_head_mode_scores_the_co_trained_head(prepared, tiny_config, tmp_path, monkeypatch):
    """eval.head=online (the reference's eval.py): every part scores the checkpoint's own
    classifier, so the headline accuracy is the online head's, and no probe is needed."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("method.name=supcon", "train.epochs=1", "eval.head=online", *EVAL)
    run = tmp_path / "run"
    pretrain(cfg, prepared, run)
    assert not (run / "probe_head.safetensors").exists()
    metrics = evaluate(cfg, prepared, run, ["calibration", "robustness"])
    assert metrics["head"] == "online"
    assert metrics["test/top1"] == metrics["online/top1"]
    # eps 0 is the clean accuracy of the attacked subset, under the same head
    probed = tiny_config("method.name=supcon", "train.epochs=1", *EVAL)
    probe(probed, prepared, run)
    by_probe = evaluate(probed, prepared, run, ["calibration"])
    assert by_probe["head"] == "probe" and by_probe["online/top1"] == metrics["online/top1"]
