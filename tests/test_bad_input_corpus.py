"""Issue 11's bad-input corpus: every kind of bad input we know of, run through the CLI.

Each row of CASES is one input (a setup that writes it under the case's own folder), the command
line, the exit codes allowed and the outputs the command may write. Every case must end in exit 0
with the bad input's skip visible (printed, in skipped.csv or as an error row) or exit 2 with one
`error:` line naming the file and the fix; never a traceback, and nothing outside the declared
outputs may change (the case folder and the shared dataset/run are hashed before and after).
Parser errors and a sample of the rest run through the real console script (`real=True`); the bulk
runs in-process through `medclassify.cli.main`. Adding a kind is adding a row.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.badinput import make as mk
from tests.badinput.harness import judge, run_console, run_inprocess, snapshot, tree_diff

TRAIN = ("--epochs", "1", "--model", "seed_cnn", "--pretrained", "none", "--image-size", "32", "--batch-size", "8")


@dataclass
class Ctx:
    t: Path  # the case's own folder (the working directory of the command)
    data: Path  # the shared dataset the shared run was trained on (read-only for every case)
    env: dict = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.t / "run"

    def fmt(self, s: str) -> str:
        return s.format(t=self.t, data=self.data, run=self.run)


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], object]
    argv: tuple[str, ...]
    exits: frozenset[int]
    outputs: tuple[str, ...] = ()
    skip: str | None = None  # on exit 0, this fragment (the bad file's name) must be visible as a skip
    names: tuple[str, ...] = ()  # on exit 2, the error line must contain each of these ("a|b": either), case-sensitive
    kind: str = ""  # cases of one kind through several verbs share it (default: the id)
    needs: str | None = None  # "run" or "exported": a copy of the shared run at {run}
    real: bool = False  # through the console script in a subprocess
    parser: bool = False  # a usage line (Click's) is an acceptable exit-2 message
    check: Callable[[Ctx, object], str | None] | None = None  # extra check; returns a problem or None
    preexec: Callable[[], None] | None = None  # subprocess set-up (resource limits)

    @property
    def category(self) -> str:
        return self.id.split("-")[0]


def C(id, setup, argv, exits, outputs=(), **kw) -> Case:
    return Case(id, setup, tuple(argv), frozenset(exits), tuple(outputs), **kw)


def nothing(c: Ctx) -> None:
    pass


def both(*fns):
    def setup(c):
        for fn in fns:
            fn(c)
    return setup


# ---- command lines ---------------------------------------------------------------------------------

def train(data="{t}/mydata", out="{t}/out", *extra):
    return ["train", data, "--out", out, *TRAIN, *extra]


def predict(*inputs, out="{t}/preds.csv", extra=()):
    return ["predict", "{run}", *(inputs or ("{t}/in",)), "--out", out, "--backend", "torch", *extra]


AUDIT = ["audit", "{t}/mydata", "--out", "{t}/audit"]
EVAL = ["evaluate", "{run}", "--bootstrap", "100"]
REPORT = ["report", "{run}", "--out", "{t}/report.html"]
EXPLAIN = ["explain", "{run}", "{t}/in", "--out", "{t}/explained"]
EXPORT = ["export", "{run}"]
# What evaluate/report/export may write into a run (run.json only where the case allows exit 0: calibration).
RUN_OUT = ("{run}/metrics", "{run}/report.html", "{run}/model.onnx", "{run}/export.json", "{run}/calibration")


# ---- setups ----------------------------------------------------------------------------------------

def dataset(per_class=6):
    """A usable two-class dataset at {t}/mydata."""
    def setup(c):
        mk.two_class(c.t / "mydata", per_class)
    return setup


def _place(p: Path, data: bytes | Callable[[Path], object]) -> None:
    if callable(data):
        p.parent.mkdir(parents=True, exist_ok=True)
        data(p)
    else:
        mk.write(p, data)


def ds_with(rel: str, data: bytes | Callable[[Path], object]):
    """The usable dataset plus one odd file at mydata/<rel>."""
    def setup(c):
        mk.two_class(c.t / "mydata")
        _place(c.t / "mydata" / rel, data)
    return setup


def in_with(rel: str, data: bytes | Callable[[Path], object], good: int = 2):
    """A predict/explain input folder {t}/in with `good` readable images and one odd file."""
    def setup(c):
        for i in range(good):
            mk.grey(c.t / "in" / f"good_{i}.png", seed=i)
        _place(c.t / "in" / rel, data)
    return setup


def symlink(target: str):
    return lambda p: os.symlink(target, p)


def loop_links(p: Path) -> None:
    other = p.with_name("loop_b.png")
    os.symlink(other.name, p)
    os.symlink(p.name, other)


def dicom_with(**kw):
    return lambda p: mk.dicom(p, **kw)


def a_file(c: Ctx) -> None:
    mk.write(c.t / "afile", "a file where a folder is wanted\n")


def user_folder(c: Ctx) -> None:
    mk.write(c.t / "mine" / "thesis.txt", "months of work\n")


def layout(**folders: int):
    """mydata/<path>/<n images>: e.g. layout(**{'train/a': 3, 'train/b': 3})."""
    def setup(c):
        for rel, n in folders.items():
            for i in range(n):
                mk.grey(c.t / "mydata" / rel / f"{rel.replace('/', '_')}_{i}.png", seed=i)
    return setup


def split_layout(extra: dict | None = None, train="train", test="test", classes=("normal", "lesion"), test_classes=None):
    base = {f"{train}/{k}": 4 for k in classes}
    base.update({f"{test}/{k}": 2 for k in (test_classes or classes)})
    return layout(**base, **(extra or {}))


def csv_ds(rows_fn=None, header="path,label,split", encoding="utf-8", raw: bytes | None = None, **kw):
    def setup(c):
        rows = mk.csv_dataset(c.t / "mydata", **kw)
        if raw is not None:
            mk.write(c.t / "mydata" / "labels.csv", raw)
        else:
            mk.labels_csv(c.t / "mydata", rows_fn(rows) if rows_fn else rows, header, encoding=encoding)
    return setup


def npz_ds(**arrays):
    return lambda c: mk.npz(c.t / "mydata.npz", **arrays)


def damage(fn):
    """The shared run copied to {run} (done by the harness), then damaged by fn(run_dir)."""
    return lambda c: fn(c.run)


def json_edit(fn):
    return damage(lambda r: mk.edit_json(r / "run.json", fn))


def drop(key):
    def fn(obj):
        obj.pop(key, None)
        return obj
    return fn


def setkey(key, value):
    def fn(obj):
        obj[key] = value
        return obj
    return fn


def with_input(setup_run):
    """A damaged run plus a readable predict/explain input at {t}/in."""
    return both(setup_run, lambda c: mk.grey(c.t / "in" / "scan.png"))


def weights(data: bytes | Callable[[Ctx], bytes]):
    return lambda c: (c.run / "model.safetensors").write_bytes(data(c) if callable(data) else data)


def truncate(name: str, keep: float = 0.5):
    def fn(r):
        b = (r / name).read_bytes()
        (r / name).write_bytes(b[: int(len(b) * keep)])
    return fn


def moved_dataset(r: Path) -> None:
    rows = (r / "split.csv").read_text().splitlines()
    (r / "split.csv").write_text("\n".join([rows[0]] + [row.replace("/", "/moved-away/", 1) for row in rows[1:]]) + "\n")


def garbage_onnx(r: Path) -> None:
    (r / "model.onnx").write_bytes(mk.junk(2048))


def set_file_size_limit() -> None:
    # Full disk: writes past 16 KiB fail with EFBIG (SIGXFSZ ignored), as ENOSPC would; /dev/full is
    # not used because a non-atomic writer could rename its temporary file over the device node.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def big_input_folder(c: Ctx) -> None:
    for i in range(400):  # predictions.csv of ~400 rows: more than the 16 KiB allowed
        mk.grey(c.t / "in" / f"scan_with_a_rather_long_file_name_for_the_csv_{i:04d}.png", size=8, seed=i)


# ---- extra checks ----------------------------------------------------------------------------------

def predicted(name: str):
    """The readable odd image was predicted (a label in its row), not skipped."""
    def check(c: Ctx, o) -> str | None:
        rows = list(csv.DictReader((c.t / "preds.csv").open(newline="")))
        row = next((r for r in rows if r["path"].endswith(name)), None)
        if row is None or not row.get("predicted") or row.get("error"):
            return f"{name} was not predicted: {row}"
        return None
    return check


def no_pickle_advice(c: Ctx, o) -> str | None:
    return "suggests allow_pickle" if "allow_pickle" in o.text else None


def no_nan(c: Ctx, o) -> str | None:
    p = c.t / "preds.csv"
    if o.code == 0 and p.is_file() and "nan" in p.read_text().lower():
        return "NaN probabilities in preds.csv"
    return None


def skipped_csv_row(name: str):
    """skipped.csv is valid CSV and lists the file by its exact name."""
    def check(c: Ctx, o) -> str | None:
        p = c.t / "out" / "skipped.csv"
        if o.code != 0:
            return None
        if not p.is_file():
            return "no skipped.csv in the run"
        rows = list(csv.reader(p.open(newline="", errors="surrogateescape")))
        if not any(row and row[0].endswith(name) for row in rows[1:]):
            return f"skipped.csv does not list {name!r} as one field: {rows[1:3]}"
        return None
    return check


def skipped_rows(n: int):
    def check(c: Ctx, o) -> str | None:
        p = c.t / "out" / "skipped.csv"
        got = len(p.read_bytes().splitlines()) - 1 if p.is_file() else 0
        return None if o.code != 0 or got >= n else f"skipped.csv lists {got} file(s), expected {n}"
    return check


def reason(name: str, pattern: str):
    """The skip of `name` states its true reason (a regex, case-insensitive)."""
    import re

    from tests.badinput.harness import skip_lines

    def check(c: Ctx, o) -> str | None:
        if o.code != 0:
            return None
        lines = [ln.replace(str(c.t), "<tmp>/case") for ln in skip_lines(o, name, [c.t / "out", c.t / "preds.csv", c.t / "audit"])]
        if any(re.search(pattern, ln, re.I) for ln in lines):
            return None
        return f"the skip of {name} does not give the reason /{pattern}/: {lines[:1]}"
    return check


def prints_version(c: Ctx, o) -> str | None:
    from medclassify import __version__

    return None if __version__ in o.out else f"version {__version__} not printed: {o.out[-200:]!r}"


def unchanged(rel: str):
    """An earlier verified output of the run is still there (compared by the tree hash anyway)."""
    return lambda c, o: None if (c.run / rel).is_file() else f"{rel} is gone"


# ---- the corpus ------------------------------------------------------------------------------------

LIMIT = r"pixel limit|too large|exceeds|megapixel|bomb"
JPEG_GARBAGE = b"\xff\xd8\xff\xe0" + mk.junk(300)
PNG = mk.png_bytes()
CASES: list[Case] = [
    # image files inside a dataset or a predict folder
    C("file-corrupt-jpeg", ds_with("normal/broken.jpg", JPEG_GARBAGE), train(), {0}, ["{t}/out"], skip="broken.jpg", real=True),
    C("file-truncated-png", in_with("half.png", PNG[: len(PNG) // 2]), predict(), {0}, ["{t}/preds.csv"], skip="half.png", needs="run"),
    C("file-empty", ds_with("lesion/empty.png", b""), AUDIT, {0}, ["{t}/audit"], skip="empty.png"),
    C("file-zero-pixel-png", ds_with("lesion/zero.png", mk.png_with_header(0, 0)), train(), {0}, ["{t}/out"], skip="zero.png"),
    C("file-huge-header-png", in_with("bomb.png", mk.png_with_header(100_000, 100_000)), predict(), {0}, ["{t}/preds.csv"], skip="bomb.png", needs="run", check=reason("bomb.png", LIMIT)),
    C("file-huge-header-png-train", ds_with("normal/bomb.png", mk.png_with_header(100_000, 100_000)), train(), {0}, ["{t}/out"], skip="bomb.png", kind="file-huge-header-png", check=reason("bomb.png", LIMIT)),
    C("file-huge-header-jpeg", ds_with("normal/bomb.jpg", mk.jpeg_with_header(60_000, 60_000)), train(), {0}, ["{t}/out"], skip="bomb.jpg", check=reason("bomb.jpg", LIMIT)),
    C("file-text-named-jpg", in_with("notes.jpg", "patient list, not an image\n"), predict(), {0}, ["{t}/preds.csv"], skip="notes.jpg", needs="run"),
    C("file-gif-named-png", ds_with("normal/anim.png", mk.image_bytes("GIF", "P")), train(), {0}, ["{t}/out"], skip="anim.png", check=reason("anim.png", "GIF")),
    C("file-webp-named-jpg", in_with("photo.jpg", mk.image_bytes("WEBP", "RGB")), predict(), {0}, ["{t}/preds.csv"], skip="photo.jpg", needs="run", check=reason("photo.jpg", "WebP")),
    C("file-webp", ds_with("lesion/scan.webp", mk.image_bytes("WEBP", "RGB")), train(), {0}, ["{t}/out"], skip="scan.webp"),
    C("file-gif", in_with("scan.gif", mk.image_bytes("GIF", "P")), predict("{t}/in/scan.gif", "{t}/in/good_0.png"), {0}, ["{t}/preds.csv"], skip="scan.gif", needs="run", check=reason("scan.gif", "GIF")),
    C("file-truncated-bmp", in_with("cut.bmp", mk.image_bytes("BMP")[:80]), predict(), {0}, ["{t}/preds.csv"], skip="cut.bmp", needs="run"),
    C("file-garbage-tiff", ds_with("normal/junk.tif", b"II*\x00" + mk.junk(200)), AUDIT, {0}, ["{t}/audit"], skip="junk.tif"),
    C("file-png-bad-zlib", in_with("badzlib.png", PNG[:60] + b"\x00" * 40 + PNG[100:]), predict(), {0}, ["{t}/preds.csv"], skip="badzlib.png", needs="run"),
    C("file-folder-named-png", ds_with("normal/folder.png/inner.txt", "x"), train(), {0}, ["{t}/out"]),
    C("file-hidden-appledouble", ds_with("normal/._scan.png", b"\x00\x05\x16\x07" + mk.junk(60)), train(), {0}, ["{t}/out"]),
    C("file-quote-comma-name", ds_with('normal/we,ird"name.jpg', JPEG_GARBAGE), train(), {0}, ["{t}/out"], skip="ird", check=skipped_csv_row('we,ird"name.jpg')),
    C("file-non-utf8-name", lambda c: (mk.two_class(c.t / "mydata"), (c.t / "mydata" / "normal" / os.fsdecode(b"scan\xff\xfe.jpg")).write_bytes(JPEG_GARBAGE)),
      train(), {0}, ["{t}/out"], check=skipped_rows(1)),
    C("file-valid-16bit-png", in_with("deep.png", mk.sixteen_bit_png()), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("deep.png")),
    C("file-valid-cmyk-jpeg", in_with("cmyk.jpg", mk.image_bytes("JPEG", "CMYK")), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("cmyk.jpg")),
    C("file-valid-palette-png", in_with("palette.png", mk.image_bytes("PNG", "P")), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("palette.png")),
    C("file-valid-exif-rotated", in_with("rotated.jpg", mk.exif_rotated_jpeg()), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("rotated.jpg")),
    C("file-valid-rgba-png", in_with("alpha.png", mk.image_bytes("PNG", "RGBA")), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("alpha.png")),
    C("file-valid-1bit-png", in_with("mono.png", mk.image_bytes("PNG", "1")), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("mono.png")),
    C("file-valid-png-named-jpg", in_with("really_png.jpg", PNG), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("really_png.jpg")),
    C("file-valid-1x1", in_with("dot.png", mk.png_bytes("L", (1, 1))), predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("dot.png")),
    C("file-valid-exif-in-train", ds_with("normal/rotated.jpg", mk.exif_rotated_jpeg()), train(), {0}, ["{t}/out"]),

    # dataset layouts
    C("layout-missing-path", nothing, train("{t}/nowhere"), {2}, ["{t}/out"], names=("nowhere",), real=True),
    C("layout-empty-folder", lambda c: (c.t / "mydata").mkdir(), train(), {2}, ["{t}/out"], names=("mydata",)),
    C("layout-empty-folder-eda", lambda c: (c.t / "mydata").mkdir(), ["eda", "{t}/mydata", "--out", "{t}/eda"], {2}, ["{t}/eda"], names=("mydata",), kind="layout-empty-folder"),
    C("layout-single-class", layout(only=5), train(), {2}, ["{t}/out"], names=("only",)),
    C("layout-no-images", lambda c: [mk.write(c.t / "mydata" / k / "readme.txt", "x") for k in "ab"], train(), {2}, ["{t}/out"], names=("mydata",)),
    C("layout-class-folder-empty", both(dataset(), lambda c: (c.t / "mydata" / "emptyclass").mkdir()), train(), {2}, ["{t}/out"], names=("emptyclass",)),
    C("layout-nested-subfolder", both(dataset(), layout(**{"normal/sub": 2})), train(), {0, 2}, ["{t}/out"]),
    C("layout-extra-top-folder", split_layout({"external/normal": 2, "external/lesion": 2}), train(), {0}, ["{t}/out"], skip="external"),
    C("layout-extra-top-folder-audit", split_layout({"external/normal": 2, "external/lesion": 2}), AUDIT, {0}, ["{t}/audit"], skip="external", kind="layout-extra-top-folder"),
    C("layout-stray-file-at-top", both(split_layout(), lambda c: mk.write(c.t / "mydata" / "README.txt", "x")), train(), {0}, ["{t}/out"]),
    C("layout-dataset-is-image", lambda c: mk.grey(c.t / "scan.png"), train("{t}/scan.png"), {2}, ["{t}/out"], names=("scan.png",)),
    C("layout-dataset-is-text", lambda c: mk.write(c.t / "notes.txt", "x"), train("{t}/notes.txt"), {2}, ["{t}/out"], names=("notes.txt",)),
    C("layout-all-unreadable", lambda c: [mk.write(c.t / "mydata" / k / f"{i}.png", mk.junk(50)) for k in "ab" for i in range(3)],
      train(), {2}, ["{t}/out"]),
    C("layout-test-class-typo", split_layout(test_classes=("normal", "lesoin")), train(), {2}, ["{t}/out"], names=("lesoin", "lesion")),
    C("layout-only-val-split", layout(**{"val/a": 3, "val/b": 3}), train(), {0, 2}, ["{t}/out"]),
    C("layout-unicode-class-names", layout(**{"naïve ✓": 4, "læsion": 4}), train(), {0}, ["{t}/out"]),
    C("layout-splits-flag", split_layout(train="Training", test="External"), train("{t}/mydata", "{t}/out", "--splits", "train=Training,test=External"), {0}, ["{t}/out"]),
    C("layout-splits-flag-missing", split_layout(train="Training", test="External"), train("{t}/mydata", "{t}/out", "--splits", "train=Training,test=Nope"), {2}, ["{t}/out"], names=("Nope",)),

    # labels CSVs
    C("csv-missing-label-column", csv_ds(header="path,diagnosis,split"), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv", "label")),
    C("csv-some-paths-missing", csv_ds(lambda rows: rows + ["img/ghost.png,NORMAL,train"]), train("{t}/mydata/labels.csv"), {0, 2}, ["{t}/out"], skip="ghost.png", names=("ghost.png",)),
    C("csv-all-paths-missing", csv_ds(lambda rows: [r.replace("img/", "gone/") for r in rows]), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-label-typo-in-test", csv_ds(test_label={"NORMAL": "NORMAl"}), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("NORMAl", "NORMAL"), real=True),
    C("csv-non-utf8", both(lambda c: mk.grey(c.t / "mydata" / "img" / "extra.png"), csv_ds(lambda rows: rows + ["img/extra.png,Pneumonie \u00e9,train"], encoding="latin-1")), train("{t}/mydata/labels.csv"), {0, 2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-empty-file", csv_ds(raw=b""), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-header-only", csv_ds(raw=b"path,label,split\n"), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-duplicate-paths", csv_ds(lambda rows: rows + [rows[0].replace("NORMAL,train", "PNEUMONIA,train")]), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("train_NORMAL_0.png",)),
    C("csv-unknown-split", both(csv_ds(lambda rows: rows + ["img/extra.png,NORMAL,holdout"]), lambda c: mk.grey(c.t / "mydata" / "img" / "extra.png")), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("holdout",)),
    C("csv-binary-garbage", csv_ds(raw=mk.junk(400)), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-empty-label-cell", csv_ds(lambda rows: rows + ["img/train_NORMAL_1.png,,train"]), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-semicolons", csv_ds(lambda rows: [r.replace(",", ";") for r in rows], header="path;label;split"), train("{t}/mydata/labels.csv"), {2}, ["{t}/out"], names=("labels.csv",)),
    C("csv-label-typo-audit", csv_ds(test_label={"NORMAL": "NORMAl"}), ["audit", "{t}/mydata/labels.csv", "--out", "{t}/audit"], {2}, ["{t}/audit"], names=("NORMAl", "NORMAL"), kind="csv-label-typo-in-test"),

    # MedMNIST .npz
    C("npz-random-bytes", lambda c: mk.write(c.t / "mydata.npz", mk.junk(500)), ["audit", "{t}/mydata.npz", "--out", "{t}/audit"], {2}, ["{t}/audit"], names=("mydata.npz",), check=no_pickle_advice, real=True),
    C("npz-string-labels", npz_ds(train_images=mk.medmnist_arrays()["train_images"], train_labels=np.array(["cat", "dog"] * 6)), train("{t}/mydata.npz"), {0, 2}, ["{t}/out"], names=("mydata.npz",)),
    C("npz-missing-keys", npz_ds(x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4)), train("{t}/mydata.npz"), {2}, ["{t}/out"], names=("mydata.npz",)),
    C("npz-wrong-shape", npz_ds(train_images=np.zeros(12, np.uint8), train_labels=np.arange(12) % 2), train("{t}/mydata.npz"), {2}, ["{t}/out"], names=("mydata.npz",)),
    C("npz-label-count-mismatch", npz_ds(train_images=np.zeros((12, 28, 28), np.uint8), train_labels=np.zeros(5)), train("{t}/mydata.npz"), {2}, ["{t}/out"], names=("mydata.npz",)),
    C("npz-object-array", lambda c: mk.npz(c.t / "mydata.npz", train_images=np.array([mk.Payload(c.t / "PWNED")], dtype=object), train_labels=np.zeros(1)),
      ["audit", "{t}/mydata.npz", "--out", "{t}/audit"], {2}, ["{t}/audit"], names=("mydata.npz",), check=no_pickle_advice),
    C("npz-five-channels", npz_ds(train_images=np.zeros((12, 28, 28, 5), np.uint8), train_labels=np.arange(12) % 2), train("{t}/mydata.npz"), {2}, ["{t}/out"], names=("mydata.npz",)),
    C("npz-float-labels", npz_ds(train_images=mk.medmnist_arrays()["train_images"], train_labels=np.linspace(0, 1, 12)), train("{t}/mydata.npz"), {0, 2}, ["{t}/out"], names=("mydata.npz",)),

    # DICOM tags (a few bad files among PNGs: channel detection samples every file of a small dataset)
    C("dicom-windowcenter-text", ds_with("lesion/wc.dcm", dicom_with(raw={"WindowCenter": "abc", "WindowWidth": "400"})), train(), {0}, ["{t}/out"], real=True),
    C("dicom-numberofframes-text", ds_with("lesion/frames.dcm", dicom_with(raw={"NumberOfFrames": "many"})), train(), {0}, ["{t}/out"]),
    C("dicom-rows-text", in_with("rows.dcm", dicom_with(raw={"Rows": "tall"})), predict(), {0}, ["{t}/preds.csv"], skip="rows.dcm", needs="run"),
    C("dicom-no-pixel-data", ds_with("normal/nopixels.dcm", dicom_with(pixels=False)), train(), {0}, ["{t}/out"], skip="nopixels.dcm"),
    C("dicom-multiframe", in_with("cine.dcm", dicom_with(frames=3)), predict(), {0}, ["{t}/preds.csv"], needs="run"),
    C("dicom-huge-header", ds_with("normal/huge.dcm", dicom_with(rows=60_000, cols=60_000)), train(), {0}, ["{t}/out"], skip="huge.dcm", check=reason("huge.dcm", LIMIT)),
    C("dicom-huge-header-predict", in_with("huge.dcm", dicom_with(rows=60_000, cols=60_000)), predict(), {0}, ["{t}/preds.csv"], skip="huge.dcm", needs="run", kind="dicom-huge-header", check=reason("huge.dcm", LIMIT)),
    C("dicom-garbage-body", in_with("junk.dcm", b"\x00" * 128 + b"DICM" + mk.junk(300)), predict(), {0}, ["{t}/preds.csv"], skip="junk.dcm", needs="run"),
    C("dicom-window-width-zero", ds_with("lesion/ww0.dcm", dicom_with(raw={"WindowCenter": "100", "WindowWidth": "0"})), train(), {0}, ["{t}/out"]),
    C("dicom-voilut-sigmoid", in_with("sig.dcm", dicom_with(raw={"WindowCenter": "100", "WindowWidth": "200", "VOILUTFunction": "SIGMOID"})),
      predict(), {0}, ["{t}/preds.csv"], needs="run", check=predicted("sig.dcm")),
    C("dicom-rescale-slope-text", in_with("slope.dcm", dicom_with(raw={"RescaleSlope": "x", "RescaleIntercept": "0"})), predict(), {0}, ["{t}/preds.csv"], needs="run"),

    # symlinks
    C("link-dangling", ds_with("normal/dangling.png", symlink("/nonexistent/scan.png")), train(), {0}, ["{t}/out"], skip="dangling.png", check=reason("dangling.png", "link")),
    C("link-dangling-predict", in_with("dangling.png", symlink("/nonexistent/scan.png")), predict(), {0}, ["{t}/preds.csv"], skip="dangling.png", needs="run", kind="link-dangling", real=True, check=reason("dangling.png", "link")),
    C("link-loop", ds_with("normal/loop_a.png", loop_links), train(), {0}, ["{t}/out"], skip="loop_a.png", check=reason("loop_a.png", "link|loop")),
    C("link-loop-predict", in_with("loop_a.png", loop_links, good=0), predict("{t}/in/loop_a.png"), {2}, ["{t}/preds.csv"], names=("loop_a.png", "link"), needs="run", kind="link-loop"),
    C("link-dir-loop", ds_with("normal/sub", symlink("..")), train(), {0, 2}, ["{t}/out"]),
    C("link-dataset-dangling", lambda c: os.symlink(c.t / "gone", c.t / "mydata"), train(), {2}, ["{t}/out"], names=("mydata",)),

    # damaged run directories
    C("run-json-list", with_input(damage(lambda r: (r / "run.json").write_text("[]"))), predict(), {2}, ["{t}/preds.csv"], names=("run.json",), needs="run", real=True),
    C("run-json-binary", damage(lambda r: (r / "run.json").write_bytes(mk.junk(300))), EVAL, {2}, RUN_OUT, names=("run.json",), needs="run"),
    C("run-json-empty", damage(lambda r: (r / "run.json").write_bytes(b"")), EXPORT, {2}, RUN_OUT, names=("run.json",), needs="run"),
    C("run-json-missing-classes", json_edit(drop("classes")), REPORT, {2}, ["{t}/report.html", *RUN_OUT], names=("run.json",), needs="run"),
    C("run-json-missing-preprocessing", with_input(json_edit(drop("preprocessing"))), EXPLAIN, {2}, ["{t}/explained"], names=("run.json",), needs="run"),
    C("run-json-image-size-big", with_input(json_edit(lambda o: {**o, "preprocessing": {**o["preprocessing"], "image_size": "big"}})), predict(), {2}, ["{t}/preds.csv"], names=("run.json",), needs="run"),
    C("run-json-future-version", json_edit(setkey("format_version", 99)), EVAL, {2}, RUN_OUT, names=("run",), needs="run"),
    C("run-json-classes-not-a-list", with_input(json_edit(setkey("classes", 5))), predict(), {2}, ["{t}/preds.csv"], names=("run.json",), needs="run"),
    C("run-json-deleted", with_input(damage(lambda r: (r / "run.json").unlink())), predict(), {2}, ["{t}/preds.csv"], names=("run",), needs="run"),
    C("run-class-count-mismatch", with_input(json_edit(setkey("classes", ["a", "b", "c"]))), predict(), {2}, ["{t}/preds.csv"], names=("model.safetensors|run.json",), needs="run"),
    C("run-weights-truncated", with_input(damage(truncate("model.safetensors"))), predict(), {2}, ["{t}/preds.csv"], names=("model.safetensors",), needs="run"),
    C("run-weights-empty", damage(lambda r: (r / "model.safetensors").write_bytes(b"")), EVAL, {2}, RUN_OUT, names=("model.safetensors",), needs="run"),
    C("run-weights-random", damage(lambda r: (r / "model.safetensors").write_bytes(mk.junk(4096))), EXPORT, {2}, RUN_OUT, names=("model.safetensors",), needs="run"),
    C("run-weights-pickle", with_input(weights(lambda c: mk.pickle_bytes(c.t / "PWNED"))), predict(), {2}, ["{t}/preds.csv"], names=("model.safetensors",), needs="run", real=True),
    C("run-weights-missing", with_input(damage(lambda r: (r / "model.safetensors").unlink())), EXPLAIN, {2}, ["{t}/explained"], names=("model.safetensors",), needs="run"),
    C("run-split-csv-deleted", damage(lambda r: (r / "split.csv").unlink()), EVAL, {2}, RUN_OUT, names=("split.csv",), needs="run"),
    C("run-split-csv-garbage", damage(lambda r: (r / "split.csv").write_bytes(mk.junk(300))), REPORT, {2}, ["{t}/report.html", *RUN_OUT], names=("split.csv",), needs="run"),
    C("run-onnx-garbage-with-export-json", with_input(damage(garbage_onnx)), predict(extra=("--backend", "auto")), {0, 2}, ["{t}/preds.csv"], names=("model.onnx",), needs="exported"),
    C("run-onnx-without-export-json", with_input(damage(lambda r: (r / "export.json").unlink())), predict(extra=("--backend", "auto")), {0, 2}, ["{t}/preds.csv"], names=("model.onnx|export.json",), needs="exported"),
    C("run-calibration-temperature-0", with_input(json_edit(setkey("calibration", {"temperature": 0.0, "fitted_on": "val", "n": 2}))), predict(), {0, 2}, ["{t}/preds.csv"], names=("run.json",), needs="run", check=no_nan),
    C("run-export-dataset-moved", damage(moved_dataset), EXPORT, {2}, (), needs="exported", check=unchanged("model.onnx")),
    C("run-dir-is-file", both(lambda c: mk.write(c.t / "run.txt", "x"), lambda c: mk.grey(c.t / "in" / "scan.png")), ["predict", "{t}/run.txt", "{t}/in", "--out", "{t}/preds.csv"], {2}, ["{t}/preds.csv"], names=("run.txt",)),
    C("run-metrics-garbage", damage(lambda r: mk.write(r / "metrics" / "test.json", mk.junk(100))), REPORT, {0, 2}, ["{t}/report.html", "{run}/run.json", *RUN_OUT], names=("test.json",), needs="run"),

    # bad output locations (we run as root: read-only is /proc, full is a file-size limit)
    C("out-predict-under-file", both(a_file, lambda c: mk.grey(c.t / "in" / "scan.png")), predict(out="{t}/afile/preds.csv"), {2}, (), names=("afile",), needs="run"),
    C("out-predict-is-folder", both(lambda c: (c.t / "preds").mkdir(), lambda c: mk.grey(c.t / "in" / "scan.png")), predict(out="{t}/preds"), {2}, (), names=("preds",), needs="run"),
    C("out-predict-onto-input", lambda c: mk.grey(c.t / "in" / "scan.png"), predict("{t}/in/scan.png", out="{t}/in/scan.png"), {2}, (), names=("scan.png",), needs="run"),
    C("out-predict-onto-run-json", lambda c: mk.grey(c.t / "in" / "scan.png"), predict(out="{run}/run.json"), {2}, (), names=("run.json",), needs="run", real=True),
    C("out-predict-read-only", lambda c: mk.grey(c.t / "in" / "scan.png"), predict(out="/proc/medclassify-corpus/preds.csv"), {2}, (), names=("/proc",), needs="run"),
    C("out-predict-disk-full", big_input_folder, predict(), {2}, (), names=("preds.csv",), needs="run", real=True, preexec=set_file_size_limit),
    C("out-train-under-file", both(dataset(), a_file), train(out="{t}/afile/run"), {2}, (), names=("afile",)),
    C("out-train-overwrite-user-folder", both(dataset(), user_folder), train("{t}/mydata", "{t}/mine", "--overwrite"), {2}, (), names=("mine",)),
    C("out-train-overwrite-dataset", dataset(), train("{t}/mydata", "{t}/mydata", "--overwrite"), {2}, (), names=("mydata",)),
    C("out-train-overwrite-dataset-parent", dataset(), train("{t}/mydata", "{t}", "--overwrite"), {2}, (), names=("mydata",)),
    C("out-train-read-only", dataset(), train(out="/proc/medclassify-corpus/run"), {2}, (), names=("/proc",)),
    C("out-audit-is-file", both(dataset(), a_file), ["audit", "{t}/mydata", "--out", "{t}/afile"], {2}, (), names=("afile",)),
    C("out-eda-read-only", dataset(), ["eda", "{t}/mydata", "--out", "/proc/medclassify-corpus/eda"], {2}, (), names=("/proc",)),
    C("out-report-under-file", a_file, ["report", "{run}", "--out", "{t}/afile/report.html"], {2}, RUN_OUT, names=("afile",), needs="run"),
    C("out-explain-folder-onto-file", both(a_file, in_with("x.png", PNG)), ["explain", "{run}", "{t}/in", "--out", "{t}/afile"], {2}, (), names=("afile",), needs="run"),
    C("out-evaluate-metrics-is-file", damage(lambda r: (shutil.rmtree(r / "metrics"), mk.write(r / "metrics", "not a folder"))), EVAL, {2}, ("{run}/calibration",), names=("metrics",), needs="run"),
    C("out-cache-not-writable", both(dataset(), a_file, lambda c: c.env.update(MEDCLASSIFY_CACHE=str(c.t / "afile" / "cache"))), train(), {0, 2}, ["{t}/out"], names=("afile",)),

    # predict / explain / evaluate inputs
    C("input-predict-list-non-utf8", lambda c: (mk.grey(c.t / "in" / "scan.png"), mk.write(c.t / "list.txt", str(c.t / "in" / "scan.png").encode() + b"\n\xff\xfe caf\xe9.png\n")),
      predict("{t}/list.txt"), {0, 2}, ["{t}/preds.csv"], skip="caf", names=("list.txt",), needs="run"),
    C("input-predict-csv-without-path-column", lambda c: mk.write(c.t / "list.csv", "file,label\nscan.png,a\n"), predict("{t}/list.csv"), {2}, ["{t}/preds.csv"], names=("list.csv",), needs="run"),
    C("input-predict-all-failed", lambda c: [mk.write(c.t / "in" / f"bad{i}.png", mk.junk(40)) for i in range(3)], predict(), {2}, ["{t}/preds.csv"], names=("in",), needs="run", real=True),
    C("input-predict-empty-folder", lambda c: (c.t / "in").mkdir(), predict(), {2}, ["{t}/preds.csv"], names=("in",), needs="run"),
    C("input-predict-missing", nothing, predict("{t}/nothere.png"), {2}, ["{t}/preds.csv"], names=("nothere.png",), needs="run"),
    C("input-explain-corrupt-image", lambda c: mk.write(c.t / "in.png", JPEG_GARBAGE), ["explain", "{run}", "{t}/in.png", "--out", "{t}/x.png"], {2}, ["{t}/x.png"], names=("in.png",), needs="run"),
    C("input-explain-unknown-target", lambda c: mk.grey(c.t / "in.png"), ["explain", "{run}", "{t}/in.png", "--out", "{t}/x.png", "--target", "nosuchclass"], {2}, ["{t}/x.png"], names=("nosuchclass",), needs="run"),
    C("input-evaluate-unknown-split", nothing, EVAL + ["--split", "holdout"], {2}, RUN_OUT, names=("holdout",), needs="run"),
    C("input-evaluate-data-missing", nothing, EVAL + ["--data", "{t}/nowhere"], {2}, RUN_OUT, names=("nowhere",), needs="run"),

    # command-line mistakes, through the console script
    C("cli-bare", nothing, [], {0, 2}, real=True, parser=True),
    C("cli-version", nothing, ["--version"], {0}, real=True, parser=True, check=prints_version),
    C("cli-option-typo", dataset(), ["train", "{t}/mydata", "--out", "{t}/out", "--epoch", "2"], {2}, real=True, parser=True),
    C("cli-option-typo-inprocess", dataset(), ["train", "{t}/mydata", "--out", "{t}/out", "--epoch", "2"], {2}, parser=True, kind="cli-option-typo"),
    C("cli-epochs-not-a-number", dataset(), ["train", "{t}/mydata", "--out", "{t}/out", "--epochs", "two"], {2}, real=True, parser=True),
    C("cli-epochs-not-a-number-inprocess", dataset(), ["train", "{t}/mydata", "--out", "{t}/out", "--epochs", "two"], {2}, parser=True, kind="cli-epochs-not-a-number"),
    C("cli-missing-out", dataset(), ["train", "{t}/mydata"], {2}, real=True, parser=True),
    C("cli-unknown-verb", nothing, ["trian", "{t}/mydata"], {2}, real=True, parser=True),
    C("cli-unknown-verb-inprocess", nothing, ["trian", "{t}/mydata"], {2}, parser=True, kind="cli-unknown-verb"),
    C("cli-strict-true", dataset(), ["train", "{t}/mydata", "--out", "{t}/out", "--strict", "true"], {2}, real=True, parser=True),
    C("cli-set-seed", dataset(), train("{t}/mydata", "{t}/out", "--set", "seed=1"), {0}, ["{t}/out"], real=True, parser=True),
    C("cli-set-unknown-key", dataset(), train("{t}/mydata", "{t}/out", "--set", "nosuch=1"), {2}, ["{t}/out"], names=("nosuch",), real=True),
    C("cli-time-budget-no-unit", dataset(), train("{t}/mydata", "{t}/out", "--time-budget", "15"), {2}, ["{t}/out"], names=("15m",), real=True),
    C("cli-predict-no-inputs", nothing, ["predict"], {2}, real=True, parser=True),
    C("cli-bootstrap-below-minimum", nothing, ["evaluate", "{run}", "--bootstrap", "5"], {2}, RUN_OUT, needs="run", real=True, parser=True),
    C("cli-float-not-a-number", nothing, ["evaluate", "{run}", "--target-sensitivity", "high"], {2}, RUN_OUT, needs="run", real=True, parser=True),
    C("cli-image-size-negative", dataset(), train("{t}/mydata", "{t}/out", "--image-size", "-5"), {2}, ["{t}/out"], names=("image-size",)),
]

RESULTS: dict[str, tuple[Case, object]] = {}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny trained run (and an exported copy) shared by every case; cases work on copies."""
    from medclassify.config import TrainConfig
    from medclassify.data.synthetic import generate_dataset
    from medclassify.inference.export import export_onnx
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train as fit

    root = tmp_path_factory.mktemp("corpus-base")
    data = generate_dataset(root / "data", per_class=12, size=32, splits={"train": 0.75, "test": 0.25})
    config = TrainConfig(data=str(data), out=str(root / "run"), model="seed_cnn", pretrained="none", image_size=32,
                         epochs=1, time_budget=None, batch_size=8, normalize="fixed", augment="none")
    run = fit(config, reporter=Reporter(quiet=True)).run_dir
    exported = root / "exported"
    shutil.copytree(run, exported)
    export_onnx(exported, reporter=Reporter(quiet=True))
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path, capsys, monkeypatch):
    t = tmp_path / "case"
    t.mkdir()
    ctx = Ctx(t, base / "data")
    if case.needs:
        shutil.copytree(base / ("run" if case.needs == "run" else "exported"), ctx.run)
    case.setup(ctx)
    argv = [ctx.fmt(a) for a in case.argv]
    outputs = [Path(ctx.fmt(o)) for o in case.outputs]
    before, base_before = snapshot(t, outputs), snapshot(base)
    if case.real:
        outcome = run_console(argv, cwd=t, env=ctx.env, preexec=case.preexec)
    else:
        for k, v in ctx.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.chdir(t)
        outcome = run_inprocess(argv, capsys)
    # pytest names tmp_path after the case id: hide it, so that a fragment is found only where the command put it
    outcome.out, outcome.err = (s.replace(str(tmp_path), "<tmp>") for s in (outcome.out, outcome.err))
    changes = tree_diff(before, snapshot(t, outputs)) + [f"shared {d}" for d in tree_diff(base_before, snapshot(base))]
    problems = judge(outcome, set(case.exits), parser=case.parser, skip=case.skip, names=case.names,
                     outputs=outputs, changes=changes)
    if case.check and not problems:
        extra = case.check(ctx, outcome)
        if extra:
            problems.append(extra)
    outcome.problems = problems
    RESULTS[case.id] = (case, outcome)
    assert not problems, f"{case.id}: " + "; ".join(problems) + f"\n--- stdout\n{outcome.out[-1500:]}\n--- stderr\n{outcome.err[-3000:]}{outcome.crash[-3000:]}"


