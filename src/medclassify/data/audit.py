"""Dataset audit: counts, imbalance, sizes and modes, unreadable files, grey stored as RGB, exact and
near duplicates, cross-split leakage, conflicting labels and patient overlap.

The report is a plain dict with a stable schema (`schema`, `version`); audit.json is that dict.
Groups of duplicates are connected components of the duplicate pairs, so a group lists every copy."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Sequence

import numpy as np

from . import hashing
from .cache import PagedRows, release_pages
from .fingerprints import Fingerprints, compute_fingerprints
from .sources import DatasetIndex, Record, attach_patients, missing_classes, scan_folder
from .splits import patient_overlap
from ..io import write_text
from .audit_html import write_html

SCHEMA = "medclassify.audit"
SCHEMA_VERSION = 1
MAX_LISTED = 500  # groups / files listed in full in audit.json; counts are always complete


@dataclass
class Duplicates:
    exact: list[list[str]]  # groups of paths with identical decoded pixels
    near: list[list[str]]  # groups of near duplicates (each includes any exact copies)
    pairs: int  # confirmed near-duplicate pairs
    candidates: int  # hash candidates checked by correlation
    params: dict = field(default_factory=dict)

    def linked(self) -> list[list[str]]:
        """Every group that must stay on one side of a split."""
        return self.near


def _components(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for a in np.unique(np.concatenate([i, j])).tolist():
        groups[find(a)].append(a)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def find_duplicates(fp: Fingerprints, max_hamming: int = hashing.MAX_HAMMING,
                    min_correlation: float = hashing.MIN_CORRELATION) -> Duplicates:
    rows = np.flatnonzero(fp.readable)
    exact_of = fp.exact.__getitem__
    by_hash = [g for g in (list(v) for _, v in groupby(sorted(rows.tolist(), key=exact_of), key=exact_of)) if len(g) > 1]
    exact = sorted(sorted(fp.paths[r] for r in g) for g in by_hash)
    # Flat images (one grey level) have no perceptual hash; the exact hash groups them.
    search, mu, hashes = _perceptual(fp, rows)
    owner = np.repeat(np.arange(len(search)), hashes.shape[1])
    i, j, _ = hashing.near_pairs(hashes[:, hashing.CENTRE], hashes.ravel(), owner, max_hamming)
    candidates = len(i)
    sel = rows[search]
    # Candidates pair any two images: their rows are read at random, so the pages are released as they go.
    close = hashing.coefficient_cosines(PagedRows(fp.coefs), mu, sel[i], sel[j]) >= hashing.MIN_COSINE
    i, j = i[close], j[close]
    ok = hashing.pair_correlations(PagedRows(fp.thumbs), sel[i], sel[j]) >= min_correlation
    release_pages(fp.coefs)
    release_pages(fp.thumbs)
    i, j = search[i[ok]], search[j[ok]]
    ex_i = [g[0] for g in by_hash for _ in g[1:]]
    ex_j = [m for g in by_hash for m in g[1:]]
    all_i = np.concatenate([i, np.searchsorted(rows, np.array(ex_i, np.int64))])  # rows -> positions in `rows`
    all_j = np.concatenate([j, np.searchsorted(rows, np.array(ex_j, np.int64))])
    near = sorted(sorted(fp.paths[rows[k]] for k in g) for g in _components(len(rows), all_i, all_j))
    return Duplicates(exact, near, int(ok.sum()), candidates,
                      {"max_hamming": max_hamming, "min_cosine": hashing.MIN_COSINE, "min_correlation": min_correlation})


CHUNK = 4096  # images whose coefficients are read at once


def _perceptual(fp: Fingerprints, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions in `rows` of the images with a perceptual hash, the dataset mean, their hashes),
    reading the memmapped coefficients a chunk at a time."""
    search, total = [], np.zeros(hashing.HASH_BITS, np.float64)
    for s in range(0, len(rows), CHUNK):
        centre = np.asarray(fp.coefs[rows[s : s + CHUNK], hashing.CENTRE])
        keep = np.abs(centre).sum(axis=1) > 0
        search.append(s + np.flatnonzero(keep))
        total += centre[keep].sum(axis=0, dtype=np.float64)
        release_pages(fp.coefs)
    search_a = np.concatenate(search) if search else np.zeros(0, np.int64)
    mu = (total / max(1, len(search_a))).astype(np.float32)
    mu[hashing.ODD_COLUMNS] = 0.0  # as hashing.dataset_mean: mirror-symmetric
    hashes = np.zeros((len(search_a), len(hashing.ANGLES)), np.uint64)
    for s in range(0, len(search_a), CHUNK):
        hashes[s : s + CHUNK] = hashing.perceptual_hashes(np.asarray(fp.coefs[rows[search_a[s : s + CHUNK]]]), mu)
        release_pages(fp.coefs)
    return search_a, mu, hashes


