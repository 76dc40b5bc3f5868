"""`excon serve` as a real process on loopback, over HTTP: v2 infer, v1 explain and predict,
every bad input of issue 18, health, readiness, metrics. The references are independent of the
server: MLflow's own pyfunc for probabilities, captum's LayerGradCam run image by image for the
batched Grad-CAM."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from fastapi import FastAPI, Request
from PIL import Image

from tests.serve.conftest import CLASSES, MAX_BATCH, b64, png_bytes

RNG = np.random.default_rng(11)
SHAPES = [(40, 50, 3), (32, 32, 3), (70, 20, 3)]  # any size: resized as at training
IMAGES = [RNG.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]


def infer_path(server) -> str:
    return f"/v2/models/{server.name}/infer"


def explain_path(server) -> str:
    return f"/v1/models/{server.name}:explain"


def probabilities(answer: dict) -> np.ndarray:
    (out,) = answer["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def pyfunc(registered):
    import mlflow

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        return mlflow.pyfunc.load_model(registered.uri)
    finally:
        mlflow.set_tracking_uri(old)


def test_infer_gives_the_pyfuncs_probabilities_for_png_jpeg_and_arrays(server, pyfunc):
    encoded = [b64(png_bytes(im)) for im in IMAGES]
    status, answer = server.post(
        infer_path(server),
        {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": encoded}]},
    )
    assert status == 200, answer
    probs = probabilities(answer)
    expected = np.concatenate([np.asarray(pyfunc.predict(im[None])) for im in IMAGES])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(probs[0], probs[1], atol=1e-4)  # the answer depends on the image

    batch = np.stack([IMAGES[1], IMAGES[1][::-1]])  # UINT8 [N, H, W, C], flat data
    status, answer = server.post(
        infer_path(server),
        {"inputs": [{"name": "image", "shape": list(batch.shape), "datatype": "UINT8",
                     "data": batch.ravel().tolist()}]},
    )  # fmt: skip
    assert status == 200, answer
    np.testing.assert_allclose(probabilities(answer), pyfunc.predict(batch), atol=1e-5)

    jpeg = png_bytes(IMAGES[0], "JPEG")
    with Image.open(io.BytesIO(jpeg)) as im:
        decoded = np.asarray(im.convert("RGB"))
    status, answer = server.post(
        f"/v1/models/{server.name}:predict", {"instances": [{"b64": b64(jpeg)}]}
    )
    assert status == 200, answer
    np.testing.assert_allclose(answer["predictions"], pyfunc.predict(decoded[None]), atol=1e-5)


def reference_gradcam(registered, image: np.ndarray, target: int) -> np.ndarray:
    """captum's LayerGradCam on one image at the model's layer, min-max normalised: what the
    server's batched map of that image must equal."""
    from captum.attr import LayerAttribution, LayerGradCam

    from excon.saliency import resolve_layer
    from excon.serve import model as serving

    net, meta = serving.load_registered(registered.uri, tracking_uri=registered.tracking_uri)
    x = serving.preprocess(meta, image[None])
    layer = resolve_layer(net.encoder, serving.gradcam_layer(meta))
    cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=False)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[0, 0].detach()
    cam = cam - cam.min()
    return (cam / (cam.max() + 1e-8)).numpy()


def test_explain_is_one_batch_equal_to_gradcam_image_by_image(server, registered):
    body = {
        "instances": [
            {"b64": b64(png_bytes(IMAGES[0]))},
            {"array": IMAGES[1].tolist(), "class": "ship"},
            {"b64": b64(png_bytes(IMAGES[2])), "class": 2},
        ],
        "top_k": 5,
    }
    status, answer = server.post(explain_path(server), body)
    assert status == 200, answer
    explanations = answer["explanations"]
    assert len(explanations) == 3
    for i, e in enumerate(explanations):
        tops = [t["prob"] for t in e["top"]]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert e["layer"] == "layer2[1].conv2"  # ResNet-18 at 32 px: the reference's layer
        explained = {0: e["top"][0]["class"], 1: "ship", 2: CLASSES[2]}[i]
        assert e["explained_class"] == explained
        heat = np.asarray(e["gradcam"])
        assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1
        want = reference_gradcam(registered, IMAGES[i], CLASSES.index(explained))
        np.testing.assert_allclose(heat, want, atol=2e-3)
        with Image.open(io.BytesIO(base64.b64decode(e["overlay_png"]))) as im:
            assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 224


