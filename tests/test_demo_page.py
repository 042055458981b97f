"""The demo page in real headless Chromium: type into it, click, check what it renders, save a screenshot.

Chromium (Debian's `chromium` package) is driven over the Chrome DevTools Protocol with websocket-client;
keystrokes go in with Input.insertText and clicks with Input.dispatchMouseEvent at the button's centre,
as a user's would. Skips cleanly where chromium or websocket-client is missing. The screenshot lands in
test-artifacts/demo-page.png (its path is printed).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_integration import uvicorn_server

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    # no network but loopback: any host other than 127.0.0.1 fails to resolve (offline, as air-gapped)
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1500",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")


class DevTools:
    """A minimal synchronous CDP client for one page target."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []  # events received while waiting for answers (e.g. Network.*)

    def send(self, method: str, **params: Any) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        for _ in range(10_000):  # skip events until our answer (bounded)
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise RuntimeError(f"{method}: no answer")

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, limit: int = 300) -> Any:
        """Poll a JS expression until truthy (bounded: limit x 50 ms)."""
        for _ in range(limit):
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"never true: {expression}")

    def type_into(self, selector: str, text: str) -> None:
        """Focus a field, select its content and type over it."""
        self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.focus(); e.select(); })()"
        )
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    devtools = None
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):  # chromium writes its DevTools port here once listening
            if port_file.is_file() and port_file.read_text().strip():
                break
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}")
            time.sleep(0.1)
        else:
            pytest.fail("chromium did not open its DevTools port")
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        devtools.send("Page.enable")
        devtools.send("Runtime.enable")
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_demo_page_runs_every_task_and_draws_attention(tiny_bundle: Path, tmp_path: Path) -> None:
    with uvicorn_server(tiny_bundle) as url, chromium(tmp_path) as page:
        page.send("Page.navigate", url=url + "/")
        page.wait_for("document.body && document.body.dataset.ready === 'true'")
        assert page.eval("document.getElementById('model').value") == "tiny"
        assert "2 layers" in page.eval("document.getElementById('model-info').textContent")

        # the example buttons fill the form in either language
        page.click(".examples[data-task='fill-mask'] button[data-language='ko']")
        assert page.eval("document.getElementById('fill-mask-text').value") == "대한민국의 수도는 [MASK]이다."
        page.click(".examples[data-task='nsp'] button[data-language='en']")
        assert page.eval("document.getElementById('nsp-second').value") == "I bought some milk."

        # fill-mask: top_k 3 -> three predictions, each with its filled-in sequence
        page.type_into("#fill-mask-text", "the cat [MASK] the park.")
        page.type_into("#fill-mask-topk", "3")
        page.click("#fill-mask-run")
        page.wait_for("document.getElementById('fill-mask-result').dataset.state === 'done'")
        assert page.eval("document.querySelectorAll('#fill-mask-result li.prediction').length") == 3
        assert "the cat" in page.eval(
            "document.querySelector('#fill-mask-result li.prediction .muted').textContent"
        )

        # a text without [MASK]: the API's 422 reason is shown
        page.type_into("#fill-mask-text", "no mask at all")
        page.click("#fill-mask-run")
        page.wait_for("document.getElementById('fill-mask-result').dataset.state === 'error'")
        assert "no [MASK]" in page.eval("document.querySelector('#fill-mask-result .error').textContent")
        page.type_into("#fill-mask-text", "a dog [MASK] a book.")
        page.click("#fill-mask-run")
        page.wait_for("document.getElementById('fill-mask-result').dataset.state === 'done'")

        # next sentence
        page.type_into("#nsp-first", "the teacher helps the city.")
        page.type_into("#nsp-second", "a student visits the garden.")
        page.click("#nsp-run")
        page.wait_for("document.getElementById('nsp-result').dataset.state === 'done'")
        assert "follow" in page.eval("document.querySelector('#nsp-result .verdict').textContent")

        # classify: the bundle's labels with scores
        page.type_into("#classify-text", "this movie is wonderful.")
        page.click("#classify-run")
        page.wait_for("document.getElementById('classify-result').dataset.state === 'done'")
        labels = page.eval(
            "[...document.querySelectorAll('#classify-result .label')].map(e => e.textContent)"
        )
        assert sorted(labels) == ["negative", "positive"]

        # attention: one small heatmap per layer and head, the selected one drawn large, and not blank
        page.type_into("#attention-text", "the bird follows the quiet mountain.")
        page.click("#attention-run")
        page.wait_for("document.getElementById('attention-result').dataset.state === 'done'")
        assert (
            page.eval("document.querySelectorAll('#attention-grid canvas.head-map').length") == 4
        )  # 2 layers x 2 heads
        page.click("#attention-grid figure[data-head='1'] canvas")
        page.wait_for("document.getElementById('attention-caption').textContent === 'layer 1, head 2'")
        inked = page.eval(
            "(() => { const c = document.getElementById('attention-canvas'); "
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; "
            "for (let i = 0; i < d.length; i += 4) if (d[i] < 200 && d[i + 2] > d[i]) n++; return n; })()"
        )
        assert inked > 1000, f"the heatmap looks blank ({inked} blue pixels)"

        page.eval("window.scrollTo(0, 0)")
        shot = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "demo-page.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"\nscreenshot: {path}")
        assert path.stat().st_size > 10_000


