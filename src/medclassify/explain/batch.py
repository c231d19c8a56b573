"""Explaining files: one image to one PNG, or every image of a folder into an output folder."""

from __future__ import annotations

from pathlib import Path

from ..data.images import UnreadableImage
from ..errors import ConfigError, DataError
from ..inference.predictor import collect_inputs
from ..io import check_output_file, check_output_folder, write_bytes
from ..reporting import Reporter
from ..run import Run, load_run
from . import get_method
from .base import Explainer
from .overlay import render_png


def target_index(run: Run, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in run.classes:
        raise ConfigError(f"--target {target!r} is not a class of run {run.path}.", f"use one of: {', '.join(run.classes)}.")
    return run.classes.index(target)


def explain_files(run: Run | str | Path, inputs: str | Path, method: str = "gradcam", out: str | Path | None = None,
                  target: str | None = None, layer: str | None = None, reporter: Reporter | None = None,
                  **options) -> list[Path]:
    """Explain one image (out: a .png file, default <image>_<method>.png) or a folder (out: a folder,
    one <name>_<method>.png per image). Returns the written files."""
    return [r["out"] for r in explain_files_detailed(run, inputs, method, out, target, layer, reporter, **options)]


def explain_files_detailed(run: Run | str | Path, inputs: str | Path, method: str = "gradcam",
                           out: str | Path | None = None, target: str | None = None, layer: str | None = None,
                           reporter: Reporter | None = None, **options) -> list[dict]:
    """As explain_files, one record per written file: {"image", "out", "class", "probability",
    "flat", "message"}; `message` ("no localised evidence for CLASS in this image") is set when the
    map is flat, and is also drawn on the picture and reported as a warning."""
    reporter = reporter or Reporter(quiet=True)
    cls = get_method(method)
    run = run if isinstance(run, Run) else load_run(run)
    inputs = Path(inputs)
    paths = collect_inputs([inputs])
    single = inputs.is_file()
    if single:
        dest = [Path(out) if out else inputs.with_name(f"{inputs.stem}_{cls.name}.png")]
        if dest[0].suffix.lower() != ".png":
            raise ConfigError(f"--out {dest[0]} must be a .png file for one image.", "pass --out NAME.png.")
        check_output_file(dest[0], inputs=paths, protected_dirs=[run.path])
    else:
        folder = Path(out) if out else inputs / f"explain-{cls.name}"
        if folder.suffix.lower() == ".png":
            raise ConfigError(f"--out {folder} is a file name but {inputs} is a folder.", "pass --out FOLDER.")
        dest = [folder / f"{Path(p).stem}_{cls.name.replace('+', 'p')}.png" for p in paths]
        check_output_folder(folder, inputs=paths, protected_dirs=[run.path], files=dest)
    # LIME and occlusion run through ONNX Runtime when the run has a current export (Explainer.for_run)
    explainer: Explainer = cls.for_run(run, layer, **options)
    predictor = explainer.predictor
    if explainer.onnx is not None:
        reporter.info(f"Forward passes through ONNX Runtime ({run.path / 'model.onnx'}).")
    t = target_index(run, target)
    written, failed = [], []
    with reporter.task(f"Explaining ({cls.name})", len(paths)) as bar:
        for path, target_path in zip(paths, dest):
            try:
                image = predictor.load(path)
            except UnreadableImage as e:
                if single:
                    raise DataError(f"{path} cannot be read ({e.reason}).", "pass a readable image file.") from None
                failed.append(path)
                bar.advance()
                continue
            expl = explainer.explain(image, t)
            message = expl.message(run.classes)
            if message:
                reporter.warn(f"{Path(path).name}: {message} ({cls.name}); the picture says so instead of a heatmap.")
            write_bytes(target_path, render_png(expl, run.classes, source=path, prep=predictor.prep))
            written.append({"image": str(path), "out": target_path, "class": run.classes[expl.target],
                            "probability": float(expl.probabilities[expl.target]), "flat": expl.flat,
                            "message": message})
            bar.advance()
    if failed:
        reporter.warn(f"{len(failed)} of {len(paths)} image(s) could not be read and were not explained (first: {failed[0]}).")
    return written