def _member(r: Record | None, path: str) -> dict:
    if r is None:
        return {"path": path, "split": None, "label": None, "patient": None}
    return {"path": path, "split": r.split, "label": r.label, "patient": r.patient}


def _group_entry(paths: list[str], by_path: dict[str, Record], kind: str) -> dict:
    members = [_member(by_path.get(p), p) for p in paths]
    return {"kind": kind, "size": len(members),
            "splits": sorted({m["split"] for m in members if m["split"]}),
            "labels": sorted({m["label"] for m in members if m["label"]}),
            "members": members}


def _present(groups: list[list[str]], by_path: dict) -> list[list[str]]:
    """The groups restricted to the audited records, where two or more members remain."""
    out = []
    for g in groups:
        kept = [p for p in g if p in by_path]
        if len(kept) > 1:
            out.append(kept)
    return out


def _split_pairs(groups: list[dict]) -> dict[str, int]:
    out: Counter = Counter()
    for g in groups:
        s = g["splits"]
        for a in range(len(s)):
            for b in range(a + 1, len(s)):
                out[f"{s[a]}/{s[b]}"] += 1
    return dict(sorted(out.items()))


def _imbalance(counts: dict[str, dict[str, int]], classes: list[str]) -> dict:
    out = {}
    for split, c in counts.items():
        values = [c.get(k, 0) for k in classes]
        out[split] = round(max(values) / min(values), 2) if min(values) > 0 else None
    total = [sum(c.get(k, 0) for c in counts.values()) for k in classes]
    out["all"] = round(max(total) / min(total), 2) if min(total) > 0 else None
    return out


