"""`excon serve`: a KServe model server for a registered excon model, with its explanations.

One `kserve.Model` (`ExConModel`) run by `kserve.ModelServer`:
- `POST /v2/models/<name>/infer` (Open Inference Protocol v2): input `image`, BYTES `[N]` of
  base64 PNG/JPEG or UINT8 `[N, H, W, C]` -> output `probabilities`, FP32 `[N, K]`;
- `POST /v1/models/<name>:explain` (KServe v1): `{"instances": [{"b64": ...} | {"array": ...},
  optional "class"], "top_k": 5}` -> per image the top-k classes and the Grad-CAM map of the
  predicted (or named) class as an array and as a base64 PNG overlay, one batched Grad-CAM;
- `POST /v1/models/<name>:predict` (v1): the same instances -> `{"predictions": [[p, ...]]}`;
- KServe's own health (`/v2/health/live|ready`, `/v1/models/<name>`) and `/metrics`;
- `GET /` in a browser: a page to upload an image and see the top-5 classes and the overlay
  (any other client still gets KServe's liveness answer there).
Bad input is HTTP 400 (413 for a body over the limit) with `{"error": "<one line>"}`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from excon.serve import model as serving
from excon.serve.images import (
    BadInput,
    Limits,
    PixelBudget,
    check_array_shape,
    check_batch,
    decode_base64,
    decode_image,
    full_shape,
    nested_shape,
    to_uint8,
)

DEFAULT_TOP_K = 5
DEFAULT_LIMITS = Limits()
INPUT, OUTPUT = "image", "probabilities"


@dataclass
class Batch:
    """A parsed request: images (uint8 [H, W, C], any sizes), per-image class to explain
    (None: the predicted one), how many top classes to return, and the v2 request id."""

    images: list[np.ndarray]
    targets: list[int | None]
    top_k: int = DEFAULT_TOP_K
    v2_id: str | None = None


def model_name_of(uri: str) -> str:
    """`models:/excon-animals@champion` or `models:/excon-animals/3` -> `excon-animals`."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@[^/]+|/[^/]+)?/?", uri)
    return m.group(1) if m else "excon"


