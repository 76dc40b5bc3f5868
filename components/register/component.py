"""register: each seed's model of one method as a version (@challenger) behind the gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register(
    params: str,
    code_version: str,
    method: str,
    dataset: Input[Dataset],
    model: Input[list[Model]],
    probe_head: Input[list[Model]],
    calibration: Input[list[Artifact]],
    robustness: Input[list[Artifact]],
    explanations: Input[list[Artifact]],
    report: Input[Markdown],
    decision: Output[Markdown],
    promoted_before: str = "",
) -> str:
    """Register every seed's run of one method, seeds ascending (dvc.yaml's order), each gated
    against the registry's current champion. Never cached (it changes the registry). The lists
    come from dsl.Collected over the pipeline's seed loop and are paired by the seed in their
    metadata.

    Args:
        params: the stage's slice of the study parameters (JSON, pipelines.dag.stage_params);
            every other key takes its default or, for how the task runs (device, tracking,
            storage), the pipeline's $EXCON_RUN_SETTINGS.
        code_version: hash of the excon source the stage runs (pipelines.stage_code).
        method: ce | supcon | excon.
        dataset: the prepared dataset (its hash is the versions' lineage).
        model: the method's pretrained runs, one per seed.
        probe_head: their linear probes.
        calibration: their calibration evaluations.
        robustness: their robustness evaluations.
        explanations: their explanation evaluations.
        report: the comparison; it only orders registration after it (as in dvc.yaml).
        decision: per seed, the version and the gate's decision with its reasons.
        promoted_before: the previous register task's answer (this run's registers are chained).

    Returns:
        `models:/<name>/<version>` of the last version this run promoted, here or in a register
        task before it (`promoted_before`); "" when none was. The deploy task runs under
        dsl.If on it: a KFP condition needs a parameter, and the champion this run leaves
        behind is the last promotion of the chain, whichever method made it.
    """
    import json
    import os
    import tempfile
    from pathlib import Path

    from components.runs import pair
    from excon import stages
    from excon.config import loads_config

    settings = json.loads(os.environ.get("EXCON_RUN_SETTINGS") or "[]")
    lists = {
        "model": model,
        "probe_head": probe_head,
        "calibration": calibration,
        "robustness": robustness,
        "explanations": explanations,
    }
    lines, results = [], []
    for seed, run in pair(lists, f"register: {method}").items():
        cfg = loads_config(params, [*settings, f"method.name={method}", f"train.seed={seed}"])
        evals = {p: Path(run[p].path) for p in ("calibration", "robustness", "explanations")}
        with tempfile.TemporaryDirectory() as tmp:
            sources = [Path(run["model"].path), Path(run["probe_head"].path)]
            linked = stages.link_run(Path(tmp) / "run", *sources, evals=evals, copy=True)
            result = stages.register(cfg, linked, Path(dataset.path), source=run["model"].uri)
        title = f"{result['name']} version {result['version']}: {result['decision']}"
        lines += [f"# seed {seed}: {title}", "", *(f"- {r}" for r in result["reasons"]), ""]
        results.append({"seed": seed, **{k: result[k] for k in ("name", "version", "decision")}})
    Path(decision.path).write_text("\n".join(lines))
    decision.metadata.update({"method": method, "versions": results})
    promoted = [r for r in results if r["decision"] == "promoted"]
    if promoted:
        return f"models:/{promoted[-1]['name']}/{int(promoted[-1]['version'])}"
    return promoted_before
