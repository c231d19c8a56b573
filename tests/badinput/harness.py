"""Runs one corpus case through the CLI and judges it: exit code 0 (with a visible, counted skip) or 2
(with one `error:` line naming the file and the fix), no traceback, and no file changed outside the
case's declared outputs (a hash of every file, folder and link before and after)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path


def _excluded(path: str, outputs: list[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip(os.sep) + os.sep) for o in outputs)


def snapshot(root: Path, outputs: list[Path] = ()) -> dict[str, tuple]:
    """Every entry under root (not following links) with its kind, mode and content hash."""
    outs = [os.path.abspath(o) for o in outputs]
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if _excluded(p, outs):
                continue
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), h.hexdigest())
            else:
                entries[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IMODE(st.st_mode))
        dirnames[:] = [d for d in dirnames if not _excluded(os.path.join(dirpath, d), outs)
                       and not os.path.islink(os.path.join(dirpath, d))]
    return entries


def tree_diff(before: dict, after: dict) -> list[str]:
    changed = [f"changed {k}" for k in before if k in after and before[k] != after[k]]
    return ([f"deleted {k}" for k in before if k not in after] + changed
            + [f"created {k}" for k in after if k not in before])


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    crash: str = ""  # a traceback that escaped main()
    problems: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


def run_inprocess(argv: list[str], capsys) -> Outcome:
    from medclassify.cli import main

    crash = ""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever escapes is the finding
        code, crash = None, traceback.format_exc()
    out, err = capsys.readouterr()
    return Outcome(code, out, err, crash)


def console_script() -> list[str]:
    exe = Path(sys.executable).parent / "medclassify"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "medclassify.cli"]


def run_console(argv: list[str], cwd: Path, env: dict | None = None, preexec=None, timeout: int = 180) -> Outcome:
    environ = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(console_script() + argv, cwd=cwd, env=environ, capture_output=True, timeout=timeout,
                          preexec_fn=preexec)
    decode = lambda b: b.decode("utf-8", "backslashreplace")  # noqa: E731
    return Outcome(proc.returncode, decode(proc.stdout), decode(proc.stderr))


def _csv_rows_with_error(path: Path, fragment: str) -> bool:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(errors="replace"))))
    except (OSError, csv.Error):
        return False
    return any(fragment in (r.get("path") or "") and (r.get("error") or r.get("reason") or "").strip() for r in rows)


def skip_visible(o: Outcome, fragment: str, outputs: list[Path]) -> bool:
    """The skipped input is named in what the user sees: the printed output, a skipped.csv, audit.json,
    or a predictions CSV row with its error (not just any file of a run: split.csv lists what was used)."""
    if fragment in o.text:
        return True
    for out in outputs:
        files = [out] if out.is_file() else list(out.rglob("*")) if out.is_dir() else []
        for f in files:
            if f.name in ("skipped.csv", "audit.json"):
                try:
                    if fragment in f.read_text(errors="replace"):
                        return True
                except OSError:
                    pass
            elif f.suffix == ".csv" and _csv_rows_with_error(f, fragment):
                return True
    return False


def skip_lines(o: Outcome, fragment: str, outputs: list[Path]) -> list[str]:
    """The printed lines and the skipped.csv / error rows that mention the skipped input: its stated reason."""
    lines = [ln for ln in o.text.splitlines() if fragment in ln]
    for out in outputs:
        for f in [out] if out.is_file() else list(out.rglob("*.csv")) if out.is_dir() else []:
            try:
                lines += [ln for ln in f.read_text(errors="replace").splitlines() if fragment in ln]
            except OSError:
                pass
    return lines


def judge(o: Outcome, exits: set[int], *, parser: bool, skip: str | None, names: tuple[str, ...],
          outputs: list[Path], changes: list[str]) -> list[str]:
    problems = []
    if o.crash or "Traceback (most recent call last)" in o.text:
        problems.append("traceback: " + _last_line(o.crash or o.text))
    if o.code not in exits:
        problems.append(f"wrong exit: {o.code} (expected {sorted(exits)}); last line: {_last_line(o.text)!r}")
    elif o.code == 2 and not parser:
        errors = [ln for ln in o.err.splitlines() if ln.startswith("error:")]
        if len(errors) != 1:
            problems.append(f"exit 2 with {len(errors)} 'error:' lines: {_last_line(o.err)!r}")
        else:
            line = errors[0]
            if "fix" not in line.lower():
                problems.append(f"error line names no fix: {line!r}")
            missing = [n for n in names if not any(alt in line for alt in n.split("|"))]  # "a|b": either
            if missing:
                problems.append(f"error line lacks {missing}: {line!r}")
    elif o.code == 2 and parser and "Usage:" not in o.text:
        problems.append(f"parser error without a usage line: {_last_line(o.text)!r}")
    elif o.code == 0 and skip is not None:
        if skip_visible(o, skip, outputs):
            o.skipped = True
        else:
            problems.append(f"exit 0 but the skip of {skip!r} is not visible in the output or skipped.csv")
    if changes:
        problems.append("tree changed: " + ", ".join(changes[:4]) + (" ..." if len(changes) > 4 else ""))
    return problems


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
