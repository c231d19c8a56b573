"""The server under abuse: bodies capped as they arrive (chunked too), the key and the Host checked
before any body is read, every answer JSON (500s with a request id), names and class names that
used to crash it."""

import asyncio
import json
import logging
import shutil
import socket
import threading
import time
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medclassify.cli import main  # noqa: E402
from medclassify.serve.app import ServeSettings, create_app  # noqa: E402

from .conftest import dicom_bytes  # noqa: E402

CHUNK = 64 * 1024


def local(app) -> TestClient:
    return TestClient(app, base_url="http://localhost")


def asgi_post(app, path: str, headers: dict, chunks: int, chunk: int = CHUNK, host: str = "localhost"):
    """POST an endless chunked body straight into the ASGI app; returns (status, headers, JSON body,
    bytes the app pulled from the client)."""
    pulled = [0, 0]
    sent = []

    async def receive():
        if pulled[1] >= chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled[0] += chunk
        pulled[1] += 1
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    hdrs = [(b"host", host.encode()), (b"transfer-encoding", b"chunked"),
            (b"content-type", b"multipart/form-data; boundary=x")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": hdrs,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {}}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body), pulled[0]


@pytest.fixture(scope="module")
def app(tiny_run):
    return create_app(tiny_run, ServeSettings(max_upload_mb=1))


def test_chunked_body_over_the_cap_is_refused_as_it_arrives(app):
    status, headers, body, pulled = asgi_post(app, "/v1/predict", {}, chunks=2000)  # 131 MB offered
    assert status == 413 and body["error"]["code"] == "file_too_large"
    cap = 1_000_000 + 64_000
    assert cap < pulled <= cap + CHUNK
    assert body["error"]["bytes_read"] == pulled
    assert headers["connection"] == "close"  # the rest is not drained


def test_no_key_is_401_before_any_body_is_read(tiny_run):
    keyed = create_app(tiny_run, ServeSettings(api_key="s3cret"))
    status, headers, body, pulled = asgi_post(keyed, "/v1/predict", {}, chunks=2000)
    assert status == 401 and body["error"]["code"] == "api_key_required" and pulled == 0
    status, _, _, pulled = asgi_post(keyed, "/v1/predict", {"X-API-Key": "wrong"}, chunks=2000)
    assert status == 401 and pulled == 0
    with local(keyed) as c:
        assert c.get("/health").status_code == 200
        for path in ("/", "/openapi.json", "/v1/model", "/static/app.js"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_required", path
        assert c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_foreign_host_is_400_before_the_body(app, tiny_run):
    status, _, body, pulled = asgi_post(app, "/v1/predict", {}, chunks=10, host="evil.example")
    assert status == 400 and body["error"]["code"] == "invalid_host" and pulled == 0
    with TestClient(app, base_url="http://evil.example:8000") as c:
        assert c.get("/health").status_code == 400
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert c.get("/health").status_code == 200, host
    with TestClient(create_app(tiny_run, ServeSettings(allowed_hosts=["scanner.clinic.lan"])),
                    base_url="http://scanner.clinic.lan:8000") as c:
        assert c.get("/health").status_code == 200


def test_trace_is_405_with_allow_and_unknown_paths_are_json(app):
    with local(app) as c:
        r = c.request("TRACE", "/v1/predict")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"
        r = c.get("/v2/nothing")
        assert r.status_code == 404 and r.json()["error"]["status"] == 404


@pytest.mark.parametrize("name", [".", "/", "..", "../../etc/passwd", "a/b/.", "\\", "x" * 500])
def test_odd_filenames_are_classified_under_a_safe_name(app, uploads, name):
    with local(app) as c:
        r = c.post("/v1/predict", files={"file": (name, uploads["png"])})
        assert r.status_code == 200, r.text
        shown = r.json()["image"]["filename"]
        assert "/" not in shown and shown.strip(".") and len(shown) <= 120


ELEMENT = {"WindowCenter": b"\x28\x00\x50\x10DS", "NumberOfFrames": b"\x28\x00\x08\x00IS",
           "RescaleSlope": b"\x28\x00\x53\x10DS"}


def bad_dicom(tag: str) -> bytes:
    """A DICOM whose `tag` holds text where a number belongs (pydicom will not write one, so a valid
    placeholder is written and its bytes replaced)."""
    import io

    import numpy as np
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((32, 32), 900, np.uint16))))
    placeholder = {"WindowCenter": "1357", "NumberOfFrames": "86", "RescaleSlope": "2468"}[tag]
    setattr(ds, tag, placeholder)
    if tag == "WindowCenter":
        ds.WindowWidth = "400"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    element = ELEMENT[tag] + len(placeholder).to_bytes(2, "little") + placeholder.encode()  # explicit VR little endian
    data = buf.getvalue()
    assert data.count(element) == 1
    return data.replace(element, element[: -len(placeholder)] + b"oops"[: len(placeholder)])


