"""The FastAPI app: REST API (/v1/predict, /v1/explain, /v1/model, /health, /openapi.json) and the
web page at /. Every bad request gets a 4xx JSON body {"error": {"status", "code", "message"}} and
the server keeps serving (guard.py is the front door: host, key and body cap before any
body is read, and the one exception boundary); work runs in a bounded thread pool behind an admission semaphore, under a
per-request timeout."""

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import PredictOptions
from ..version import __version__
from ..data.formats import UnreadableImage
from .guard import LOOPBACK_HOSTS, Guard, error_response
from .service import ExplainUnavailable, ServedModel
from .uploads import SUPPORTED, Upload, UploadRejected, check_upload, parse_multipart, release_memory

STATIC = Path(__file__).parent / "static"
FORM_FIELD = "file"
MULTIPART_SLACK = 64_000  # form boundaries and part headers on top of the file itself
TRIM_AFTER_PIXELS = 4_000_000  # hand memory back after decoding anything this large


@dataclass
class ServeSettings:
    max_upload_mb: float = 20.0
    max_megapixels: float = 50.0
    timeout_s: float = 30.0
    workers: int = 2  # requests computed at once
    queue: int = 32  # requests admitted to wait beyond those
    queue_wait_s: float = 10.0  # how long an admitted request may wait for a free worker slot
    api_key: Optional[str] = None
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides the loopback ones; "*": any


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: int
    code: str
    message: str
    request_id: Optional[str] = None
    bytes_read: Optional[int] = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_MEANING = {400: "Bad request: Host not allowed, malformed form, empty file", 401: "API key missing or wrong",
            413: "Upload over the size cap, or image over the pixel cap", 415: "Not multipart/form-data, or not a "
            f"{SUPPORTED} image", 422: "Form field missing, or the image cannot be read", 500: "Unexpected server error "
            "(with a request id)", 501: "Grad-CAM not available", 503: "At the request limit (see Retry-After)",
            504: "The request took longer than the timeout"}


def _declared(*codes: int) -> dict:
    out = {}
    for c in codes:
        out[c] = {"model": ErrorBody, "description": _MEANING[c]}
        if c == 503:
            out[c]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FORM_FIELD],
    "properties": {FORM_FIELD: {"type": "string", "format": "binary", "description": f"{SUPPORTED} image"}}}}}}}


SPEC_ENV = "MEDCLASSIFY_SERVE_SPEC"


def app_from_environment() -> FastAPI:
    """The app factory each server process calls when `serve --processes N` runs N of them
    (uvicorn's workers); the serve command leaves what to build in SPEC_ENV."""
    import json
    import os

    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["target"], ServeSettings(**spec["settings"]), PredictOptions(**spec["options"]))


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers


def class_headers(label: str, prob: float, classes: list[str]) -> dict[str, str]:
    """The heatmap's class in headers that survive any name: X-Class only when it is plain ASCII,
    always X-Class-Encoded as an RFC 8187 value (UTF-8''percent-encoded), and X-Class-Index when the
    class is one of the model card's (a cascade's last stage may use its own names)."""
    out = {"X-Class-Encoded": "UTF-8''" + quote(label, safe=""), "X-Probability": f"{prob:.6f}"}
    if label in classes:
        out["X-Class-Index"] = str(classes.index(label))
    if label.isascii() and label.isprintable():
        out["X-Class"] = label
    return out


def create_app(target: Union[str, Path, ServedModel], settings: Optional[ServeSettings] = None,
               options: Optional[PredictOptions] = None) -> FastAPI:
    settings = settings or ServeSettings()
    model = target if isinstance(target, ServedModel) else ServedModel(target, options)
    runner = _Runner(settings)
    app = FastAPI(title="medclassify", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=_lifespan(runner), description=_description(settings))
    app.state.model = model
    app.state.settings = settings
    _add_error_handlers(app)
    _add_guard(app, settings, runner.max_bytes)
    # Declares the key in the schema; the Guard has already checked it by the time a route runs.
    keyed = [Depends(APIKeyHeader(name="X-API-Key", auto_error=False))] if settings.api_key else []
    _add_predict_route(app, model, runner, keyed)
    _add_explain_route(app, model, runner, keyed)
    _add_info_routes(app, model, runner, keyed)
    _add_page(app)
    return app


def _description(settings: ServeSettings) -> str:
    return ("Medical image classification (research use only, not a diagnosis). "
            f"Upload a {SUPPORTED} image as multipart field '{FORM_FIELD}'. Every error is JSON "
            "{\"error\": {\"status\", \"code\", \"message\"}}."
            + (" Every path but /health needs the X-API-Key header." if settings.api_key else ""))


