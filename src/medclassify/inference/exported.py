"""Which exported models of a run may be used, and how a new one is committed.

export.json records, for model.onnx (top level) and for model.int8.onnx (its "int8" section), the
weights version it was made from, the SHA-256 of the file and the check it passed ("parity" for the
float model, "check" for int8, each with "status": "passed"). A file is used only when all three
match what is on disk now: a model killed half-way through its export, changed by hand, or left
from older weights is never served.

A new export is a transaction (inference/export.py, quantize.py): the model is written and checked
under a temporary name (`io.atomic_path`), and only then are the model and export.json renamed into
place; until that moment the earlier verified pair stays untouched. Between those two renames the
pair disagrees (hash mismatch), so a kill there leaves the run on PyTorch, never on an unchecked file."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import file_sha256

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
META_FILE = "export.json"


def read_export_meta(run_path: Path) -> dict:
    """export.json's content, or {} when it is missing or unreadable (then no exported model is trusted)."""
    try:
        meta = json.loads((Path(run_path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def verified(record: dict | None, file: Path, version: str) -> bool:
    """`record` says its check passed for the weights `version`, and `file` is the file that was checked."""
    if not isinstance(record, dict):
        return False
    check = record.get("parity") if "parity" in record else record.get("check")
    if not isinstance(check, dict) or check.get("status") != "passed" or record.get("weights_version") != version:
        return False
    try:
        return file.is_file() and record.get("sha256") == file_sha256(file)
    except OSError:
        return False


def onnx_is_current(run_path: Path, version: str) -> bool:
    return verified(read_export_meta(run_path), Path(run_path) / ONNX_FILE, version)


def int8_is_current(run_path: Path, version: str) -> bool:
    return verified(read_export_meta(run_path).get("int8"), Path(run_path) / INT8_FILE, version)
