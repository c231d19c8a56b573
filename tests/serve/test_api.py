import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from medclassify.cli import main  # noqa: E402
from medclassify.serve.app import ServeSettings, create_app, is_loopback  # noqa: E402
from medclassify.serve.service import explain_available  # noqa: E402


def local(app) -> TestClient:
    """A client that calls the app as a loopback browser would (Host: localhost)."""
    return TestClient(app, base_url="http://localhost")


@pytest.fixture(scope="module")
def client(tiny_run):
    with local(create_app(tiny_run, ServeSettings(max_megapixels=50))) as c:
        yield c


def post(client, data: bytes, name: str = "scan.png", field: str = "file", path: str = "/v1/predict"):
    return client.post(path, files={field: (name, data, "application/octet-stream")})


@pytest.mark.parametrize("kind", ["png", "jpeg", "bmp", "tiff", "rgb_jpeg", "png16", "palette", "dicom"])
def test_every_accepted_format_is_classified(client, uploads, kind):
    r = post(client, uploads[kind], f"scan.{kind}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in ("lesion", "normal")
    assert set(body["probabilities"]) == {"lesion", "normal"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["probability"] == max(body["probabilities"].values())
    assert isinstance(body["abstain"], bool) and body["cascade_path"] is None
    assert len(body["model"]["version"]) == 12 and body["timing_ms"]["total"] > 0
    assert body["image"]["width"] == 64


def test_upload_gives_the_same_answer_as_the_predictor(client, tiny_run, uploads, tmp_path):
    from medclassify.inference.predictor import Predictor

    f = tmp_path / "scan.png"
    f.write_bytes(uploads["png"])
    expected = Predictor(tiny_run).predict_file(f).probabilities
    got = post(client, uploads["png"]).json()["probabilities"]
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind, status, code", [
    ("text", 415, "unsupported_type"),
    ("zero", 400, "empty_file"),
    ("truncated", 422, "unreadable_image"),
    ("fake_png", 422, "unreadable_image"),
    ("bomb", 413, "too_many_pixels"),
    ("dicom_no_pixels", 422, "no_pixel_data"),
])
def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(client, uploads, kind, status, code):
    r = post(client, uploads[kind], f"upload.{kind}")
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == status and len(err["message"]) > 10
    assert client.get("/health").json()["status"] == "ok"
    assert post(client, uploads["png"]).status_code == 200


def test_wrong_form_field_and_no_multipart(client, uploads):
    r = post(client, uploads["png"], field="image")
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file_field"
    assert "'file'" in r.json()["error"]["message"]
    r = client.post("/v1/predict", content=uploads["png"], headers={"content-type": "image/png"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_multipart"


def test_upload_size_cap(tiny_run, uploads):
    with local(create_app(tiny_run, ServeSettings(max_upload_mb=0.001))) as c:
        r = post(c, uploads["bmp"])  # about 5 kB
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"


def test_api_key_is_required_when_set(tiny_run, uploads):
    with local(create_app(tiny_run, ServeSettings(api_key="s3cret"))) as c:
        assert post(c, uploads["png"]).status_code == 401
        assert c.get("/v1/model").status_code == 401
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/predict", files={"file": ("a.png", uploads["png"])}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        wrong = c.post("/v1/predict", files={"file": ("a.png", uploads["png"])}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401


def test_serve_refuses_other_addresses_without_a_key(tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("MEDCLASSIFY_API_KEY", raising=False)
    assert main(["serve", str(tiny_run), "--host", "0.0.0.0"]) == 2
    assert "API key" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_model_card_health_openapi_and_page(client):
    info = client.get("/v1/model").json()
    assert info["classes"] == ["lesion", "normal"] and info["kind"] == "run"
    assert "not a diagnosis" in info["intended_use"].lower() or "diagnos" in info["intended_use"].lower()
    assert "val" in info["metrics"] and "accuracy" in info["metrics"]["val"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/health"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text and "cdn" not in page.text.lower()
    assert client.get("/static/app.js").status_code == 200


def test_explain_answers_png_or_a_clear_501(client, uploads):
    r = post(client, uploads["png"], path="/v1/explain")
    if explain_available():
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    else:
        assert r.status_code == 501 and r.json()["error"]["code"] == "explain_unavailable"
        assert client.get("/v1/model").json()["explain"] is False


@pytest.mark.skipif(not explain_available(), reason="the explain module is not installed")
def test_explain_is_drawn_on_the_upload_at_its_own_size_and_says_when_the_map_is_flat(client, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    from medclassify.explain import GradCAM

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (61, 97), dtype=np.uint8)).save(buf, format="PNG")
    r = post(client, buf.getvalue(), path="/v1/explain")
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (97, 61)  # the upload's size, not the model's 32 px
    assert r.headers["X-Localised-Evidence"] in ("true", "false")

    original = GradCAM.explain

    def flat_map(self, image, target=None):
        expl = original(self, image, target)
        expl.heatmap = np.full_like(expl.heatmap, 0.5)
        return expl

    monkeypatch.setattr(GradCAM, "explain", flat_map)
    r = post(client, buf.getvalue(), path="/v1/explain")
    assert r.status_code == 200 and r.headers["X-Localised-Evidence"] == "false"
    # a flat map adds nothing: the picture is the upload itself, not a tinted copy
    shown = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=np.int16)
    assert np.abs(shown - np.asarray(Image.open(buf), dtype=np.int16)).max() <= 1


def _slow(model, seconds):
    original = model.predict

    def slow(path):
        time.sleep(seconds)
        return original(path)

    model.predict = slow


def test_concurrency_is_bounded_and_excess_requests_get_503(tiny_run, uploads):
    app = create_app(tiny_run, ServeSettings(workers=1, queue=0))
    _slow(app.state.model, 0.4)
    codes = []
    with local(app) as c:
        def one():
            codes.append(post(c, uploads["png"]).status_code)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(200) >= 1 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        assert post(c, uploads["png"]).status_code == 200


def test_request_timeout_answers_504(tiny_run, uploads):
    app = create_app(tiny_run, ServeSettings(timeout_s=0.2))
    _slow(app.state.model, 1.0)
    with local(app) as c:
        r = post(c, uploads["png"])
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert c.get("/health").status_code == 200


def test_serving_a_cascade_reports_its_path(tiny_run, uploads, tmp_path, capsys):
    spec = tmp_path / "cascade.yaml"
    spec.write_text(f"stages:\n  first:\n    run: {tiny_run}\n    route: {{lesion: second}}\n"
                    f"  second:\n    run: {tiny_run}\n")
    with local(create_app(spec)) as c:
        body = post(c, uploads["png"]).json()
        steps = body["cascade_path"]
        assert steps[0]["stage"] == "first"
        assert [s["stage"] for s in steps] == (["first", "second"] if steps[0]["label"] == "lesion" else ["first"])
        assert body["label"] == steps[-1]["label"]
        assert body["probability"] == pytest.approx(__import__("math").prod(s["probability"] for s in steps))
        info = c.get("/v1/model").json()
        assert info["kind"] == "cascade" and set(info["stages"]) == {"first", "second"}
        heat = post(c, uploads["png"], path="/v1/explain")
        assert heat.status_code == (200 if explain_available() else 501), heat.text
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("{lesion: second}", "{tumour: second}"))
    assert main(["serve", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tumour" in err[0]
