from pathlib import Path

import pytest

from excon.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_repo_params_are_valid():
    assert load_config() == Config()
    for path in [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        load_config(path)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epochs: 3\nmodel:\n  width: 0.5\n")
    cfg = load_config(p, ["train.batch_size=32", "probe.lrs=[0.5, 2]", "optim.lr=1"])
    assert cfg.train.epochs == 3
    assert cfg.model.width == 0.5
    assert cfg.train.batch_size == 32
    assert cfg.probe.lrs == [0.5, 2.0]
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.data.limit_per_class is None
    assert load_config(None, ["data.limit_per_class=null"]).data.limit_per_class is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", r"train\.epochz: unknown key \(allowed: epochs, "),
        ("trian.epochs=3", r"trian: unknown section"),
        ("train.epochs=three", r"train\.epochs: got 'three', expected int"),
        ("train.epochs=2.5", r"train\.epochs: got 2\.5, expected int"),
        ("train.epochs=0", r"train\.epochs: got 0, must be > 0"),
        ("train.amp=1", r"train\.amp: got 1, expected bool"),
        ("model.arch=vgg", r"model\.arch: got 'vgg', expected one of 'resnet18', 'resnet50'"),
        ("method.name=byol", r"method\.name: got 'byol', expected one of 'ce', 'supcon', 'excon'"),
        ("data.val_fraction=1.5", r"data\.val_fraction: got 1\.5, must be in \[0, 1\)"),
        ("optim.lr=-1", r"optim\.lr: got -1\.0, must be > 0"),
        ("probe.lrs=[]", r"probe\.lrs: got \[\], must be a non-empty list"),
        ("train.batch_size=1", r"train\.batch_size: got 1, must be >= 2"),
        ("epochs=3", r"expected section\.key=value"),
        (
            "storage.artifacts_url=http://x/y",
            r"storage\.artifacts_url: got 'http://x/y', must be an s3://",
        ),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(bad)


def test_underscore_sections_belong_to_other_tools(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("_pipeline:\n  anything: 1\ntrain:\n  epochs: 2\n")
    assert load_config(p).train.epochs == 2


def test_a_zero_validation_fraction_and_the_protocols_are_legal():
    # checked against the prepared data by pretrain (tests/test_train.py), not here: a pipeline
    # task's config holds only its slice, e.g. the protocol without data.val_fraction
    cfg = load_config(None, ["study.protocol=reference", "data.val_fraction=0"])
    assert cfg.data.val_fraction == 0.0 and cfg.study.protocol == "reference"
    assert load_config(None, ["study.protocol=reference"]).data.val_fraction == 0.1
