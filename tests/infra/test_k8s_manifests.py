"""Offline checks of the Kubernetes manifests in infra/k8s.

Every render target (each overlay, and the GPU smoke test) is built with the venv's kubectl
(kustomize built in) from a temporary copy of the tree with throwaway secret env files, then
validated strictly against the Kubernetes API schemas that kubernetes-validate ships, and
checked for the restricted pod security rules, secret hygiene and ingress lockdown.
"""

import base64
import copy
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipelines.excon_pipeline import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"

# 1.33 is the oldest minor the manifests support (infra/k8s/README.md): its strict schemas
# reject any field added later, so passing there means they apply on 1.33 and newer. 1.37 is
# the newest schema kubernetes-validate 1.37.0 ships (and kubectl's own minor): it catches
# anything removed or changed since.
K8S_VERSIONS = ("1.33.0", "1.37.0")

PLACEHOLDER = "CHANGE_ME"
CREDENTIAL_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
URL_WITH_USERINFO = re.compile(r"://[^/@\s]+:[^/@\s]*@")

# Containers allowed a writable root filesystem, {(workload, container): reason}. Empty on
# purpose: every container here runs read-only with emptyDirs for its scratch paths (postgres:
# /var/run/postgresql and /tmp). Add an entry only with the reason the program cannot.
WRITABLE_ROOT_ALLOWED: dict[tuple[str, str], str] = {}

# How the pipeline's GPU tasks are scheduled (its defaults); the GPU smoke test must match.
# the GPU smoke test must schedule exactly as the pipeline's GPU tasks do by default
GPU_NODE_SELECTOR = DEFAULT_NODE_SELECTOR
(GPU_TOLERATION,) = DEFAULT_TOLERATIONS

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CLUSTER_SCOPED_KINDS = {"Namespace"}


def overlay_dirs():
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def render_targets():
    return [*overlay_dirs(), K8S / "gpu"]


TARGETS = {str(p.relative_to(K8S)): p for p in render_targets()}


def load_kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}


def kustomization_tree(directory: Path):
    """The kustomization in `directory` and every local one it pulls in, as (dir, data)."""
    seen, stack = set(), [directory.resolve()]
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        data = load_kustomization(d)
        yield d, data
        for entry in [*data.get("resources", []), *data.get("components", [])]:
            if (d / entry / "kustomization.yaml").is_file():
                stack.append((d / entry).resolve())


def generator_sources(tree):
    """(kustomization dir, generator, env file) for every secretGenerator env source."""
    for d, data in tree:
        for gen in data.get("secretGenerator", []):
            for env in gen.get("envs", []):
                yield d, gen, d / env


def parse_env(text: str, include_commented: bool = False) -> dict[str, str]:
    pairs = {}
    for raw in text.splitlines():
        line = raw.strip()
        if include_commented:
            line = line.lstrip("#").strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            if re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
                pairs[key] = value
    return pairs