@pytest.mark.parametrize("tag", ["WindowCenter", "NumberOfFrames", "RescaleSlope"])
def test_dicom_with_nonsense_tags_is_4xx_json(app, tag):
    with local(app) as c:
        r = c.post("/v1/predict", files={"file": ("scan.dcm", bad_dicom(tag))})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["code"] == "unreadable_image" and len(r.json()["error"]["message"]) > 10
        assert c.post("/v1/predict", files={"file": ("scan.png", dicom_bytes(None))}).status_code == 422


def test_non_latin1_class_names_travel_encoded(tiny_run, tmp_path, uploads):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    info["classes"] = ["病变", "normal 🙂"]
    (run / "run.json").write_text(json.dumps(info))
    with local(create_app(run)) as c:
        r = c.post("/v1/predict", files={"file": ("a.png", uploads["png"])})
        assert r.status_code == 200 and r.json()["label"] in info["classes"]
        r = c.post("/v1/explain", files={"file": ("a.png", uploads["png"])})
        assert r.status_code in (200, 501), r.text
        if r.status_code == 200:
            encoded = r.headers["x-class-encoded"]
            assert encoded.startswith("UTF-8''") and unquote(encoded[7:]) in info["classes"]
            assert "x-class" not in r.headers  # never a raw non-ASCII header
            assert info["classes"][int(r.headers["x-class-index"])] == unquote(encoded[7:])


def test_unexpected_errors_are_500_json_with_a_logged_request_id(tiny_run, uploads, caplog):
    broken = create_app(tiny_run)

    def explode(_upload):
        raise RuntimeError("a bug")

    broken.state.model.predict = explode
    with local(broken) as c, caplog.at_level(logging.ERROR, logger="medclassify.serve"):
        r = c.post("/v1/predict", files={"file": ("a.png", uploads["png"])})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "internal_error" and err["request_id"] == r.headers["x-request-id"]
        assert err["request_id"] in err["message"] and "a bug" not in err["message"]
        assert any(err["request_id"] in rec.getMessage() for rec in caplog.records)
        assert c.get("/health").status_code == 200


def test_model_card_shows_no_paths(tiny_run, small_dataset):
    with local(create_app(tiny_run)) as c:
        text = c.get("/v1/model").text
    assert str(tiny_run) not in text and str(small_dataset) not in text and str(tiny_run.parent) not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tiny_run):
    """A real uvicorn server (1 MB cap) on loopback, for what only the wire shows."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_run, ServeSettings(max_upload_mb=1)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_chunked_upload_on_the_wire_gets_its_413_and_keep_alive_survives_bad_requests(live, uploads):
    import http.client
    import select

    sock = socket.create_connection(("127.0.0.1", live))
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
    chunk = b"%x\r\n" % CHUNK + b"\0" * CHUNK + b"\r\n"
    sent, answer = 0, b""
    try:
        while sent < 2000 * CHUNK and not answer:
            sock.sendall(chunk)
            sent += CHUNK
            if select.select([sock], [], [], 0)[0]:
                answer = sock.recv(65536)
        if not answer:
            answer = sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        answer = answer or sock.recv(65536)
    try:
        sock.settimeout(5)
        while not answer.endswith(b"}"):  # the rest of the JSON answer, if it came in pieces
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    read = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["bytes_read"]
    # uvicorn hands the app what it has buffered: at most its 64 KiB high-water mark plus one 256 KiB read
    assert 1_064_000 < read <= 1_064_000 + (64 + 256) * 1024
    assert sent < 2000 * CHUNK  # the server stopped reading: the client could not send all 131 MB
    # One keep-alive connection: a good, a bad, a good request; none of them closes it.
    conn = http.client.HTTPConnection("127.0.0.1", live, timeout=30)
    bodies = [("a.png", uploads["png"]), (".", b"not an image"), ("b.png", uploads["truncated"]), ("c.png", uploads["png"])]
    statuses = []
    for name, data in bodies:
        body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode() + b"\"\r\n\r\n"
                + data + b"\r\n--x--\r\n")
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "multipart/form-data; boundary=x"})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    sock_before = conn.sock
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200 and conn.sock is sock_before
    assert statuses == [200, 415, 422, 200]


def test_api_key_file_and_command_line_warning(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDCLASSIFY_API_KEY", raising=False)
    empty = tmp_path / "key"
    empty.write_text("\n")
    assert main(["serve", str(tiny_run), "--api-key-file", str(empty), "--port", "1"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["serve", str(tiny_run), "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "Cannot read the API key file" in capsys.readouterr().err
    from medclassify.commands.serve import _api_key

    empty.write_text("s3cret\n")
    assert _api_key(None, empty) == "s3cret"
    assert _api_key("k", None) == "k" and "visible" in capsys.readouterr().err
    monkeypatch.setenv("MEDCLASSIFY_API_KEY", "from-env")
    assert _api_key(None, None) == "from-env"
