import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medclassify.reports.report import build_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    info["warnings"] = ["12 exact duplicate images <found> across train and test"]
    (run / "run.json").write_text(json.dumps(info))
    return run, build_report(run)


def test_report_is_self_contained_and_complete(report):
    run, path = report
    assert path == run / "report.html"
    page = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page), "the report must not load anything"
    assert "<script" not in page
    images = re.findall(r"<img [^>]*src=['\"]([^'\"]+)", page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    for heading in ("How to read this report", "Per class", "Confusion matrix", "ROC and precision-recall",
                    "calibration", "Most confidently wrong", "Training", "Run and data"):
        assert heading in page, heading
    # the audit's warning is shown, escaped
    assert "12 exact duplicate images &lt;found&gt;" in page
    metrics = json.loads((run / "metrics" / "test.json").read_text())
    errors = int((np.asarray(metrics["predictions"]["probabilities"]).argmax(1)
                  != np.asarray(metrics["predictions"]["labels"])).sum())
    assert page.count('alt="misclassified image"') == min(8, errors)
    assert f"{100 * metrics['ci']['accuracy'][0]:.1f}%" in page


def test_report_renders_in_headless_chromium_without_console_errors(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install chromium` to check the report renders")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    _, path = report
    problems = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("requestfailed", lambda req: problems.append(f"failed request {req.url}"))
            page.goto(path.as_uri(), wait_until="load")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
            n_images = page.evaluate("document.images.length")
            height = page.evaluate("document.body.scrollHeight")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert n_images >= 5 and broken == 0
    assert height > 2000  # every section laid out, not a collapsed page
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] == height or pixels.shape[0] > 2000
    assert pixels.std() > 10  # text and figures, not a blank page


def test_threshold_that_does_not_carry_over_is_flagged():
    from medclassify import pages
    from medclassify.reports.report import operating_point_view

    def _operating_point(metrics):
        view = operating_point_view(metrics)
        return pages.environment().from_string(
            '{% import "macros.html" as m %}{% if op.worse %}does not carry over: {% for w in op.worse %}'
            '{{ w.name }} {{ w.val | pct }} on validation but {{ w.test | pct }}{% endfor %}{% endif %} '
            '{{ op.prevalence | pct }} of these test images are {{ op.positive_class }}').render(op=view)

    def op(val_spec, test_spec, ci):
        test = {"threshold": 0.6, "sensitivity": 0.97, "specificity": test_spec, "ppv": 0.7, "npv": 0.9,
                "ci": {"sensitivity": [0.95, 0.99], "specificity": ci}}
        return {"split": "test", "n": 100, "confusion_matrix": [[30, 10], [5, 55]],
                "operating_point": {"target": {"sensitivity": 0.95}, "threshold": 0.6, "positive_class": "PNEUMONIA",
                                    "val": {"sensitivity": 0.95, "specificity": val_spec, "ppv": 0.9, "npv": 0.9},
                                    "test": test}}

    shifted = _operating_point(op(0.90, 0.39, [0.33, 0.45]))
    assert "does not carry over" in shifted and "specificity 90.0% on validation but 39.0%" in shifted
    assert "60.0% of these test images are PNEUMONIA" in shifted
    assert "does not carry over" not in _operating_point(op(0.42, 0.39, [0.33, 0.45]))


def test_report_shows_the_coverage_accuracy_curve(report):
    run, path = report
    page = path.read_text()
    metrics = json.loads((run / "metrics" / "test.json").read_text())
    sel = metrics["selective"]
    assert sel["curves"]["confidence"]["coverage"][-1] == 1.0
    assert sel["curves"]["confidence"]["accuracy"][-1] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert sel["abstain_below"] == 0.6 and sel["operating_point"]["kept"] + sel["operating_point"]["referred"] == metrics["n"]
    assert 'id="selective"' in page and 'alt="coverage-accuracy curve"' in page
    assert f"right on {100 * metrics['accuracy']:.1f}% of them" in page
