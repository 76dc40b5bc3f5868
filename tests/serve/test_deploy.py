"""excon.serve.deploy without a cluster: what `apply` decides for a given cluster state (a pure
function, checked on the bodies the API server would hold), and that the real `kubernetes`
client against an address where nothing listens fails in one line. The bodies themselves are
validated against KServe's CRD schema in tests/infra/test_serving_manifests.py."""

from __future__ import annotations

import copy

import pytest

from excon.serve.deploy import DeployError, apply, inference_service, merge_patch, plan
from tests.serve.conftest import free_port


def as_served(body: dict) -> dict:
    """`body` as the API server returns it: defaults and status added."""
    out = copy.deepcopy(body)
    out["metadata"].update(uid="0e6f", resourceVersion="42", generation=1)
    out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    predictor = out["spec"]["predictor"]
    predictor["containers"][0]["imagePullPolicy"] = "IfNotPresent"  # a defaulted field
    predictor["timeout"] = 60
    out["status"] = {"url": "http://excon.excon.example.com"}
    return out


V3 = inference_service("models:/excon-animals/3", model_version="3")
V4 = inference_service("models:/excon-animals/4", model_version="4")


def test_nothing_there_is_created_and_the_same_body_is_left_alone():
    assert plan(None, V3) == "create"
    assert plan(as_served(V3), V3) == "unchanged"  # server defaults are not a difference


def test_a_new_version_is_a_patch_that_repins_the_model():
    current = as_served(V3)
    assert plan(current, V4) == "patch"
    patch = merge_patch(current, V4)
    assert patch["spec"]["predictor"]["containers"][0]["args"][2] == "models:/excon-animals/4"
    assert patch["metadata"]["annotations"]["excon.io/model-version"] == "4"
    assert "canaryTrafficPercent" not in patch["spec"]["predictor"]


def test_a_canary_is_set_then_cleared_by_the_next_full_rollout():
    canary = inference_service(
        "models:/excon-animals/4", model_version="4", canary_traffic_percent=10
    )
    assert plan(as_served(V3), canary) == "patch"
    assert merge_patch(as_served(V3), canary)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    current = as_served(canary)
    assert plan(current, canary) == "unchanged"
    assert plan(current, V4) == "patch"  # the same version, all traffic: the canary must go
    assert merge_patch(current, V4)["spec"]["predictor"]["canaryTrafficPercent"] is None


def test_a_gpu_or_an_image_change_is_a_patch():
    current = as_served(V3)
    assert (
        plan(current, inference_service("models:/excon-animals/3", model_version="3", gpus=1))
        == "patch"
    )
    assert (
        plan(
            current, inference_service("models:/excon-animals/3", model_version="3", image="r/x:2")
        )
        == "patch"
    )


def test_an_unreachable_cluster_is_one_line():
    from kubernetes import client

    config = client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config.retries = 0
    api = client.CustomObjectsApi(client.ApiClient(config))
    with pytest.raises(
        DeployError, match=r"InferenceService excon/excon: cluster unreachable"
    ) as e:
        apply(V3, api)
    assert "\n" not in str(e.value)