def build_report(index: DatasetIndex, records: Sequence[Record], fp: Fingerprints, dups: Duplicates,
                 patient_pattern: str | None = None) -> dict:
    """The audit of `records` (with whatever splits they carry) as a JSON-ready dict."""
    by_path = {r.path: r for r in records}
    rows = fp.rows([r.path for r in records])
    readable = fp.readable[rows]
    counts: dict[str, Counter] = {}
    for r in records:
        counts.setdefault(r.split or "unsplit", Counter())[r.label] += 1
    counts_d = {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}
    ok_rows = rows[readable]
    sizes = Counter(f"{fp.width[k]}x{fp.height[k]}" for k in ok_rows.tolist())
    modes = Counter(fp.mode[k] for k in ok_rows.tolist())
    grey_rgb = [fp.paths[k] for k in ok_rows.tolist() if fp.gray[k] and fp.channels[k] == 3]
    unreadable = sorted([{"path": p, "reason": fp.errors[p]} for p in by_path if p in fp.errors]
                        + [{"path": p, "reason": r} for p, r in index.skipped.items()], key=lambda u: u["path"])
    exact_groups, near_groups = _present(dups.exact, by_path), _present(dups.near, by_path)
    exact = [_group_entry(g, by_path, "exact") for g in exact_groups]
    exact_sets = {tuple(g) for g in exact_groups}
    near = [_group_entry(g, by_path, "exact" if tuple(g) in exact_sets else "near") for g in near_groups]
    leak = [g for g in near if len(g["splits"]) > 1]
    exact_leak = [g for g in exact if len(g["splits"]) > 1]
    conflicts = [g for g in near if len(g["labels"]) > 1]
    overlap = patient_overlap(list(records))
    overlap_pairs: Counter = Counter()
    for splits in overlap.values():
        for a in range(len(splits)):
            for b in range(a + 1, len(splits)):
                overlap_pairs[f"{splits[a]}/{splits[b]}"] += 1
    patients = sorted({r.patient for r in records if r.patient})
    report = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "root": index.root,
        "layout": index.layout,
        "images": len(records),
        "classes": index.classes,
        "counts": counts_d,
        "missing_classes": missing_classes(index),
        "imbalance_ratio": _imbalance(counts_d, index.classes),
        "sizes": {"distinct": len(sizes), "most_common": dict(sizes.most_common(20)),
                  "width_range": [int(fp.width[ok_rows].min()), int(fp.width[ok_rows].max())] if len(ok_rows) else None,
                  "height_range": [int(fp.height[ok_rows].min()), int(fp.height[ok_rows].max())] if len(ok_rows) else None},
        "modes": dict(modes.most_common()),
        "gray_stored_as_rgb": {"count": len(grey_rgb), "examples": grey_rgb[:10]},
        "unreadable": {"count": len(unreadable), "files": unreadable[:MAX_LISTED]},
        "ignored_non_image_files": len(index.ignored_files),
        "unlabelled_images": len(index.unlabelled),
        "left_out_folders": list(index.left_out),
        "exact_duplicates": {
            "groups": len(exact), "images": sum(g["size"] for g in exact),
            "within_one_split_and_class": sum(1 for g in exact if len(g["splits"]) <= 1 and len(g["labels"]) == 1),
            "cross_split_groups": len(exact_leak), "cross_split_by_splits": _split_pairs(exact_leak),
            "list": exact[:MAX_LISTED]},
        "near_duplicates": {
            "groups": len(near), "images": sum(g["size"] for g in near), "pairs": dups.pairs,
            "candidates_checked": dups.candidates, "params": dups.params, "list": near[:MAX_LISTED]},
        "leakage": {"groups": len(leak), "images": sum(g["size"] for g in leak), "by_splits": _split_pairs(leak),
                    "list": leak[:MAX_LISTED]},
        "conflicting_labels": {"groups": len(conflicts), "images": sum(g["size"] for g in conflicts),
                               "list": conflicts[:MAX_LISTED]},
        "patients": {"pattern": patient_pattern, "images_with_id": sum(1 for r in records if r.patient),
                     "patients": len(patients), "in_several_splits": len(overlap),
                     "by_splits": dict(sorted(overlap_pairs.items())),
                     "examples": {p: overlap[p] for p in sorted(overlap)[:20]}},
    }
    report["summary"] = {
        "leakage": bool(leak) or bool(overlap),
        "duplicate_leakage_groups": len(leak),
        "patients_in_several_splits": len(overlap),
        "conflicting_label_groups": len(conflicts),
        "exact_duplicate_groups": len(exact),
        "near_duplicate_groups": len(near),
        "unreadable": len(unreadable),
    }
    return report


@dataclass
class AuditResult:
    report: dict
    index: DatasetIndex
    fingerprints: Fingerprints
    duplicates: Duplicates


def fingerprint_index(index: DatasetIndex, reporter=None, workers: int | None = None) -> Fingerprints:
    paths = sorted({r.path for r in index.records})
    if reporter is None:
        return compute_fingerprints(paths, workers)
    with reporter.task("Auditing images (hashes, sizes)", len(paths)) as bar:
        fp = compute_fingerprints(paths, workers, progress=lambda done, total: bar.update(done))
    if not fp.hit:
        reporter.info(f"Audit: fingerprinted {len(paths)} images (cached in {fp.directory}).")
    return fp


def audit_dataset(data: str | Path, patient_pattern: str | None = None, reporter=None,
                  workers: int | None = None, splits: str | None = None) -> AuditResult:
    index = attach_patients(scan_folder(data, splits), patient_pattern)
    fp = fingerprint_index(index, reporter, workers)
    dups = find_duplicates(fp)
    return AuditResult(build_report(index, index.records, fp, dups, patient_pattern), index, fp, dups)