def png_header_only(width: int, height: int) -> bytes:
    """A PNG header (IHDR) claiming width x height whose pixel data (IDAT) is cut off after two
    bytes: decoding it fails, reading its header does not."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 4096) + b"IDAT\x78\x9c"


def flat_png(side: int) -> str:
    return b64(png_bytes(np.zeros((side, side), dtype=np.uint8)))


def huge_png() -> str:
    return b64(png_bytes(np.zeros((8000, 8000), dtype=np.uint8)))  # ~80 kB: zeros compress


def v1(*instances) -> dict:
    return {"instances": list(instances)}


def v2_uint8(shape: list[int]) -> dict:
    data = [0] * int(np.prod(shape))
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8", "data": data}]}


GOOD = {"b64": b64(png_bytes(IMAGES[1]))}
BAD = {
    "not an image": ("explain", v1({"b64": b64(b"GIF? no, plain text")}), "not a PNG or JPEG"),
    "zero bytes": ("explain", v1({"b64": ""}), "empty (0 bytes)"),
    "truncated PNG": ("explain", v1({"b64": b64(png_bytes(IMAGES[0])[:200])}), "not a readable"),
    "4 channels (array)": (
        "explain", v1({"array": np.zeros((16, 16, 4), np.uint8).tolist()}), "4 channels"
    ),
    "2 channels (v2 UINT8)": ("infer", v2_uint8([1, 16, 16, 2]), "2 channels"),
    "1x1": ("explain", v1({"b64": b64(png_bytes(np.zeros((1, 1, 3), np.uint8)))}), "too small"),
    "8000x8000": (
        "infer",
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [huge_png()]}]},
        "8000 x 8000 px is too large",
    ),
    "8000x8000, header only": (
        "explain", v1({"b64": b64(png_header_only(8000, 8000))}), "8000 x 8000 px is too large"
    ),  # refused from its header: decoding it would say "truncated"
    "pixels over the request's budget": (
        "explain", v1(*[{"b64": flat_png(4096)}] * 3), "image 2: the request's images exceed"
    ),  # two 4096 x 4096 images fill it: the third is refused before it is decoded
    "batch over the limit": ("explain", v1(*[GOOD] * (MAX_BATCH + 1)), "the limit is 4"),
    "v2 batch over the limit": ("infer", v2_uint8([MAX_BATCH + 1, 8, 8, 3]), "the limit is 4"),
    "malformed JSON (v1)": ("explain", b'{"instances": [', "Unrecognized request format"),
    "malformed JSON (v2)": ("infer", b'{"inputs": [', "malformed request body"),
    "not base64": ("explain", v1({"b64": "@@@"}), "not valid base64"),
    "values over 255": ("explain", v1({"array": np.full((8, 8, 3), 300).tolist()}), "0..255"),
    "unknown class": ("explain", v1({**GOOD, "class": "unicorn"}), "unknown class 'unicorn'"),
    "no instances": ("explain", {"images": []}, "instances"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_with_one_line_and_the_server_keeps_serving(server, case):
    route, body, fragment = BAD[case]
    path = infer_path(server) if route == "infer" else explain_path(server)
    status, raw, _ = server.request("POST", path, body)
    assert status == 400, raw
    message = json.loads(raw)["error"]
    assert fragment in message and "\n" not in message, message
    status, answer = server.post(explain_path(server), v1(GOOD))
    assert status == 200 and answer["explanations"], answer


def test_health_readiness_and_prometheus_metrics(server):
    assert server.request("GET", "/v2/health/live")[0] == 200
    assert server.request("GET", "/v2/health/ready")[0] == 200
    status, raw, _ = server.request("GET", f"/v1/models/{server.name}")
    assert status == 200 and json.loads(raw)["ready"] is True
    assert server.request("GET", f"/v2/models/{server.name}/ready")[0] == 200
    assert server.request("GET", "/v2/models/nope/ready")[0] == 404
    server.post(explain_path(server), v1(GOOD))
    status, raw, headers = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = raw.decode()
    count = re.search(rf'request_explain_seconds_count{{model_name="{server.name}"}} (\d+)', text)
    assert count and int(float(count.group(1))) >= 1
    assert f'request_predict_seconds_count{{model_name="{server.name}"}}' in text


def test_root_is_the_page_for_browsers_and_liveness_for_others(server):
    status, raw, _ = server.request("GET", "/")
    assert status == 200 and json.loads(raw) == {"status": "alive"}
    status, raw, headers = server.request("GET", "/", headers={"Accept": "text/html"})
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = raw.decode()
    assert f">{server.name}<" in page and "{{MODEL}}" not in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


async def echo(request: Request) -> dict:
    return {"read": len(await request.body())}


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_body_over_the_limit_is_refused_before_it_is_read():
    """The server's middleware on a bare app (64 MiB bodies are slow to send in a test)."""
    from fastapi.testclient import TestClient

    from excon.serve.server import BodyLimit

    app = FastAPI()
    app.add_api_route("/echo", echo, methods=["POST"])
    app.add_middleware(BodyLimit, max_bytes=10)
    client = TestClient(app)
    assert client.post("/echo", content=b"x" * 10).json() == {"read": 10}
    refused = client.post("/echo", content=b"x" * 11)
    assert refused.status_code == 413
    assert refused.json() == {"error": "request body of 11 bytes: the limit is 10 bytes"}


def test_a_model_that_is_not_registered_stops_the_server_in_one_line(registered, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "excon.cli", "serve", "--model", "models:/nosuch@champion",
           "--set", f"tracking.uri={registered.tracking_uri}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("excon serve: error:")]
    assert "models:/nosuch@champion: cannot load the model" in line