class _Runner:
    """Work runs in a bounded thread pool behind an admission semaphore, under a per-request timeout;
    `state` holds the load figures /health reports."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.max_bytes = int(settings.max_upload_mb * 1e6)
        self.max_pixels = int(settings.max_megapixels * 1e6)
        self.pools: list[ThreadPoolExecutor] = []  # made on first use, so the app can be started again after a stop
        self.state = {"admitted": 0, "served": 0, "rejected_busy": 0}
        self.admission: Optional[asyncio.Semaphore] = None  # made inside the running event loop

    def shutdown(self) -> None:
        while self.pools:
            self.pools.pop().shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[[], Any]) -> Any:
        settings = self.settings
        if self.admission is None:
            self.admission = asyncio.Semaphore(settings.workers + settings.queue)
        sem = self.admission
        if sem.locked():
            self.state["rejected_busy"] += 1
            raise Rejected(503, "busy", "The server is at its request limit; try again in a moment.", {"Retry-After": "1"})
        async with sem:
            self.state["admitted"] += 1
            if not self.pools:
                self.pools.append(ThreadPoolExecutor(settings.workers, thread_name_prefix="medclassify-serve"))
            fut = asyncio.wrap_future(self.pools[0].submit(fn))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), settings.timeout_s)
            except asyncio.TimeoutError:
                raise Rejected(504, "timeout", f"The request took longer than {settings.timeout_s:g} s.") from None
            finally:
                self.state["served"] += 1

    def with_upload(self, data: bytes, name: Optional[str], work: Callable[[Upload], Any]) -> Any:
        """Runs in a worker thread: validate the bytes, then work on them (nothing touches the disk)."""
        try:
            upload = check_upload(data, name, self.max_bytes, self.max_pixels)
        except UploadRejected as e:
            raise Rejected(e.status, e.code, e.message) from None
        try:
            return upload, work(upload)
        except UnreadableImage as e:
            raise Rejected(422, "unreadable_image", f"{upload.filename}: {e.reason}.") from None
        finally:
            if upload.pixels >= TRIM_AFTER_PIXELS:
                release_memory()


def _lifespan(runner: _Runner):
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        runner.shutdown()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Rejected)
    async def _rejected(_req, exc: Rejected):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(422, "invalid_request", f"Invalid request: {first.get('msg')} at "
                                                      f"{'.'.join(map(str, first.get('loc', [])))}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


def _add_guard(app: FastAPI, settings: ServeSettings, max_bytes: int) -> None:
    hosts = [*LOOPBACK_HOSTS, *settings.allowed_hosts]
    app.add_middleware(Guard, max_body=max_bytes + MULTIPART_SLACK, limit_mb=settings.max_upload_mb,
                       api_key=settings.api_key, allowed_hosts=hosts)


async def _read_upload(request: Request) -> tuple[bytes, Optional[str]]:
    body = await request.body()  # already read and capped by the Guard
    try:
        filename, data = parse_multipart(body, request.headers.get("content-type", ""), FORM_FIELD)
    except UploadRejected as e:
        raise Rejected(e.status, e.code, e.message) from None
    return data, filename


def _add_predict_route(app: FastAPI, model: ServedModel, runner: _Runner, keyed: list) -> None:
    @app.post("/v1/predict", dependencies=keyed, openapi_extra=_UPLOAD_BODY,
              responses=_declared(400, 401, 413, 415, 422, 500, 503, 504),
              summary="Classify one image (multipart field 'file'); with a cascade, also the path through its stages.")
    async def predict(request: Request):
        t0 = time.perf_counter()
        data, name = await _read_upload(request)
        upload, result = await runner.run(lambda: runner.with_upload(data, name, lambda up: _timed(model.predict, up)))
        body, compute_ms = result
        body.update({"model": {"version": model.version, "kind": model.kind},
                     "image": {"filename": upload.filename, "format": upload.format, "width": upload.width,
                               "height": upload.height},
                     "timing_ms": {"predict": round(compute_ms, 2), "total": round((time.perf_counter() - t0) * 1e3, 2)}})
        return body


_PNG_HEADERS = {h: {"schema": {"type": "string"}, "description": d} for h, d in (
    ("X-Class-Encoded", "the class, RFC 8187 (UTF-8''percent-encoded)"), ("X-Class-Index", "the class's index"),
    ("X-Probability", "its probability"),
    ("X-Localised-Evidence", "'false' when the map is flat: no localised evidence for the class in this image"))}


def _add_explain_route(app: FastAPI, model: ServedModel, runner: _Runner, keyed: list) -> None:
    @app.post("/v1/explain", dependencies=keyed, response_class=Response, openapi_extra=_UPLOAD_BODY,
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "headers": _PNG_HEADERS, "description": "Grad-CAM heatmap over the uploaded image"},
                         **_declared(400, 401, 413, 415, 422, 500, 501, 503, 504)},
              summary="Grad-CAM heatmap of the predicted class over the uploaded image at its own resolution (PNG).")
    async def explain(request: Request):
        if not model.can_explain:
            raise Rejected(501, "explain_unavailable",
                           "Heatmaps are not available in this medclassify version (the Grad-CAM module is not installed).")
        data, name = await _read_upload(request)
        try:
            _upload, (png, label, prob, localised) = await runner.run(
                lambda: runner.with_upload(data, name, lambda up: model.explain_png(up)))
        except ExplainUnavailable:
            raise Rejected(501, "explain_unavailable", "Heatmaps are not available in this medclassify version.") from None
        headers = {**class_headers(label, prob, list(model.classes)), "X-Localised-Evidence": "true" if localised else "false"}
        return Response(png, media_type="image/png", headers=headers)


def _add_info_routes(app: FastAPI, model: ServedModel, runner: _Runner, keyed: list) -> None:
    @app.get("/v1/model", dependencies=keyed, responses=_declared(400, 401, 500), summary="Classes, metrics with confidence intervals, intended use.")
    async def model_info():
        return model.info()

    @app.get("/health", responses=_declared(400, 500), summary="Liveness and load (open without the API key).")
    async def health():
        return {"status": "ok", "version": model.version, "medclassify": __version__, **runner.state}


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _timed(fn: Callable[[Path], dict], path: Path) -> tuple[dict, float]:
    t = time.perf_counter()
    out = fn(path)
    return out, (time.perf_counter() - t) * 1e3


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