HELD_OUT_ORDER = ("test", "val", "train")  # a leaking group keeps its copies in the first split it spans


def dedupe(records: list[Record], report: dict) -> tuple[list[Record], dict[str, str]]:
    """Drop every member of duplicate groups whose labels conflict, and the copies of leaking groups
    outside their most held-out split (train copies of val/test images, val copies of test images).
    Returns the kept records and {path: why} of the dropped ones."""
    dropped: dict[str, str] = {}
    for g in report["conflicting_labels"]["list"]:
        for m in g["members"]:
            dropped[m["path"]] = f"duplicate group with conflicting labels {'/'.join(g['labels'])}"
    for g in report["leakage"]["list"]:
        keep = next(s for s in HELD_OUT_ORDER if s in g["splits"])
        for m in g["members"]:
            if m["split"] != keep:
                dropped.setdefault(m["path"], f"duplicate of a {keep} image")
    return [r for r in records if r.path not in dropped], dropped


def summary_lines(report: dict) -> list[str]:
    """The console summary: one line per finding, problems first."""
    lines: list[str] = []
    counts = ", ".join(f"{split}: " + " ".join(f"{c} {n}" for c, n in cls.items()) for split, cls in report["counts"].items())
    lines.append(f"{report['images']} images, {len(report['classes'])} classes ({counts}).")
    lk = report["leakage"]
    if lk["groups"]:
        lines.append(f"LEAKAGE: {lk['groups']} duplicate group(s) span splits ({', '.join(f'{k} {v}' for k, v in lk['by_splits'].items())}); "
                     "scores on those splits are inflated.")
    pt = report["patients"]
    if pt["in_several_splits"]:
        lines.append(f"LEAKAGE: {pt['in_several_splits']} patient(s) have images in several splits "
                     f"({', '.join(f'{k} {v}' for k, v in pt['by_splits'].items())}).")
    cf = report["conflicting_labels"]
    if cf["groups"]:
        lines.append(f"CONFLICTING LABELS: {cf['groups']} duplicate group(s) ({cf['images']} images) carry more than one label.")
    ex, nr = report["exact_duplicates"], report["near_duplicates"]
    lines.append(f"Exact duplicates: {ex['groups']} group(s), {ex['images']} images; "
                 f"{ex['cross_split_groups']} group(s) across splits.")
    lines.append(f"Near duplicates (incl. exact): {nr['groups']} group(s), {nr['images']} images.")
    if pt["images_with_id"]:
        lines.append(f"Patients: {pt['patients']} ids from {pt['images_with_id']} images; {pt['in_several_splits']} in several splits.")
    un = report["unreadable"]
    if un["count"]:
        first = un["files"][0]
        lines.append(f"Unreadable: {un['count']} file(s) (first: {first['path']}: {first['reason']}).")
    g = report["gray_stored_as_rgb"]["count"]
    if g:
        lines.append(f"{g} image(s) store single-channel content as RGB (trained as one channel).")
    ratio = report["imbalance_ratio"].get("all")
    lines.append(f"Imbalance ratio (largest/smallest class): {ratio}; sizes: {report['sizes']['distinct']} distinct "
                 f"(most common {next(iter(report['sizes']['most_common']), '-')}); modes: "
                 + ", ".join(f"{m} {n}" for m, n in report["modes"].items()) + ".")
    for split, lack in report["missing_classes"].items():
        lines.append(f"The {split} split has no images of {', '.join(lack)}.")
    left = report.get("left_out_folders") or []
    if left:
        lines.append(f"Left out: {len(left)} top-level folder(s) beside the split folders ({', '.join(Path(p).name for p in left)}); "
                     "name them with --splits to use them.")
    return lines


def write_audit(result: AuditResult, out: Path) -> list[str]:
    """audit.json and audit.html in `out`; returns the summary lines."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = summary_lines(result.report)
    write_text(out / "audit.json", json.dumps(result.report, indent=1))
    write_html(result.report, lines, out / "audit.html")
    return lines
