"""--mode=app in a real browser: the system's headless Chromium (Debian's `chromium`, driven by
Playwright; no browser is ever downloaded) uploads a photo, brushes a stroke, restores and
downloads, and the download must be `model.restore` of the same photo and holes.

Set RDBM_APP_SCREENSHOT=docs/app.png to save the page with its restored photo (the README's).
"""
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

CHROMIUM = "/usr/bin/chromium"
# No network, no profile state, nothing the browser would fetch or update on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
_MISSING = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(_MISSING), reason=f"--mode=app's browser test needs "
                       f"{', '.join(_MISSING)}: pip install -e \".[app,app-test]\""),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"--mode=app's browser test needs Chromium at {CHROMIUM} (Debian: "
                       "apt-get install chromium)"),
]
H, W = 48, 64  # the test photo: small, so the CPU restores it in seconds
ROW, COLS = 24, (10, 54)  # the brushed stroke, in photo pixels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """`--mode=app` on the trained run, on a free local port, in a child process: its URL."""
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rdbm_jax.main", "--config=configs/demo.py:tiny",
         f"--workdir={trained_run}", "--mode=app", f"--config.app.port={port}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Ctrl-C's default action in the child, even where this run inherited SIGINT ignored (a
        # background job): the teardown's SIGINT must stop the server, not wait 30 s for a kill.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("rdbm_jax app:"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not ready.wait(0.5):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        url = f"http://127.0.0.1:{port}"
        # the address the app says is the one it binds by default (app.host = 127.0.0.1)
        assert f" at {url} " in [ln for ln in lines if ln.startswith("rdbm_jax app:")][0]
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Gradio closes its server on Ctrl+C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(tmp_path):
    """A fresh headless Chromium page (fresh profile) that may reach only this machine."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            accept_downloads=True, viewport={"width": 1400, "height": 1000})
        outside: list[str] = []

        def local_only(route):
            if re.match(r"^(https?|wss?)://(127\.0\.0\.1|localhost)[:/]", route.request.url) or \
                    route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", local_only)
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        context.close()
        assert not outside, f"the page asked for outside resources: {outside[:5]}"


def _status(tab, prefix: str, action) -> str:
    """The status line after `action()`, once it has changed and starts with `prefix` or
    "error:"."""
    before = tab.locator("#status input").input_value()
    action()
    tab.wait_for_function(
        "([p, before]) => { const e = document.querySelector('#status input');"
        " return !!e && e.value !== before &&"
        " (e.value.startsWith(p) || e.value.startsWith('error:')); }",
        arg=[prefix, before], timeout=180_000)
    return tab.locator("#status input").input_value()


def _download(tab, elem_id: str, path: str) -> np.ndarray:
    with tab.expect_download() as download:
        tab.locator(f"#{elem_id} a").first.click()
    download.value.save_as(path)
    return np.asarray(Image.open(path))


def _photo() -> np.ndarray:
    """A built-in photograph (scikit-image's astronaut), shrunk; no pure white pixel in it."""
    from skimage import data

    img = Image.fromarray(data.astronaut()).crop((96, 0, 416, 240)).resize((W, H), Image.LANCZOS)
    return np.minimum(np.asarray(img), 250)


def test_upload_brush_restore_download_in_chromium(server, page, trained_run, tmp_path):
    tab = page
    tab.goto(server)
    tab.locator("#status input").wait_for()
    upload = tab.locator("#upload input[type=file]")
    # Bad input first: one visible line, and the page keeps working after it.
    (tmp_path / "notes.png").write_text("not a photo\n")
    bad = str(tmp_path / "notes.png")
    assert _status(tab, "loaded", lambda: upload.set_input_files(bad)) == (
        "error: not an image file (cannot identify format): notes.png")
    tab.get_by_text("not an image file").first.wait_for()  # the warning toast

    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    good = str(tmp_path / "photo.png")
    assert _status(tab, "loaded", lambda: upload.set_input_files(good)).startswith(
        f"loaded photo.png ({W}x{H})")

    # Nothing painted and no white in the photo: one line, nothing restored.
    assert _status(tab, "restored", tab.locator("#restore").click) == (
        "error: no holes to fill: paint over what should go with the brush, or upload a photo "
        "whose holes are pure white")

    # Brush a horizontal stroke: photo pixels → page pixels through the editor's zoom.
    tab.locator("#editor button[aria-label=Brush]").click()
    zoom = float(re.search(r"(\d+)%", tab.locator("#editor").inner_text()).group(1)) / 100
    box = tab.locator("#editor canvas").first.bounding_box()
    left = box["x"] + (box["width"] - W * zoom) / 2  # the photo is centred in the canvas
    top = box["y"] + (box["height"] - H * zoom) / 2
    tab.mouse.move(left + (COLS[0] + 0.5) * zoom, top + (ROW + 0.5) * zoom)
    tab.mouse.down()
    for col in range(COLS[0], COLS[1] + 1):
        tab.mouse.move(left + (col + 0.5) * zoom, top + (ROW + 0.5) * zoom)
    tab.mouse.up()
    nfe = tab.locator("#nfe input[type=number]")
    nfe.fill("2")
    nfe.press("Enter")
    status = _status(tab, "restored", tab.locator("#restore").click)
    assert status.startswith(f"restored {W}x{H}: RDBM ") and "(NFE 2, η 0)" in status, status

    got = _download(tab, "result", str(tmp_path / "restored.png"))
    holes = _download(tab, "mask", str(tmp_path / "mask.png")) > 127
    # The holes are the stroke: its centre line painted, nothing beyond the brush's radius (3 photo
    # pixels, app.brush_radius) plus one anti-aliased pixel.
    from rdbm_jax.app import brush_radius

    reach = brush_radius(H, W) + 1
    assert holes[ROW, COLS[0]:COLS[1] + 1].all()
    band = np.zeros_like(holes)
    band[ROW - reach:ROW + reach + 1, COLS[0] - reach:COLS[1] + reach + 1] = True
    assert not (holes & ~band).any()
    tab.locator("#rdbm img").wait_for()
    shot = os.environ.get("RDBM_APP_SCREENSHOT")
    if shot:
        tab.screenshot(path=shot, full_page=True)

    import rdbm_jax

    mu = photo.copy()
    mu[holes] = 255  # the holes filled as training filled them (white)
    want = rdbm_jax.load(trained_run).restore(mu, num_steps=2, eta=0.0,
                                              mask=holes.astype(np.float32))
    np.testing.assert_array_equal(got, want)
