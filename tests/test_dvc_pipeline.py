"""dvc.yaml end to end on a tiny copy of the study: every stage runs, a second repro is a no-op,
and `dvc exp run -S method.tau=...` reruns excon's chain (and the report) only."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.storage.conftest import bucket, s3_server  # noqa: F401 - fixtures shared with storage

# Whole pipelines in subprocesses: slower than the suite default when the workers share 2 cores.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ce", "supcon", "excon")
TINY = {
    "data": {"limit_per_class": 30},
    "model": {"width": 0.0625, "proj_dim": 8},
    "method": {"exp_epochs": 0, "grid_images": 2},
    "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "device": "cpu"},
    "probe": {"epochs": 2, "lrs": [0.1]},
    "eval": {
        "eps": [4],
        "pgd_steps": 2,
        "attack_images": 16,
        "corruptions": ["contrast"],
        "severities": [1, 5],
        "shift_images": 8,
        "expl_images": 16,
        "deletion_steps": 4,
        "grid_images": 2,
    },
}


def run(args, cwd, env, timeout=600):
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def stages_run(log):
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    repo = tmp_path_factory.mktemp("study")
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "excon", repo / "excon", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/data/\n/runs/\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], repo, env)
    run([*dvc, "init", "-q"], repo, env)
    shutil.copy(ROOT / ".dvcignore", repo)  # after init, which writes its own
    run([*dvc, "config", "core.site_cache_dir", str(repo / ".dvc" / "site_cache")], repo, env)
    first = run([*dvc, "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "study"], repo, env)
    return repo, env, dvc, first


def test_every_stage_runs(study):
    repo, _, _, first = study
    assert stages_run(first) == {
        "prepare",
        "report",
        "register",
        *(f"pretrain_{m}@0" for m in METHODS),
        *(f"probe@{m}-0" for m in METHODS),
        *(
            f"evaluate_{p}@{m}-0"
            for p in ("calibration", "robustness", "explanations")
            for m in METHODS
        ),
    }
    assert "| top-1 ↑ |" in (repo / "runs/animals/report/report.md").read_text()


def test_registered_champion_explains_an_image(study):
    import numpy as np
    from PIL import Image

    repo, env, _, _ = study
    registered = json.loads((repo / "runs/animals/registered.json").read_text())
    assert [r["run"] for r in registered] == [f"runs/animals/{m}/seed0" for m in METHODS]
    assert registered[0]["decision"] == "promoted"  # the first version has no champion to beat
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(repo / "cat.png")
    out = run(
        ["excon", "explain", "--model", "models:/excon-animals@champion", "cat.png"], repo, env
    )
    assert "cat.png" in out
    assert list((repo / "explanations").glob("*.png"))


def test_second_repro_is_a_no_op(study):
    repo, env, dvc, _ = study
    again = run([*dvc, "repro"], repo, env)
    assert stages_run(again) == set()
    assert "up to date" in run([*dvc, "status"], repo, env)


def test_a_teammate_restores_the_runs_from_the_remote(study, s3_server, bucket, tmp_path):  # noqa: F811
    """Clone A pushes to a real S3 remote (SeaweedFS); clone B pulls: nothing is stale, nothing
    reruns, and the report reads the pulled runs."""
    repo, env, dvc, _ = study

    def use_remote(where: Path) -> None:
        run([*dvc, "remote", "add", "-f", "-d", "team", f"s3://{bucket}/dvc"], where, env)
        run([*dvc, "remote", "modify", "team", "endpointurl", s3_server.endpoint], where, env)
        for key, value in (
            ("access_key_id", s3_server.access_key),
            ("secret_access_key", s3_server.secret_key),
        ):
            run([*dvc, "remote", "modify", "--local", "team", key, value], where, env)

    use_remote(repo)
    run([*dvc, "push"], repo, env)
    teammate = tmp_path / "teammate"
    run(["git", "clone", "-q", str(repo), str(teammate)], tmp_path, env)
    use_remote(teammate)
    run([*dvc, "pull"], teammate, env)
    status = run([*dvc, "status"], teammate, env)
    assert "up to date" in status, status
    assert stages_run(run([*dvc, "repro"], teammate, env)) == set()
    for method in ("ce", "supcon", "excon"):
        assert (teammate / f"runs/animals/{method}/seed0/model.safetensors").is_file()
        assert (teammate / f"runs/animals/{method}/seed0/eval/robustness/metrics.json").is_file()
    runs = [f"runs/animals/{m}/seed0" for m in METHODS]
    report = ["excon", "report", "--runs", *runs, "--out", str(tmp_path / "report")]
    out = run([*report, "--set", "tracking.enabled=false"], teammate, env)
    assert "| top-1 ↑ |" in out


def test_plots_show_renders(study, tmp_path):
    repo, env, dvc, _ = study
    run([*dvc, "plots", "show", "-o", str(tmp_path / "plots")], repo, env)
    page = (tmp_path / "plots" / "index.html").read_text()
    for name in ("robustness (accuracy vs eps)", "reliability (clean test)", "training.csv"):
        assert name in page, name


def test_metrics_show(study):
    repo, env, dvc, _ = study
    shown = run([*dvc, "metrics", "show"], repo, env)
    assert "runs/animals/excon/seed0/metrics.json" in shown and "test/top1" in shown


def _experiments(shown: list) -> dict[float, dict]:
    """tau -> the metrics DVC shows for each queued experiment (from `dvc exp show --json`)."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                tau = params.get("method", {}).get("tau")
                if tau is not None:
                    found[tau] = data.get("metrics") or {}
    return found


def test_queued_experiments_run_and_show_their_metrics(study, tmp_path):
    """`dvc exp run --queue` with a sweep, `dvc queue start`: each experiment reruns only
    excon's chain in its own workspace (the rest comes from the cache) and `dvc exp show`
    lists its metrics; `dvc plots diff` renders the two side by side."""
    repo, env, dvc, _ = study
    run([*dvc, "exp", "run", "--queue", "-S", "method.tau=0.3,0.7"], repo, env)
    run([*dvc, "queue", "start", "-j", "1"], repo, env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run([*dvc, "queue", "status"], repo, env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert "Failed" not in status, status
    out = run([*dvc, "exp", "show", "--json"], repo, env)
    shown = json.JSONDecoder().raw_decode(out[out.index("[") :])[0]
    experiments = _experiments(shown)
    assert set(experiments) >= {0.3, 0.7}, json.dumps(shown)[:3000]
    for tau in (0.3, 0.7):
        probed = experiments[tau]["runs/animals/excon/seed0/metrics.json"]["data"]
        assert 0 <= probed["test/top1"] <= 1, (tau, probed)
    names = run([*dvc, "exp", "ls", "--name-only"], repo, env).split()
    assert len(names) == 2, names
    for name in names:  # method.tau is excon's: only its chain reran, the rest came from cache
        assert stages_run(run([*dvc, "queue", "logs", name], repo, env)) == {
            "pretrain_excon@0",
            "probe@excon-0",
            "evaluate_calibration@excon-0",
            "evaluate_robustness@excon-0",
            "evaluate_explanations@excon-0",
            "report",
            "register",  # the report changed: the registration is re-judged (and skipped)
        }, name
    run([*dvc, "plots", "diff", *names, "-o", str(tmp_path / "diff")], repo, env)
    assert (tmp_path / "diff" / "index.html").is_file()