def test_demo_page_picks_a_model_or_routes_by_language(ko_en_bundles: Path, tmp_path: Path) -> None:
    with uvicorn_server(ko_en_bundles) as url, chromium(tmp_path) as page:
        page.send("Page.navigate", url=url + "/")
        page.wait_for("document.body && document.body.dataset.ready === 'true'")
        options = page.eval("[...document.querySelectorAll('#model option')].map(o => o.textContent)")
        assert options == ["auto (by language)", "en (English)", "ko (Korean)"]
        assert page.eval("document.getElementById('model').value") == ""

        def classify_answered_by() -> str:
            page.click("#classify-run")
            page.wait_for("document.getElementById('classify-result').dataset.state === 'done'")
            text = page.eval("document.querySelector('#classify-result .answered').textContent")
            page.eval("document.getElementById('classify-result').dataset.state = ''")
            return text

        page.click(".examples[data-task='classify'] button[data-language='ko']")
        assert classify_answered_by() == "answered by ko"  # auto: Hangul goes to the Korean model
        page.click(".examples[data-task='classify'] button[data-language='en']")
        assert classify_answered_by() == "answered by en"
        page.eval(
            "const s = document.getElementById('model'); s.value = 'ko'; s.dispatchEvent(new Event('change'))"
        )
        assert "Korean" in page.eval("document.getElementById('model-info').textContent")
        assert classify_answered_by() == "answered by ko"  # picked: the English text goes to ko


def test_api_docs_render_offline(tiny_bundle: Path, tmp_path: Path) -> None:
    """/docs (Swagger UI) and /redoc show the operations with no network: every asset comes from the app."""
    with uvicorn_server(tiny_bundle) as url, chromium(tmp_path) as page:
        page.send("Network.enable")
        page.send("Page.navigate", url=url + "/docs")
        page.wait_for("document.querySelectorAll('.opblock').length >= 8", limit=600)
        paths = page.eval("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
        assert {"/fill-mask", "/next-sentence", "/classify", "/attention", "/v1/models"} <= set(paths)

        page.send("Page.navigate", url=url + "/redoc")
        page.wait_for(
            "document.querySelectorAll('[data-section-id^=\\'operation/\\']').length >= 8", limit=600
        )
        assert "Predict the token behind each [MASK]" in page.eval("document.body.innerText")
        requested = {
            event["params"]["request"]["url"]
            for event in page.events
            if event["method"] == "Network.requestWillBeSent"
        }
        elsewhere = {u for u in requested if not u.startswith((url, "data:", f"blob:{url}"))}
        assert f"{url}/docs-assets/swagger-ui-bundle.js" in requested and not elsewhere, elsewhere
