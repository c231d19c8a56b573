"""The web page in a real headless Chromium (Debian's), driven by Playwright: upload a real chest
X-ray, see the class and its probability bars; upload a text file, see a readable error."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import shared_dataset



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_run):
    import uvicorn

    from medclassify.serve.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1000, "height": 1100})
        pg.goto(server_url)
        yield pg
        browser.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    keep = os.environ.get("MEDCLASSIFY_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / name)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    return out


def test_real_xray_is_not_classified_by_a_model_of_generated_shapes(page, tmp_path):
    """The served run was trained on generated shapes: a real chest X-ray is out of its distribution,
    so the page says so instead of giving a class."""
    xray = sorted((shared_dataset("chest_xray_fullres_sample") / "PNEUMONIA").glob("*.jpeg"))[0]
    page.wait_for_function("document.getElementById('model-line').textContent.includes('version')")
    page.set_input_files("#file", str(xray))
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.inner_text("#label") == "Not like the training images"
    assert page.is_visible("#ood") and "does not look like the images the model was trained on" in page.inner_text("#ood")
    assert page.is_hidden("#bars") and page.inner_text("#confidence") == ""
    _screenshot(page, tmp_path, "page-xray-ood.png")


def test_image_like_the_training_data_shows_class_bars_and_notice(page, small_dataset, tiny_run, tmp_path):
    from medclassify.inference.predictor import Predictor

    candidates = sorted((Path(small_dataset) / "test").rglob("*.png"))
    # about 5% of such images fall past the guard's threshold by design: take one that does not
    image = next(p.path for p in Predictor(tiny_run).predict_paths(candidates) if p.in_distribution)
    assert "Research use only" in page.inner_text("#notice")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('version')")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.is_hidden("#ood")
    label = page.inner_text("#label")
    assert label in ("lesion", "normal")
    rows = page.query_selector_all("#bars .bar-row")
    assert sorted(r.get_attribute("data-class") for r in rows) == ["lesion", "normal"]
    assert page.is_visible("#preview") and "%" in page.inner_text("#confidence")
    assert page.is_hidden("#error")
    # The Grad-CAM toggle is offered only when the explain module is installed.
    from medclassify.serve.service import explain_available

    assert page.is_visible("#heat-toggle-box") == explain_available()
    if explain_available():
        page.check("#heat-toggle")
        page.wait_for_selector("#heatmap:not([hidden])", timeout=30_000)
        # drawn over the uploaded image at its own resolution, so it lines up with the preview
        sizes = page.evaluate("[...['heatmap', 'preview']].map(i => document.getElementById(i).naturalWidth)")
        assert sizes[0] > 0 and sizes[0] == sizes[1], sizes
    _screenshot(page, tmp_path, "page-result.png")


def test_text_file_shows_a_readable_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    message = page.inner_text("#error")
    assert "notes.txt" in message and "not a PNG, JPEG, BMP, TIFF or DICOM image" in message
    assert page.is_hidden("#result")
    _screenshot(page, tmp_path, "page-error.png")
