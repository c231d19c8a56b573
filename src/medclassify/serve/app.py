"""The FastAPI app: REST API (/v1/predict, /v1/explain, /v1/model, /health, /openapi.json) and the
web page at /. Every bad request gets a 4xx JSON body {"error": {"status", "code", "message"}} and
the server keeps serving; work runs in a bounded thread pool behind an admission semaphore, under a
per-request timeout."""

import asyncio
import contextlib
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..data.images import UnreadableImage
from .service import ExplainUnavailable, ServedModel
from .uploads import SUPPORTED, Upload, UploadRejected, check_upload

STATIC = Path(__file__).parent / "static"
FORM_FIELD = "file"


@dataclass
class ServeSettings:
    max_upload_mb: float = 20.0
    max_megapixels: float = 50.0
    timeout_s: float = 30.0
    workers: int = 2  # requests computed at once
    queue: int = 32  # requests admitted to wait beyond those
    queue_wait_s: float = 10.0  # how long an admitted request may wait for a free worker slot
    api_key: Optional[str] = None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)


SPEC_ENV = "MEDCLASSIFY_SERVE_SPEC"


def app_from_environment() -> FastAPI:
    """The app factory each server process calls when `serve --processes N` runs N of them
    (uvicorn's workers); the serve command leaves what to build in SPEC_ENV."""
    import json
    import os

    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["target"], ServeSettings(**spec["settings"]), **spec["model"])


def create_app(target: Union[str, Path, ServedModel], settings: Optional[ServeSettings] = None, **model_kw) -> FastAPI:
    settings = settings or ServeSettings()
    model = target if isinstance(target, ServedModel) else ServedModel(target, **model_kw)
    max_bytes = int(settings.max_upload_mb * 1e6)
    max_pixels = int(settings.max_megapixels * 1e6)
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="medclassify-serve")
    state = {"admitted": 0, "served": 0, "rejected_busy": 0}
    admission: dict[str, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="medclassify", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Medical image classification (research use only, not a diagnosis). "
                              f"Upload a {SUPPORTED} image as multipart field '{FORM_FIELD}'.")
    app.state.model = model
    app.state.settings = settings

    class Rejected(Exception):
        def __init__(self, status: int, code: str, message: str):
            self.status, self.code, self.message = status, code, message

    @app.exception_handler(Rejected)
    async def _rejected(_req, exc: Rejected):
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        missing = [e for e in exc.errors() if e.get("type") == "missing"]
        if missing:
            return _error(422, "missing_file_field",
                          f"No file in form field '{FORM_FIELD}': send the image as multipart/form-data with the field name '{FORM_FIELD}'.")
        first = exc.errors()[0]
        return _error(422, "invalid_request", f"Invalid request: {first.get('msg')} at {'.'.join(map(str, first.get('loc', [])))}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        return _error(exc.status_code, "http_error", str(exc.detail))

    app.add_middleware(_DeclaredSizeLimit, max_bytes=max_bytes + 64_000, limit_mb=settings.max_upload_mb)

    async def require_key(request: Request) -> None:
        if not settings.api_key:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise Rejected(401, "api_key_required", "This server needs an API key: send it in the X-API-Key header.")

    async def run_bounded(fn: Callable[[], Any]) -> Any:
        sem = admission.setdefault("sem", asyncio.Semaphore(settings.workers + settings.queue))
        if sem.locked():
            state["rejected_busy"] += 1
            raise Rejected(503, "busy", "The server is at its request limit; try again in a moment.")
        async with sem:
            state["admitted"] += 1
            fut = asyncio.wrap_future(pool.submit(fn))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), settings.timeout_s)
            except asyncio.TimeoutError:
                raise Rejected(504, "timeout", f"The request took longer than {settings.timeout_s:.0f} s.") from None
            finally:
                state["served"] += 1

    async def read_upload(file: UploadFile) -> tuple[bytes, str]:
        data = await file.read(max_bytes + 1)
        return data, file.filename or "upload"

    def with_upload(data: bytes, name: str, work: Callable[[Upload], Any]) -> Any:
        """Runs in a worker thread: validate the bytes, then work on them (nothing touches the disk)."""
        try:
            upload = check_upload(data, name, max_bytes, max_pixels)
        except UploadRejected as e:
            raise Rejected(e.status, e.code, e.message) from None
        try:
            return upload, work(upload)
        except UnreadableImage as e:
            raise Rejected(422, "unreadable_image", f"{name}: {e.reason}.") from None

    @app.post("/v1/predict", dependencies=[Depends(require_key)],
              summary="Classify one image (multipart field 'file'); with a cascade, also the path through its stages.")
    async def predict(file: UploadFile = File(..., description=f"{SUPPORTED} image")):
        t0 = time.perf_counter()
        data, name = await read_upload(file)
        upload, result = await run_bounded(lambda: with_upload(data, name, lambda up: _timed(model.predict, up)))
        body, compute_ms = result
        body.update({"model": {"version": model.version, "kind": model.kind},
                     "image": {"filename": name, "format": upload.format, "width": upload.width, "height": upload.height},
                     "timing_ms": {"predict": round(compute_ms, 2), "total": round((time.perf_counter() - t0) * 1e3, 2)}})
        return body

    @app.post("/v1/explain", dependencies=[Depends(require_key)], response_class=Response,
              responses={200: {"content": {"image/png": {}}}, 501: {"description": "Grad-CAM not available"}},
              summary="Grad-CAM heatmap of the predicted class over the image as the model sees it (PNG).")
    async def explain(file: UploadFile = File(..., description=f"{SUPPORTED} image")):
        if not model.can_explain:
            raise Rejected(501, "explain_unavailable",
                           "Heatmaps are not available in this medclassify version (the Grad-CAM module is not installed).")
        data, name = await read_upload(file)
        try:
            _upload, (png, label, prob) = await run_bounded(lambda: with_upload(data, name, lambda up: model.explain_png(up)))
        except ExplainUnavailable:
            raise Rejected(501, "explain_unavailable", "Heatmaps are not available in this medclassify version.") from None
        return Response(png, media_type="image/png", headers={"X-Class": label, "X-Probability": f"{prob:.6f}"})

    @app.get("/v1/model", dependencies=[Depends(require_key)], summary="Classes, metrics with confidence intervals, intended use.")
    async def model_info():
        return model.info()

    @app.get("/health", summary="Liveness and load.")
    async def health():
        return {"status": "ok", "version": model.version, "medclassify": __version__, **state}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _DeclaredSizeLimit:
    """Answers 413 before reading a POST body whose declared length is over the limit. A plain ASGI
    middleware: Starlette's BaseHTTPMiddleware costs a task group and two streams per request, a
    measurable share of a small request's time on 2 cores."""

    def __init__(self, app, max_bytes: int, limit_mb: float):
        self.app, self.max_bytes, self.limit_mb = app, max_bytes, limit_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = _error(413, "file_too_large", f"The request is {int(length) / 1e6:.1f} MB; the upload limit is "
                                  f"{self.limit_mb:.0f} MB.")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


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
