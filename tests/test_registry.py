"""Model registry: pyfunc logging, promotion gate, manual promotion, own loader, explanations.

MLflow runs on a local SQLite store under tmp; the "runs" are tiny networks saved with the real
writers (save_model, save_probe_head) and hand-set eval metrics, so every gate decision is known.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excon import registry, tracking
from excon.config import load_config
from excon.serve import model as serving
from excon.testing import tiny_run

mlflow = pytest.importorskip("mlflow")

GOOD = {"test/top1": 0.5, "calib/ece": 0.10, "adv/pgd/eps4/acc": 0.20, "expl/avg_drop": 0.50}
WORSE_TOP1 = {**GOOD, "test/top1": 0.40}
BETTER = {"test/top1": 0.6, "calib/ece": 0.05, "adv/pgd/eps4/acc": 0.30, "expl/avg_drop": 0.40}


def make_run(run_dir: Path, metrics: dict, seed: int = 0, channels: int = 3) -> Path:
    return tiny_run(run_dir, metrics, seed=seed, channels=channels)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A SQLite tracking store with the test experiment's artifacts under tmp."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("reg-test", artifact_location=(tmp / "artifacts").as_uri())
    yield uri
    mlflow.set_tracking_uri(old)


def config(store: str, *extra: str):
    return load_config(None, [f"tracking.uri={store}", "tracking.experiment=reg-test", *extra])


@pytest.fixture(scope="module")
def registered(store, tmp_path_factory) -> tuple[str, Path]:
    """One registered (champion) model under its own name, shared by the loading tests."""
    run = make_run(tmp_path_factory.mktemp("run") / "supcon", GOOD, seed=3)
    out = registry.register(config(store, "tracking.model_name=excon-shared"), run)
    assert out["decision"] == "promoted"
    return out["name"], run


def alias(client, name: str) -> int:
    return int(client.get_model_version_by_alias("excon-blobs", name).version)


def test_gate_flow_and_manual_promotion(store, tmp_path):
    cfg = config(store)
    client = mlflow.MlflowClient()

    first = registry.register(cfg, make_run(tmp_path / "r1", GOOD, seed=1))
    assert first["name"] == "excon-blobs" and first["version"] == 1
    assert first["decision"] == "promoted"
    assert alias(client, "champion") == 1
    v1 = client.get_model_version("excon-blobs", "1")
    assert float(v1.tags["metric.test/top1"]) == 0.5
    assert v1.tags["gate.decision"] == "promoted"

    worse = registry.register(cfg, make_run(tmp_path / "r2", WORSE_TOP1, seed=2))
    assert worse["version"] == 2 and worse["decision"] == "rejected"
    assert alias(client, "champion") == 1
    assert alias(client, "challenger") == 2
    tags = client.get_model_version("excon-blobs", "2").tags
    assert tags["gate.decision"] == "rejected"
    failing = [line for line in tags["gate.reasons"].splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and "test/top1" in failing[0]
    assert "0.4000" in failing[0] and "0.5000" in failing[0]  # both values

    better = registry.register(cfg, make_run(tmp_path / "r3", BETTER, seed=4))
    assert better["decision"] == "promoted"
    assert alias(client, "champion") == 3
    assert sum(line.startswith("pass") for line in better["reasons"]) == 4

    registry.promote(cfg, "excon-blobs", 2)
    assert alias(client, "champion") == 2
    assert client.get_model_version("excon-blobs", "2").tags["gate.decision"] == "manual"


def test_gate_semantics_missing_metrics_and_tolerance():
    cfg = load_config(None, ["tracking.gate_top1_tolerance=0.02"])
    ok, reasons = registry.gate(cfg, {**GOOD, "test/top1": 0.49}, GOOD)
    assert ok, reasons  # within tolerance
    no_drop = {k: v for k, v in GOOD.items() if k != "expl/avg_drop"}
    ok, reasons = registry.gate(cfg, no_drop, GOOD)  # challenger lacks a metric: fails it
    assert not ok and any(r.startswith("FAIL expl/avg_drop") for r in reasons)
    ok, reasons = registry.gate(cfg, GOOD, no_drop)  # champion lacks it: skipped
    assert ok and any(r.startswith("skip expl/avg_drop") for r in reasons)
    ok, _ = registry.gate(cfg, {**GOOD, "calib/ece": float("nan")}, GOOD)  # NaN = missing
    assert not ok
    assert registry.gate(cfg, GOOD, None)[0]  # no champion: a complete challenger passes
    ok, reasons = registry.gate(cfg, {**GOOD, "calib/ece": float("inf")}, None)
    assert not ok and reasons == ["FAIL calib/ece: challenger has no finite value"]
    assert not registry.gate(cfg, {}, None)[0]  # ...and an incomplete one never does


def test_pyfunc_matches_own_loader(registered):
    name, _ = registered
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    probs = np.asarray(pyfunc.predict(images))
    model, meta = serving.load_registered(f"models:/{name}/1")
    ours = serving.predict_proba(model, meta, images)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, ours, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match=r"uint8|dtype|float"):
        pyfunc.predict(images.astype(np.float32))


def test_logged_model_holds_safetensors_not_pickles(registered, tmp_path):
    name, run = registered
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path)))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.safetensors", "model.json", "probe_head.safetensors", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pt2", ".pth"))]
    reqs = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in reqs)
    assert json.loads((local / "artifacts" / "model.json").read_text()) == json.loads(
        (run / "model.json").read_text()
    )


def test_explain_files_writes_overlays(registered, tmp_path):
    name, _ = registered
    rng = np.random.default_rng(1)
    rgb = tmp_path / "in" / "rgb.png"
    gray = tmp_path / "in" / "gray.jpg"
    rgb.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(rgb)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(gray)
    out = serving.explain_files(f"models:/{name}@champion", [rgb, gray], tmp_path / "out")
    assert [r["path"] for r in out] == [str(rgb), str(gray)]
    for r in out:
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(r["top"]) == 3 and r["top"][0]["class"] == r["predicted"]
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)
        with Image.open(r["overlay_png"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 224
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_explain_images_maps(registered):
    name, _ = registered
    model, meta = serving.load_registered(f"models:/{name}@champion")
    images = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    probs, maps = serving.explain_images(model, meta, images)
    assert probs.shape == (2, 3) and maps.shape == (2, 1, 16, 16)
    assert maps.min() >= 0 and maps.max() <= 1


def test_register_needs_tracking(tmp_path):
    cfg = load_config(None, ["tracking.enabled=false"])
    with pytest.raises(registry.RegistryError, match="needs MLflow tracking"):
        registry.register(cfg, make_run(tmp_path / "r", GOOD))


def test_register_missing_eval_is_clear(store, tmp_path):
    run = make_run(tmp_path / "r", GOOD)
    (run / "eval" / "robustness" / "metrics.json").unlink()
    with pytest.raises(registry.RegistryError, match=r"eval/robustness/metrics\.json"):
        registry.register(config(store), run)


# --------------------------------------------------------------------------------------------
# registry hygiene: experiments, duplicates, like with like, lineage


@pytest.fixture(autouse=True)
def outside_dvc(monkeypatch):
    """No test here runs as a DVC stage unless it says so."""
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "EXCON_GIT_COMMIT"):
        monkeypatch.delenv(var, raising=False)


def prepared_dir(path: Path, content: str = "a") -> Path:
    """A stand-in prepared directory: data_hash falls back to its manifest's sha256."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"dataset": "blobs", "content": content}))
    return path


def versions(name: str) -> list:
    return mlflow.MlflowClient().search_model_versions(f"name = '{name}'")


def register_runs() -> int:
    runs = mlflow.search_runs(experiment_names=["reg-test"], output_format="list")
    return sum(r.data.tags.get("excon.stage") == "register" for r in runs)


def test_an_experiment_registers_nothing_unless_asked(store, tmp_path, monkeypatch, capsys):
    from excon.cli import main

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r", GOOD, seed=5)
    # what DVC puts in every stage's environment under `dvc exp run` (queue/base.py:_stash_exp)
    monkeypatch.setenv("DVC_EXP_NAME", "urban-sash")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    before = register_runs()
    sets = [f"tracking.uri={store}", "tracking.experiment=reg-test", "tracking.model_name=x-exp"]
    argv = ["register", "--run-dir", str(run), *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    line = (
        "skipped: experiment urban-sash; "
        "pass -S tracking.register_experiments=true (dvc exp run) to register"
    )
    assert capsys.readouterr().out.strip().endswith(line)
    assert json.loads((run / "registered.json").read_text())["decision"] == line
    assert versions("x-exp") == [] and register_runs() == before

    cfg = config(store, "tracking.model_name=x-exp")
    cfg.tracking.register_experiments = True  # (the field may not exist yet: read by getattr)
    asked = registry.register(cfg, run)
    assert asked["version"] == 1 and asked["decision"] == "promoted"
    assert register_runs() == before + 1


def test_a_plain_dvc_repro_registers(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # dvc repro sets DVC_ROOT and DVC_STAGE only
    monkeypatch.setenv("DVC_STAGE", "register@ce")
    out = registry.register(config(store, "tracking.model_name=x-repro"), make_run(tmp_path, GOOD))
    assert out["decision"] == "promoted"


def test_the_same_weights_are_registered_once(store, tmp_path):
    cfg = config(store, "tracking.model_name=x-dup")
    first = registry.register(cfg, make_run(tmp_path / "r1", GOOD, seed=6))
    shutil.copytree(tmp_path / "r1", tmp_path / "copy")  # the same files elsewhere (a DVC rerun)
    before = register_runs()
    again = registry.register(cfg, tmp_path / "copy")
    assert again["version"] == first["version"] == 1
    assert again["decision"] == "already registered as version 1"
    assert len(versions("x-dup")) == 1 and register_runs() == before
    other = registry.register(cfg, make_run(tmp_path / "r2", GOOD, seed=7))  # other weights
    assert other["version"] == 2
    tags = {str(v.version): v.tags["excon.weights_sha256"] for v in versions("x-dup")}
    assert tags["1"] == registry.weights_sha256(tmp_path / "r1") != tags["2"]
    both = (tmp_path / "r1" / "model.safetensors").read_bytes()
    both += (tmp_path / "r1" / "probe_head.safetensors").read_bytes()
    assert tags["1"] == hashlib.sha256(both).hexdigest()


def test_a_champion_evaluated_otherwise_is_not_compared(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dvc.lock: data_hash is the manifest's sha256
    data = prepared_dir(tmp_path / "data")
    client = mlflow.MlflowClient()
    name = "x-like"
    champ = registry.register(
        config(store, f"tracking.model_name={name}"), make_run(tmp_path / "r1", GOOD, seed=8), data
    )
    assert champ["decision"] == "promoted"

    cfg = config(store, f"tracking.model_name={name}", "eval.attack_images=500")
    other = registry.register(cfg, make_run(tmp_path / "r2", BETTER, seed=9), data)
    assert other["decision"] == "not compared"
    assert other["reasons"] == [
        "champion v1 was evaluated with other settings (attack_images null vs 500)"
    ]
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    tags = client.get_model_version(name, "2").tags
    assert tags["gate.decision"] == "not compared" and tags["gate.reasons"] == other["reasons"][0]
    assert json.loads(tags["excon.eval_settings_json"])["attack_images"] == 500

    moved = prepared_dir(tmp_path / "data2", content="b")  # other data, same settings
    third = registry.register(
        config(store, f"tracking.model_name={name}"),
        make_run(tmp_path / "r3", BETTER, seed=10),
        moved,
    )
    assert third["decision"] == "not compared"
    (reason,) = third["reasons"]
    assert reason.startswith("champion v1 was evaluated on other data (data hash ")

    # keys that do not change a result (batch size, cache path, figure size) do not block
    neutral = config(
        store,
        f"tracking.model_name={name}",
        "eval.batch_size=7",
        "eval.grid_images=2",
        "eval.shift_cache=elsewhere",
    )
    fourth = registry.register(neutral, make_run(tmp_path / "r4", BETTER, seed=11), data)
    assert fourth["decision"] == "promoted", fourth["reasons"]


def test_like_with_like_ignores_tags_a_champion_predates():
    from types import SimpleNamespace

    new = {"excon.data_hash": "abc", "excon.eval_settings": "s1"}
    old = SimpleNamespace(version="3", tags={})
    assert registry.like_with_like(new, old) is None  # registered before the tags: compared
    old.tags = {"excon.data_hash": "abc", "excon.eval_settings": "s2"}
    assert registry.like_with_like(new, old) == (
        "champion v3 was evaluated with other settings (s2 vs s1)"  # no JSON: the digests
    )
    old.tags["excon.data_hash"] = "xyz"
    assert "on other data" in registry.like_with_like(new, old)
    assert " and with other settings" in registry.like_with_like(new, old)


def test_a_version_carries_its_lineage(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXCON_GIT_COMMIT", "f" * 40)  # the image's commit wins over git HEAD
    # (MLflow keeps one dataset per name and digest in an experiment: content of its own here)
    data = prepared_dir(tmp_path / "data", content="lineage")
    run = make_run(tmp_path / "r", GOOD, seed=12)
    cfg = config(store, "tracking.model_name=x-lineage")
    with tracking.stage_run(cfg, "pretrain", "supcon") as pre:  # as stages.pretrain tags it
        pre.set_tags({tracking.MODEL_SHA256_TAG: tracking.file_sha256(run / "model.safetensors")})
    out = registry.register(cfg, run, data)

    client = mlflow.MlflowClient()
    version = client.get_model_version("x-lineage", str(out["version"]))
    logged = client.get_run(version.run_id)  # the version is linked to the run that logged it
    assert logged.data.tags["excon.stage"] == "register"
    assert logged.data.tags["mlflow.source.git.commit"] == "f" * 40
    assert logged.data.tags["git.commit"] == "f" * 40
    assert version.tags["excon.train_run_id"] == pre.run_id
    assert version.tags["excon.data_hash"] == tracking.data_hash(data)
    (dataset,) = logged.inputs.dataset_inputs
    assert dataset.dataset.name == "blobs"
    assert dataset.dataset.digest == tracking.data_hash(data)[:36]
    assert json.loads(dataset.dataset.source)["uri"] == str(data.resolve())

    local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "m")))
    example = (local / "serving_input_example.json").read_text()
    with warnings.catch_warnings():  # deprecated for mlflow.models.predict (a uv env): too slow
        warnings.simplefilter("ignore")
        probs = np.asarray(mlflow.models.validate_serving_input(str(local), example))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.asarray(json.loads(example)["inputs"]).dtype.kind == "i"


# --------------------------------------------------------------------------------------------
# the model card


def write_report(path: Path) -> Path:
    """A report.json as `excon report` writes it (the parts the card reads)."""
    from excon.artifacts import write_json

    write_json(
        path,
        {
            "methods": {
                "supcon": {
                    "test/top1": {"mean": 0.5, "std": 0.04, "n": 3, "low": 0.41, "high": 0.59},
                    "calib/ece": {"mean": 0.1, "std": 0.01, "n": 3, "low": 0.08, "high": 0.12},
                }
            },
            "claims": {
                "supported": 1,
                "of": 4,
                "each": [{"name": "accuracy", "title": "accuracy", "verdict": "supported"}],
            },
        },
    )
    return path


def test_each_version_carries_its_model_card(store, tmp_path):
    cfg = config(store, "tracking.model_name=excon-card")
    client = mlflow.MlflowClient()
    run = make_run(tmp_path / "runs" / "blobs" / "supcon" / "seed0", GOOD, seed=21)
    write_report(tmp_path / "runs" / "blobs" / "report" / "report.json")  # the study's report
    data = prepared_dir(tmp_path / "data", "card")
    first = registry.register(cfg, run, data)
    version = client.get_model_version("excon-card", str(first["version"]))
    card = version.description
    assert card.startswith("# excon-card version 1\n")
    assert "**Gate decision: promoted**" in card and "- no champion yet: promoted" in card
    assert f"`{version.tags['excon.data_hash']}`" in card  # the data and its hash
    assert f"`{version.tags['excon.weights_sha256']}`" in card
    assert "| 0.5000 | 0.5000 [0.4100, 0.5900] (n=3) |" in card  # this version | the interval
    assert "supports 1 of the paper's 4 claims" in card and "- accuracy: supported" in card
    assert "## Intended use" in card and "## Known limitations" in card
    assert "- optim: lr 0.5" in card  # the recipe
    logged = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="model_card.md", dst_path=str(tmp_path / "dl")
    )
    assert Path(logged).read_text() == card

    worse = make_run(tmp_path / "elsewhere" / "r", WORSE_TOP1, seed=22)  # no report beside it
    second = registry.register(cfg, worse, data)
    card = client.get_model_version("excon-card", str(second["version"])).description
    assert "**Gate decision: rejected**" in card and "FAIL test/top1" in card
    assert "intervals over seeds not available" in card
