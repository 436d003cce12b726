"""The page in a real browser: Playwright drives Debian's chromium (installed by .ci/run with
apt-get; never `playwright install`). Upload a scan, wait for the result, check the viewer
drew something, the badge and volume are shown, and the downloaded mask equals predict's."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from mednca.nn.build import load_model  # noqa: E402
from mednca.pipeline.predict import predict_file  # noqa: E402
from mednca.web.app import create_app  # noqa: E402
from mednca.web.models import load_served  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HIPPOCAMPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "Task04_Hippocampus"
#: Where the test leaves its screenshot (the README shows a copy: docs/serve.png).
SCREENSHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "out" / "serve.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    app = create_app(load_served(), root=tmp_path_factory.mktemp("jobs"))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


def scan(tmp_path: Path) -> Path:
    """A shared hippocampus test case when ../shared is there, else a synthetic crop."""
    case = HIPPOCAMPUS / "imagesTr" / "hippocampus_007.nii.gz"
    if case.is_file():
        return case
    data = np.random.default_rng(0).normal(60, 10, (24, 32, 20)).astype(np.float32)
    data[8:15, 10:22, 5:15] += 80
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "crop.nii.gz"))
    return tmp_path / "crop.nii.gz"


def test_upload_segment_view_download(server, tmp_path):
    image = scan(tmp_path)
    requests_elsewhere = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                                                                    "--ignore-gpu-blocklist"])
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.on("request", lambda r: None if r.url.startswith(server) else requests_elsewhere.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        assert "not a medical device" in page.locator("#notice").inner_text()
        page.wait_for_selector("#model option[value=hippocampus]", state="attached")
        page.set_input_files("#file", str(image))
        page.click("#segment")
        page.wait_for_selector("body[data-viewer=ready]", timeout=180_000)
        page.wait_for_timeout(500)
        badge = page.locator("#badge").inner_text()
        assert badge in ("looks fine", "please review")
        assert float(page.locator("#volume").inner_text()) > 0
        pixels = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("L"), dtype=float)
        variance = float(pixels.var())  # what the viewer drew, as the screen shows it
        assert variance > 100, f"the viewer's canvas looks blank (pixel variance {variance:.1f})"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        with page.expect_download() as download:
            page.click("#download-mask")
        download.value.save_as(str(tmp_path / "served.nii.gz"))
        browser.close()
    assert not errors, errors
    assert not requests_elsewhere, requests_elsewhere  # everything came from mednca itself
    predict_file(load_model("hippocampus"), image, tmp_path / "cli.nii.gz", ensemble=8, seed=0)
    served = np.asarray(nib.load(str(tmp_path / "served.nii.gz")).dataobj)
    np.testing.assert_array_equal(served, np.asarray(nib.load(str(tmp_path / "cli.nii.gz")).dataobj))


def test_a_bad_file_shows_the_clis_error(server, tmp_path, capsys):
    from mednca.cli import main

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a scan")
    assert main(["predict", "--model", "hippocampus", str(bad), "-o", str(tmp_path / "m.nii.gz")]) == 1
    cli_error = capsys.readouterr().err.strip().removeprefix("mednca: error: ").replace(str(bad), bad.name)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 600})
        page.goto(server)
        page.wait_for_selector("#model option[value=hippocampus]", state="attached")
        page.set_input_files("#file", str(bad))
        page.click("#segment")
        page.wait_for_selector("#error:not([hidden])", timeout=60_000)
        shown = page.locator("#error").inner_text()
        page.screenshot(path=str(SCREENSHOT.with_name("serve_error.png")))
        assert page.locator("#segment").is_enabled()  # the user can try another file
        browser.close()
    assert shown == cli_error
