"""One uploaded file, from the request body already held in memory (bounded by the server's cap) to
checked bytes: the multipart form is parsed here, not by Starlette's UploadFile (which spools to a
temporary file), then the file goes through the same image rule as the CLI (data/formats.py): type
by content, size and frames from the header, the pixel cap, before anything decodes it."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.formats import HEAD_BYTES, SUPPORTED, TooManyPixels, UnreadableImage, check_pixels, read_header, sniff, unsupported_reason

__all__ = ["SUPPORTED", "Upload", "UploadRejected", "check_upload", "parse_multipart", "safe_name", "release_memory"]


class UploadRejected(Exception):
    """A bad upload: HTTP status, a short machine-readable code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


@dataclass
class Upload:
    path: Path  # a name for messages and for the decoder's choice by suffix; nothing is written there
    data: bytes
    format: str
    width: int
    height: int
    filename: str = "upload"  # the client's name, made safe to echo

    @property
    def bytes(self) -> int:
        return len(self.data)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def safe_name(filename: str | None) -> str:
    """The last component of the client's filename, printable and short; "upload" when nothing is left
    (".", "/", "..", an empty name)."""
    base = re.split(r"[\\/]", filename or "")[-1].strip()
    base = re.sub(r"[^\w.\- ()+]", "_", base)[:120]
    return "upload" if base.strip(".") == "" else base


def parse_multipart(body: bytes, content_type: str, field: str) -> tuple[str | None, bytes]:
    """(filename, bytes) of form field `field` in a multipart/form-data body. Raises UploadRejected."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise UploadRejected(415, "not_multipart", f"Send the image as multipart/form-data with the field name '{field}' "
                                                   f"(got Content-Type {ctype.decode('latin-1') or 'none'!r}).")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected(400, "bad_multipart", "The multipart/form-data Content-Type has no boundary.")
    parts: list[dict] = []
    header: list[bytes] = [b"", b""]

    def begin():
        parts.append({"headers": {}, "data": []})

    def data(buf: bytes, start: int, end: int):
        parts[-1]["data"].append(buf[start:end])

    def header_field(buf: bytes, start: int, end: int):
        header[0] += buf[start:end]

    def header_value(buf: bytes, start: int, end: int):
        header[1] += buf[start:end]

    def header_end():
        parts[-1]["headers"][header[0].lower()] = header[1]
        header[0] = header[1] = b""

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:  # python-multipart raises its own errors (and ValueError) on malformed bodies
        raise UploadRejected(400, "bad_multipart", f"The multipart/form-data body is malformed ({type(e).__name__}).") from None
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disp.get(b"name", b"").decode("latin-1") == field:
            name = disp.get(b"filename")
            return (name.decode("utf-8", "replace") if name is not None else None), b"".join(part["data"])
    raise UploadRejected(422, "missing_file_field",
                         f"No file in form field '{field}': send the image as multipart/form-data with the field name '{field}'.")


def check_upload(data: bytes, filename: str | None, max_bytes: int, max_pixels: int) -> Upload:
    """Validate the bytes of one upload with the CLI's image rule (raises UploadRejected)."""
    name = safe_name(filename)
    if not data:
        raise UploadRejected(400, "empty_file", f"{name} is empty (0 bytes).")
    if len(data) > max_bytes:
        raise UploadRejected(413, "file_too_large", f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    kind = sniff(data[:HEAD_BYTES])
    if kind is None:
        raise UploadRejected(415, "unsupported_type", f"{name}: {unsupported_reason(data[:HEAD_BYTES])}.")
    suffix, fmt = kind
    # The suffix follows the content, so a DICOM sent as "scan.png" is still read as DICOM.
    path = Path(name if name.lower().endswith(suffix) else name + suffix)
    try:
        header = read_header(path, data)
        check_pixels(header, path, max_pixels)
    except UnreadableImage as e:
        status, code = (413, "too_many_pixels") if isinstance(e, TooManyPixels) else (422, "unreadable_image")
        raise UploadRejected(status, code, f"{name}: {e.reason}.") from None
    if fmt == "DICOM" and b"\xe0\x7f\x10\x00" not in data and b"\x7f\xe0\x00\x10" not in data:
        raise UploadRejected(422, "no_pixel_data", f"{name}: the DICOM file has no pixel data (a report or structured document?).")
    return Upload(path, data, fmt, header.width, header.height, name)


_libc = None


def release_memory() -> None:
    """Hand freed heap back to the system after a large decode (glibc keeps it otherwise, so one big
    image would leave the server's RSS up for good). A no-op where malloc_trim does not exist."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
