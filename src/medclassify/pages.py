"""One HTML kit for every page medclassify writes (report, audit, eda, compare): jinja2 templates
with autoescaping, one stylesheet, shared table/figure/warning macros (templates/macros.html), and
every image embedded as a data URI so each page is one self-contained file.

A base module, like io: the data and evaluation layers both render through it."""

from __future__ import annotations

import base64
import functools
import math


def pct(v, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}%"


def interval(ci, percent: bool = True) -> str:
    """'83.2% – 100.0%' (or '0.832 – 1.000' with percent=False); '' when there is none."""
    if not ci:
        return ""
    lo, hi = ci
    return f"{pct(lo)} – {pct(hi)}" if percent else f"{lo:.3f} – {hi:.3f}"


def num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def count_rows(counts: dict[str, dict[str, int]], classes: list[str]) -> dict:
    """The split x class table every page shows, computed once: splits in train/val/test order."""
    order = [s for s in ("train", "val", "test") if s in counts] + [s for s in counts if s not in ("train", "val", "test")]
    return {"splits": order, "rows": [[c] + [counts[s].get(c, 0) for s in order] for c in classes],
            "totals": [sum(counts[s].values()) for s in order]}


@functools.cache
def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("medclassify", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, interval=interval, num=num, data_uri=data_uri)
    env.globals.update(count_rows=count_rows)
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
