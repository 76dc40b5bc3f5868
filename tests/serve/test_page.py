"""The page at `GET /` in headless Chromium, driven over the Chrome DevTools Protocol (a
websocket; `websockets` comes with kserve): choose an image file, the page posts it to the
explain route, lists the top-5 classes and draws the Grad-CAM overlay. The test checks the
canvas is painted and the classes are the server's own answer for that file.

Set EXCON_SERVE_SCREENSHOT=docs/img/serve_page.png to keep the screenshot (docs/serving.md)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import blob_images
from tests.serve.conftest import b64, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: install Debian's `chromium` (.ci/run does) to run the page test",
)


class Tab:
    """One page over CDP: `call` sends a command and returns its result; events are skipped."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page: {expression} still false after {timeout} s")


@pytest.fixture(scope="module")
def tab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tab]:
    """Headless Chromium with a DevTools port chosen by the browser (read from its profile)."""
    profile = tmp_path_factory.mktemp("chromium")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--window-size=900,640",
           f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"chromium gave no DevTools port (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        from websockets.sync.client import connect

        with connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
            yield Tab(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


PAINTED = """(() => {
  const c = document.getElementById("overlay");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let opaque = 0; const colours = new Set();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] === 255) opaque++;
    colours.add((d[i] >> 4) * 256 + (d[i + 1] >> 4) * 16 + (d[i + 2] >> 4));
  }
  return {opaque, pixels: c.width * c.height, colours: colours.size};
})()"""
TOP = "Array.from(document.querySelectorAll('#top tbody tr td:first-child'), td => td.textContent)"


def test_the_page_explains_an_uploaded_image(server, tab, tmp_path):
    images, _ = blob_images(1, 6, 64, 3, seed=5)
    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes(images[3]))
    tab.call("Page.enable")
    tab.call("Page.navigate", url=server.url + "/")
    tab.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
    assert tab.eval("document.body.dataset.state") == "idle"
    assert tab.eval(PAINTED)["opaque"] == 0  # a blank canvas so far

    root = tab.call("DOM.getDocument")["root"]["nodeId"]
    node = tab.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    tab.call("DOM.setFileInputFiles", nodeId=node, files=[str(upload)])
    state = tab.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    assert state == "done", tab.eval("document.getElementById('error').textContent")

    painted = tab.eval(PAINTED)
    assert painted["opaque"] == painted["pixels"]  # the overlay covers the whole canvas
    assert painted["colours"] > 20  # a heat map over an image, not a flat fill
    status, answer = server.post(
        f"/v1/models/{server.name}:explain", {"instances": [{"b64": b64(upload.read_bytes())}]}
    )
    assert status == 200
    assert tab.eval(TOP) == [t["class"] for t in answer["explanations"][0]["top"]]

    shot = base64.b64decode(tab.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG")
    keep = os.environ.get("EXCON_SERVE_SCREENSHOT")
    if keep:
        from excon.artifacts import atomic_path

        with atomic_path(Path(keep)) as tmp:
            tmp.write_bytes(shot)
