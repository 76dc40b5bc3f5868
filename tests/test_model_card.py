"""excon.model_card on its own (the registry test checks a registered version carries it)."""

from excon.config import load_config
from excon.model_card import model_card

META = {
    "dataset": "cifar100",
    "method": "excon",
    "arch": "resnet50",
    "width": 1.0,
    "num_classes": 100,
    "in_channels": 3,
    "image_size": [32, 32],
    "class_names": [f"c{i}" for i in range(100)],
    "gradcam_layer": "layer2[3].conv3",
}
TAGS = {"excon.weights_sha256": "ab12", "excon.data_hash": "md5-77", "excon.eval_settings": "e1"}


def card(metrics: dict, report: dict | None = None) -> str:
    cfg = load_config(None, ["method.name=excon"])
    reasons = [
        "champion: version 2",
        "FAIL calib/ece: challenger 0.2000 <= champion 0.1000 + tolerance 0",
    ]
    return model_card("excon-cifar100", 3, META, metrics, TAGS, "rejected", reasons, cfg, report)


def test_the_card_states_what_the_version_is_and_why_it_was_not_promoted():
    text = card({"test/top1": 0.7, "calib/ece": 0.2})
    assert text.startswith("# excon-cifar100 version 3\n\n**Gate decision: rejected**\n")
    assert "- FAIL calib/ece: challenger 0.2000" in text
    assert "resnet50 (width 1.0)" in text and "100 classes at [32, 32] px" in text
    assert "Grad-CAM layer: layer2[3].conv3" in text
    assert "`md5-77`" in text and "`ab12`" in text
    assert "c19 … (100 in all)" in text and "c20" not in text  # long class lists are cut
    assert "- method: name excon, temperature 0.1" in text
    assert "| test accuracy (top-1) (`test/top1`) | 0.7000 | not in the report |" in text
    assert "intervals over seeds not available" in text


def test_missing_and_non_finite_values_read_n_a():
    report = {"methods": {"excon": {"test/top1": {"mean": float("nan"), "n": 2}}}}
    text = card({"test/top1": float("inf")}, report)
    assert "| test accuracy (top-1) (`test/top1`) | n/a | n/a (n=2) |" in text
    assert "calib/ece" not in text.split("## Metrics")[1].split("## Known")[0]  # not measured