def test_corpus_summary(capsys):
    """At least 60 kinds, and a summary of what the cases run in this session gave."""
    kinds = {c.kind or c.id for c in CASES}
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    ran = list(RESULTS.values())
    tracebacks = sum(bool(o.crash or "Traceback (most recent call last)" in o.text) for _, o in ran)
    lines = [f"bad-input corpus: {len(kinds)} kinds in {len(CASES)} cases; {len(ran)} run in this session "
             f"({sum(c.real for c, _ in ran)} through the console script)",
             f"  exit 0 with a visible skip: {sum(o.code == 0 and o.skipped for _, o in ran)}",
             f"  exit 0 (valid odd input, or no skip required): {sum(o.code == 0 and not o.skipped for _, o in ran)}",
             f"  exit 2: {sum(o.code == 2 for _, o in ran)}",
             f"  other exits: {sum(o.code not in (0, 2) for _, o in ran)}",
             f"  tracebacks: {tracebacks}",
             f"  failing cases: {sum(bool(o.problems) for _, o in ran)}"]
    by_cat: dict[str, int] = {}
    for k in kinds:
        by_cat[k.split("-")[0]] = by_cat.get(k.split("-")[0], 0) + 1
    lines.append("  kinds per category: " + ", ".join(f"{k} {n}" for k, n in sorted(by_cat.items())))
    lines += [f"  FAIL {c.id}: " + "; ".join(o.problems) for c, o in ran if o.problems]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    log = os.environ.get("MEDCLASSIFY_CORPUS_LOG")  # one JSON line per case, for whoever fixes them
    if log:
        with open(log, "w") as f:
            for c, o in ran:
                f.write(json.dumps({"id": c.id, "code": o.code, "problems": o.problems,
                                    "last": (o.err.strip() or o.out.strip()).splitlines()[-1:]}) + "\n")
    assert len(kinds) >= 60
