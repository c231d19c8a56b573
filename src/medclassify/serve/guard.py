"""The server's front door, one pure ASGI middleware in front of every route: the exception boundary,
the trusted-host check, the API key and the body cap, in that order, so a request from the wrong
host or without the key is answered before any of its body is read, and a body is counted as it
arrives (Content-Length or chunked) and refused the moment it passes the cap, never spooled.

Every answer it gives is JSON {"error": {"status", "code", "message"}}; anything unexpected below it
becomes a 500 JSON with a request id that is also logged, so no exception reaches uvicorn (which
closes the keep-alive connection when one does)."""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Iterable, Optional

from starlette.responses import JSONResponse

log = logging.getLogger("medclassify.serve")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
OPEN_PATHS = frozenset({"/health"})  # what answers without the key


def error_response(status: int, code: str, message: str, headers: Optional[dict] = None, **extra) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message, **extra}}, status_code=status,
                        headers=headers)


def host_name(value: str) -> str:
    """The host part of a Host header, lower case, without the port ("[::1]:8000" -> "[::1]")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def presented_key(headers: dict[bytes, bytes]) -> str:
    given = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    if not given:
        auth = headers.get(b"authorization", b"").decode("latin-1").strip()
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return given


class Guard:
    def __init__(self, app, max_body: int, limit_mb: float, api_key: Optional[str], allowed_hosts: Iterable[str]):
        self.app, self.max_body, self.limit_mb, self.api_key = app, max_body, limit_mb, api_key
        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.any_host = "*" in hosts
        self.hosts = hosts | {f"[{h}]" for h in hosts if ":" in h and not h.startswith("[")}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        has_body = (length.isdigit() and int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()

        async def refuse(status: int, code: str, message: str, unread_body: bool, extra_headers=None, **extra):
            # With body bytes still unread, close the connection rather than let the server drain them.
            hdrs = dict(extra_headers or {}, **({"Connection": "close"} if unread_body else {}))
            await error_response(status, code, message, hdrs, **extra)(scope, receive, send_with_id)

        try:
            if not self.any_host and host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
                return await refuse(400, "invalid_host", "This server does not answer for that Host name; start it with "
                                    "--allowed-host NAME to add one.", has_body)
            if self.api_key and scope["path"] not in OPEN_PATHS:
                given = presented_key(headers)
                if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                    return await refuse(401, "api_key_required", "This server needs an API key: send it in the X-API-Key "
                                        "header.", has_body, {"WWW-Authenticate": 'Bearer realm="medclassify"'})
            if has_body:
                if length.isdigit() and int(length) > self.max_body:
                    return await refuse(413, "file_too_large", f"The request is {int(length) / 1e6:.1f} MB; the upload "
                                        f"limit is {self.limit_mb:g} MB.", True, bytes_read=0)
                body, read, over = await self._read_capped(receive)
                if over:
                    return await refuse(413, "file_too_large", f"The request passed the {self.limit_mb:g} MB upload limit; "
                                        f"reading stopped after {read:,} bytes.", True, bytes_read=read)
                if body is None:  # the client went away
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", rid, scope.get("method"), scope.get("path"))
            if started:
                raise  # the answer is half sent: only closing the connection is left
            await error_response(500, "internal_error", f"Unexpected server error (request id {rid}); the server "
                                 "log has the details.", request_id=rid)(scope, receive, send_with_id)

    async def _read_capped(self, receive) -> tuple[Optional[bytes], int, bool]:
        chunks, read = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, read, False
            chunk = message.get("body", b"")
            read += len(chunk)
            if read > self.max_body:
                return None, read, True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), read, False


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay
