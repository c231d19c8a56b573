"""Each HTML page medclassify writes (report, audit, eda, compare) opened in headless Chromium for a
tiny trained run: the key elements render, every embedded image decodes, nothing is fetched."""

import shutil
from pathlib import Path

import pytest

from medclassify.cli import main

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def pages(tiny_run, small_dataset, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get install chromium` to check the pages render")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    root = tmp_path_factory.mktemp("pages")
    run, other = root / "run", root / "other"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run, other)
    assert main(["report", str(run), "-q"]) == 0
    assert main(["audit", str(small_dataset), "--out", str(root / "audit"), "-q"]) in (0, 1)
    assert main(["eda", str(small_dataset), "--out", str(root / "eda"), "-q"]) == 0
    assert main(["compare", str(run), str(other), "--out", str(root / "compare.html"), "-q"]) == 0
    return {"report": run / "report.html", "audit": root / "audit" / "audit.html", "eda": root / "eda" / "eda.html",
            "compare": root / "compare.html"}


# page -> (CSS selector, least number of matches) that must be visible
KEY_ELEMENTS = {
    "report": [("#warnings li", 1), ("#cards .card", 2), ("#metrics tr", 4), ("#per-class tr", 3), ("#counts tr", 3),
               ("#run-facts li", 4)],
    "audit": [("#summary li", 1), ("#counts tr", 3), ("h2", 3)],
    "eda": [("#counts tr", 3), ("figure img", 4)],
    "compare": [("#leaderboard tr", 3), ("#pairs tr", 2), ("figure img", 1)],
}


def test_every_page_renders_its_key_elements(pages, tmp_path):
    from playwright.sync_api import sync_playwright

    found, problems = {}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            for name, path in pages.items():
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.on("console", lambda msg, n=name: problems.append(f"{n}: {msg.text}") if msg.type == "error" else None)
                page.on("requestfailed", lambda req, n=name: problems.append(f"{n}: failed request {req.url}"))
                page.on("request", lambda req, n=name: None if req.url.startswith(("file:", "data:"))
                        else problems.append(f"{n}: fetched {req.url}"))
                page.goto(path.as_uri(), wait_until="load")
                broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
                found[name] = {sel: sum(page.locator(sel).nth(i).is_visible() for i in range(page.locator(sel).count()))
                               for sel, _ in KEY_ELEMENTS[name]}
                found[name]["broken images"] = broken
                found[name]["stylesheet"] = page.evaluate("getComputedStyle(document.querySelector('th')).backgroundColor")
                page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
                page.close()
        finally:
            browser.close()
    assert problems == []
    for name, elements in KEY_ELEMENTS.items():
        assert found[name]["broken images"] == 0, name
        assert found[name]["stylesheet"] == "rgb(242, 245, 248)", name  # the one shared stylesheet applied
        for sel, least in elements:
            assert found[name][sel] >= least, (name, sel, found[name])