class ExConModel(Model):
    """The registered model behind KServe's v1/v2 routes. Thin: parsing is `_parse_*`, the
    science is excon.serve.model."""

    def __init__(
        self, name: str, uri: str, limits: Limits = DEFAULT_LIMITS, device: str = "cpu"
    ) -> None:
        super().__init__(name)
        self.uri, self.limits, self.device = uri, limits, device
        # One thread runs the network: Grad-CAM hooks live on the model's modules, so two
        # explanations at once would see each other's activations; the event loop stays free
        # for health checks and metrics meanwhile. (torch uses every core inside one call.)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="excon-model")

    def load(self) -> bool:
        """Resolve the URI once (MLflow's pyfunc API), then answer ready."""
        self.net, self.meta = serving.load_registered(self.uri, self.device)
        self.names = serving.class_names(self.meta)
        self.layer = serving.gradcam_layer(self.meta)
        self.ready = True
        return self.ready

    async def preprocess(self, payload: Any, headers: dict | None = None) -> Batch:
        # decoding runs on the default thread pool: a large PNG would stall the event loop
        return await asyncio.get_running_loop().run_in_executor(None, self._parse, payload)

    def _parse(self, payload: Any) -> Batch:
        budget = PixelBudget(self.limits)
        try:
            if isinstance(payload, InferRequest):
                return self._parse_v2(payload, budget)
            if isinstance(payload, dict):
                return self._parse_v1(payload, budget)
            raise BadInput("expected a JSON object")
        except BadInput as e:
            raise InvalidInput(str(e)) from None

    async def predict(self, batch: Batch, headers: dict | None = None) -> Any:
        probs = await self._run(serving.predict_proba, self.net, self.meta, batch.images)
        if batch.v2_id is None:
            return {"predictions": probs.tolist()}
        out = InferOutput(OUTPUT, list(probs.shape), "FP32")
        out.set_data_from_numpy(probs.astype(np.float32))
        return InferResponse(batch.v2_id, self.name, [out])

    async def explain(self, batch: Batch, headers: dict | None = None) -> dict:
        return await self._run(self._explain, batch)

    def _explain(self, batch: Batch) -> dict:
        """One batched Grad-CAM, then each image's answer (overlays encoded off the loop)."""
        probs, maps = serving.explain_images(self.net, self.meta, batch.images, batch.targets)
        return {
            "explanations": [self._explanation(batch, i, probs, maps) for i in range(len(probs))]
        }

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except ValueError as e:  # the shared functions' input checks
            raise InvalidInput(str(e)) from None

    def _explanation(self, batch: Batch, i: int, probs: np.ndarray, maps: np.ndarray) -> dict:
        heat = maps[i, 0]
        image = serving.resize_like_training(self.meta, batch.images[i])
        buf = io.BytesIO()
        serving.overlay(image, heat).save(buf, format="PNG")
        explained = batch.targets[i] if batch.targets[i] is not None else int(probs[i].argmax())
        return {
            "top": serving.top_classes(self.meta, probs[i], batch.top_k),
            "explained_class": self.names[explained],
            "layer": self.layer,
            "gradcam": np.round(heat.astype(np.float64), 4).tolist(),  # float32 prints 17 digits
            "overlay_png": base64.b64encode(buf.getvalue()).decode("ascii"),
        }

    def _parse_v1(self, body: dict, budget: PixelBudget) -> Batch:
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise BadInput('expected {"instances": [...]}: a list of images')
        check_batch(len(instances), self.limits)
        images, targets = [], []
        for i, inst in enumerate(instances):
            inst = inst if isinstance(inst, dict) else {"array": inst}
            if "b64" in inst:
                images.append(self._decode(i, decode_base64(i, inst["b64"]), budget))
            elif "array" in inst:
                images.append(self._array(i, inst["array"], budget))
            else:
                raise BadInput(f'image {i}: expected {{"b64": ...}} or {{"array": ...}}')
            targets.append(self._target(i, inst.get("class")))
        return Batch(images, targets, self._top_k(body.get("top_k", DEFAULT_TOP_K)))

    def _parse_v2(self, request: InferRequest, budget: PixelBudget) -> Batch:
        if len(request.inputs) != 1:
            raise BadInput(f'expected one input named "{INPUT}", got {len(request.inputs)}')
        tensor = request.inputs[0]
        shape = [int(s) for s in tensor.shape]
        check_batch(shape[0] if shape else 0, self.limits)
        c = self.meta["in_channels"]
        if tensor.datatype == "BYTES":
            data = list(tensor.data if tensor.data is not None else [])
            if len(shape) != 1 or len(data) != shape[0]:
                raise BadInput(f"BYTES input: expected shape [N] with N items, got {shape}")
            images = [self._decode(i, decode_base64(i, d), budget) for i, d in enumerate(data)]
        elif tensor.datatype == "UINT8":
            check_array_shape(0, shape[1:], c, self.limits)  # one shape for the whole batch
            budget.take(0, shape[0] * shape[1] * shape[2])
            images = list(to_uint8(0, tensor.data, [shape[0], *full_shape(shape[1:], c)]))
        else:
            raise BadInput(f"input datatype {tensor.datatype}: expected BYTES or UINT8")
        return Batch(images, [None] * len(images), v2_id=request.id or "")

    def _decode(self, i: int, data: bytes, budget: PixelBudget) -> np.ndarray:
        return decode_image(i, data, self.meta["in_channels"], self.limits, budget)

    def _array(self, i: int, value: Any, budget: PixelBudget) -> np.ndarray:
        shape = nested_shape(value)
        c = self.meta["in_channels"]
        check_array_shape(i, shape, c, self.limits)
        budget.take(i, shape[0] * shape[1])
        return to_uint8(i, value, full_shape(shape, c))

    def _target(self, i: int, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, str) and value in self.names:
            return self.names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.names):
            return value
        last = len(self.names) - 1
        raise BadInput(f"image {i}: unknown class {value!r} (a class name or 0..{last})")

    def _top_k(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"top_k must be a positive integer, got {value!r}")
        return min(value, len(self.names))


def page_html(name: str) -> str:
    text = resources.files("excon.serve").joinpath("static/index.html").read_text("utf-8")
    return text.replace("{{MODEL}}", name)


def install_routes(app: Any, name: str, limits: Limits) -> None:
    """The page at `GET /`, a body-size limit and one-line 400s for malformed bodies, added to
    KServe's FastAPI app before `ModelServer.start` adds its own routes. KServe offers no hook
    for extra routes: its app is the module-level `kserve.model_server.app` that uvicorn loads
    by name, so routes added to it here come first (ours at `/` wins over KServe's liveness
    route, which the page handler still answers for non-browser clients)."""
    page = page_html(name)

    async def root(request: Request) -> Any:
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(page)
        return {"status": "alive"}  # what KServe's own `/` (DataPlane.live) answers

    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"malformed request body: {first.get('msg', 'invalid')}" + (
            f" at {where}" if where else ""
        )
        return JSONResponse({"error": msg}, status_code=400)

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(RequestValidationError, malformed)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over the limit gets 413 before its
    body is read (KServe reads and parses whole bodies). Clients here always send
    Content-Length; a chunked body is bounded by the per-image checks instead."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_bytes:
                msg = f"request body of {int(length)} bytes: the limit is {self.max_bytes} bytes"
                await JSONResponse({"error": msg}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(
    uri: str,
    port: int = 8080,
    name: str | None = None,
    device: str = "cpu",
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Load the model at `uri` once, then serve it on `port` until SIGTERM/SIGINT."""
    from kserve import ModelServer
    from kserve.model_server import app

    model = ExConModel(name or model_name_of(uri), uri, limits, device)
    model.load()
    install_routes(app, model.name, limits)
    # gRPC off: the InferenceService routes HTTP to one port, and a second fixed port (8081)
    # would collide between servers on one host (the tests run several).
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])