def render(directory: Path) -> list[dict]:
    proc = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{target: (docs, throwaway env values by generator name)} rendered from a temp copy.

    Real env files a developer filled in are never copied, so their values cannot leak into
    test output; each generator source is written from its committed template instead."""
    assert KUBECTL.is_file(), f"kubectl not found next to the interpreter: {KUBECTL}"
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("*.env"))
    out = {}
    for name in TARGETS:
        values = {}
        for _, gen, env in generator_sources(kustomization_tree(copy_root / name)):
            template = parse_env(env.with_name(env.name + ".example").read_text())
            filled = {
                k: secrets.token_hex(12) if PLACEHOLDER in v else v for k, v in template.items()
            }
            env.write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
            values.setdefault(gen["name"], {}).update(filled)
        out[name] = (render(copy_root / name), values)
    return out


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in POD_TEMPLATE_KINDS:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def workloads(docs):
    return [(d, spec) for d in docs if (spec := pod_spec(d)) is not None]


def pod_labels(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels", {})
    template = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return template["template"]["metadata"].get("labels", {})


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def pod_security_problems(name: str, spec: dict) -> list[str]:
    """Everything in a pod spec that breaks our rules: the "restricted" Pod Security Standard
    plus resources, pinned images, a read-only root and no service account token."""
    problems = []
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod runAsNonRoot is not true")
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        if not isinstance(psc.get(field), int) or psc[field] == 0:
            problems.append(f"{name}: pod {field} is not a non-zero number")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken is not false")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"{name}: {host} is set")
    problems += [f"{name}: hostPath volume" for v in spec.get("volumes", []) if "hostPath" in v]
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add") or sc.get("privileged"):
            problems.append(f"{where}: adds capabilities or is privileged")
        if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            problems.append(f"{where}: overrides the pod to run as root")
        if sc.get("readOnlyRootFilesystem") is not True and (name, c["name"]) not in (
            WRITABLE_ROOT_ALLOWED
        ):
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(kind, {}):
                    problems.append(f"{where}: no {res} {kind}")
        if not image_is_pinned(c["image"]):
            problems.append(f"{where}: image {c['image']!r} is not pinned to a tag or digest")
    return problems


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def find(docs, kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# --- rendering and schema validation ----------------------------------------------------


def test_overlays_and_templates_exist():
    assert {p.name for p in overlay_dirs()} >= {"dev", "prod", "kubeflow"}
    for target in render_targets():
        for _, _, env in generator_sources(kustomization_tree(target)):
            assert env.with_name(env.name + ".example").is_file(), f"no template for {env}"


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_strictly(rendered, target):
    docs, _ = rendered[target]
    assert docs
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{target}: {what} invalid for Kubernetes {version}: {e.message}")
        # Nothing may fall into whatever namespace the applying kubeconfig happens to use.
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace"), f"{target}: {what} has no namespace"


def test_strict_validation_rejects_an_unknown_field(rendered):
    docs, _ = rendered["overlays/dev"]
    broken = copy.deepcopy(find(docs, "Deployment", "mlflow"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- pod security -----------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_workloads_meet_pod_security_rules(rendered, target):
    docs, _ = rendered[target]
    found = workloads(docs)
    if target != "overlays/kubeflow":  # that overlay holds the client Secrets only
        assert found, f"{target} renders no workload"
    problems = [
        p for doc, spec in found for p in pod_security_problems(doc["metadata"]["name"], spec)
    ]
    assert problems == []


def test_namespace_enforces_restricted_profile(rendered):
    for target in ("overlays/dev", "overlays/prod"):
        labels = find(rendered[target][0], "Namespace", "excon")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def _case(case_id, mutate, expected):
    return pytest.param(mutate, expected, id=case_id)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        _case("no-memory-limit", lambda c, p: c["resources"]["limits"].pop("memory"), "memory"),
        _case("no-requests", lambda c, p: c["resources"].pop("requests"), "requests"),
        _case("latest-tag", lambda c, p: c.update(image="postgres:latest"), "not pinned"),
        _case("untagged", lambda c, p: c.update(image="postgres"), "not pinned"),
        _case(
            "privilege-escalation",
            lambda c, p: c["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        _case(
            "capabilities-kept",
            lambda c, p: c["securityContext"]["capabilities"].update(drop=[]),
            "drop ALL",
        ),
        _case(
            "writable-root",
            lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False),
            "readOnlyRootFilesystem",
        ),
        _case("container-as-root", lambda c, p: c["securityContext"].update(runAsUser=0), "root"),
        _case("may-run-as-root", lambda c, p: p["securityContext"].pop("runAsNonRoot"), "NonRoot"),
        _case("no-seccomp", lambda c, p: p["securityContext"].pop("seccompProfile"), "seccomp"),
        _case("token-mounted", lambda c, p: p.pop("automountServiceAccountToken"), "automount"),
    ],
)
def test_pod_security_helper_flags_each_violation(rendered, mutate, expected):
    spec = copy.deepcopy(pod_spec(find(rendered["overlays/dev"][0], "StatefulSet", "postgres")))
    assert pod_security_problems("postgres", spec) == []
    mutate(spec["containers"][0], spec)
    problems = pod_security_problems("postgres", spec)
    assert problems and all(expected in p for p in problems), problems


def test_allow_listed_container_may_keep_a_writable_root(rendered, monkeypatch):
    spec = copy.deepcopy(pod_spec(find(rendered["overlays/dev"][0], "StatefulSet", "postgres")))
    spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    monkeypatch.setitem(WRITABLE_ROOT_ALLOWED, ("postgres", "postgres"), "exercised by this test")
    assert pod_security_problems("postgres", spec) == []


# --- secrets ----------------------------------------------------------------------------


def test_committed_tree_holds_no_secret_values():
    for path in (ROOT / "infra").rglob("*"):
        if path.suffix in (".yaml", ".yml") and path.is_file():
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "Secret":
                    assert not doc.get("data") and not doc.get("stringData"), path
                if isinstance(doc, dict):  # generators only from env files, never literals
                    for gen in doc.get("secretGenerator", []):
                        assert not gen.get("literals"), f"{path}: secret literals"


def test_env_templates_hold_placeholders_only():
    templates = sorted(K8S.rglob("*.env.example"))
    assert templates
    for path in templates:
        pairs = parse_env(path.read_text(), include_commented=True)
        for key, value in pairs.items():
            if CREDENTIAL_KEY.search(key):
                assert value == PLACEHOLDER, f"{path}: {key} must be {PLACEHOLDER}"
            assert not URL_WITH_USERINFO.search(value), f"{path}: {key} embeds credentials"


def test_filled_env_files_are_git_ignored():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    sources = [
        env for t in render_targets() for _, _, env in generator_sources(kustomization_tree(t))
    ]
    assert sources
    for env in sources:
        rel = str(env.relative_to(ROOT))
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--", rel])
        assert ignored.returncode == 0, f"{rel} is not git-ignored"
        template = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", "--", rel + ".example"]
        )
        assert template.returncode == 1, f"{rel}.example must be committable"
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--", "infra"], capture_output=True, text=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], "a filled env file is tracked"


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_secrets_come_only_from_generators(rendered, target):
    docs, values = rendered[target]
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    fixed = {}
    for _, data in kustomization_tree(K8S / target):
        default = data.get("generatorOptions", {}).get("disableNameSuffixHash", False)
        for gen in data.get("secretGenerator", []):
            fixed[gen["name"]] = gen.get("options", {}).get("disableNameSuffixHash", default)
    assert set(values) == set(fixed)
    matched = set()
    for gen_name, expected in values.items():
        names = [
            n for n in by_name if n == gen_name or re.fullmatch(rf"{gen_name}-[a-z0-9]{{10}}", n)
        ]
        assert len(names) == 1, f"{target}: secret {gen_name} rendered as {names}"
        assert (names[0] == gen_name) == fixed[gen_name]
        secret = by_name[names[0]]
        assert not secret.get("stringData")
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert decoded == expected
        matched.add(names[0])
    assert matched == set(by_name), f"{target}: Secrets not from a generator"


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod", "overlays/kubeflow"])
def test_pipeline_secrets_keep_their_names_and_keys(rendered, target):
    docs, _ = rendered[target]
    s3 = find(docs, "Secret", "excon-s3")
    tracking = find(docs, "Secret", "excon-mlflow")
    # every key the pipeline's tasks mount as required (a missing one: CreateContainerConfigError)
    from pipelines.excon_pipeline import MLFLOW_KEYS, MLFLOW_SECRET, S3_KEYS, S3_SECRET

    assert (S3_SECRET, MLFLOW_SECRET) == ("excon-s3", "excon-mlflow")
    assert set(S3_KEYS) <= set(s3["data"])
    assert set(MLFLOW_KEYS) <= set(tracking["data"])
    namespace = load_kustomization(K8S / target)["namespace"]
    assert s3["metadata"]["namespace"] == tracking["metadata"]["namespace"] == namespace
    if target == "overlays/kubeflow":  # the pipelines' namespace, not the servers'
        assert namespace != "excon"


# --- references between objects ---------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(rendered, target):
    docs, _ = rendered[target]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pods = [spec for _, spec in workloads(docs)]
    labels_of_pods = [pod_labels(d) for d, _ in workloads(docs)]

    def has_key(kind, ref, key=None):
        obj = objects.get((kind, ref["name"]))
        return obj is not None and (key is None or key in obj.get("data", {}))

    for spec in pods:
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            defined = set()
            for src in c.get("envFrom", []):
                for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if field in src:
                        assert has_key(kind, src[field]), f"{c['name']}: missing {src[field]}"
                        defined |= set(objects[(kind, src[field]["name"])]["data"])
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if field in ref:
                        assert has_key(kind, ref[field], ref[field]["key"]), f"{var['name']}"
                # $(VAR) expands only from variables defined before; else it stays literal.
                for used in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var.get("value", "")):
                    assert used in defined, f"{c['name']}: {var['name']} uses undefined {used}"
                defined.add(var["name"])
            for arg in [*c.get("command", []), *c.get("args", [])]:
                for used in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert used in defined, f"{c['name']}: argument uses undefined {used}"

    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            targets = [
                p
                for spec, labels in zip(pods, labels_of_pods, strict=True)
                if matches(selector, labels)
                for c in spec["containers"]
                for p in c.get("ports", [])
            ]
            names = {p.get("name") for p in targets} | {p["containerPort"] for p in targets}
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in names, f"Service {doc['metadata']['name']}"
        if doc["kind"] == "NetworkPolicy" and doc["spec"]["podSelector"]:
            selector = doc["spec"]["podSelector"]["matchLabels"]
            policy = doc["metadata"]["name"]
            assert any(matches(selector, labels) for labels in labels_of_pods), policy


# --- network policies -------------------------------------------------------------------


def ingress_sources(policy: dict) -> list[dict]:
    return [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])]


def only_source_is_mlflow(policy: dict, mlflow_labels: dict) -> bool:
    sources = ingress_sources(policy)
    return (
        len(policy["spec"].get("ingress", [])) == 1
        and len(sources) == 1
        and set(sources[0]) == {"podSelector"}  # same namespace, no namespace or IP block
        and sources[0]["podSelector"].get("matchLabels", {})
        and matches(sources[0]["podSelector"]["matchLabels"], mlflow_labels)
    )


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_ingress_is_denied_by_default_and_postgres_admits_only_mlflow(rendered, target):
    docs, _ = rendered[target]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
        for p in policies
    ), "no default-deny ingress policy"

    mlflow_labels = pod_labels(find(docs, "Deployment", "mlflow"))
    pg_labels = pod_labels(find(docs, "StatefulSet", "postgres"))
    pg_policies = [
        p
        for p in policies
        if p["spec"]["podSelector"] and matches(p["spec"]["podSelector"]["matchLabels"], pg_labels)
    ]
    assert len(pg_policies) == 1
    assert only_source_is_mlflow(pg_policies[0], mlflow_labels)

    # The check itself can fail: a second source (any pod of a labelled namespace) trips it.
    widened = copy.deepcopy(pg_policies[0])
    widened["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})
    assert not only_source_is_mlflow(widened, mlflow_labels)


# --- MLflow, KFP and GPU contracts ------------------------------------------------------


def test_mlflow_allowed_hosts_admit_the_service_names_only(rendered):
    from mlflow.server.security_utils import is_allowed_host_header

    docs, _ = rendered["overlays/dev"]
    (config,) = [d for d in docs if d["metadata"]["name"].startswith("mlflow-config")]
    allowed = config["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in ("mlflow:5000", "mlflow.excon:5000", "mlflow.excon.svc.cluster.local:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    for host in ("evil.example.com", "mlflow.evil.example.com:5000", "10.0.0.7:5000"):
        assert not is_allowed_host_header(allowed, host), host


# Backend release tags of kubeflow/pipelines (git tag -l '2.*', read 2026-12-03 from a mirror
# of github.com/kubeflow/pipelines, master at 7b70c7b): the SDK's patch releases (2.17.3) have
# none of their own.
KFP_BACKEND_TAGS = {"2.14.0", "2.14.3", "2.14.4", "2.15.0", "2.16.0", "2.16.1", "2.17.0"}


def test_kfp_manifests_match_the_sdk_pin_and_stay_out_of_rendered_targets():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (kfp,) = [
        d.split("==")[1] for d in pyproject["project"]["dependencies"] if d.startswith("kfp==")
    ]
    refs = []
    for path in sorted((K8S / "kubeflow-pipelines").rglob("kustomization.yaml")):
        for entry in yaml.safe_load(path.read_text())["resources"]:
            refs += re.findall(r"\?ref=([^&\s]+)", entry)
    (ref,) = set(refs)
    assert ref in KFP_BACKEND_TAGS, f"KFP manifests at {ref}: no such backend release tag"
    # the backend release of the SDK's minor version: 2.17.3 -> 2.17.0
    assert ref.split(".")[:2] == kfp.split(".")[:2], f"KFP manifests at {ref}, SDK at {kfp}"
    # Rendered targets must build offline: every resource is a local file or directory.
    for target in render_targets():
        for d, data in kustomization_tree(target):
            for entry in [*data.get("resources", []), *data.get("components", [])]:
                assert (d / entry).exists(), f"{d}: {entry} is not local"


def test_gpu_smoke_test_schedules_like_the_pipeline_gpu_tasks(rendered):
    spec = pod_spec(find(rendered["gpu"][0], "Job", "gpu-smoke-test"))
    assert spec["nodeSelector"] == GPU_NODE_SELECTOR
    assert GPU_TOLERATION in spec["tolerations"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
