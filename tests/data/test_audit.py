"""The audit on a generated dataset with planted problems, its outputs, the commands, and what
training does with its findings."""

import json

import numpy as np
import pytest
from PIL import Image

from medclassify.cli import main
from medclassify.data.audit import SCHEMA, SCHEMA_VERSION, audit_dataset, write_audit
from medclassify.data.prepare import prepare
from medclassify.errors import DataError
from medclassify.data.synthetic import augmented_copy as augmented
from medclassify.data.synthetic import texture_image as texture

PATTERN = r"p(?P<patient>\d+)_"


def save(root, rel, arr):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """train/test folders, classes a and b, one image per seed; planted: an exact re-encode (PNG->BMP)
    inside train/a, an augmented train image in test (leak), a train image copied under the other
    class (conflict), a truncated file, grey content stored as RGB, and patient 99 in both splits."""
    root = tmp_path_factory.mktemp("planted") / "data"
    seed = 0
    for split, n in (("train", 10), ("test", 4)):
        for cls in "ab":
            for _ in range(n):
                save(root, f"{split}/{cls}/p{seed}_{cls}.png", texture(seed))
                seed += 1
    save(root, "train/a/p0_a_copy.bmp", texture(0))  # exact duplicate, re-encoded
    save(root, "test/a/p200_leak.jpg", augmented(texture(1)))  # near duplicate of train/a/p1_a.png
    save(root, "train/b/p300_conflict.png", augmented(texture(2), angle=-5, flip=False))  # p2 is class a
    save(root, "train/a/p400_rgb.png", np.repeat(texture(400)[..., None], 3, axis=2))
    save(root, "train/b/p99_x.png", texture(500))
    save(root, "test/b/p99_y.png", texture(501))
    good = root / "train" / "b" / "p600_truncated.png"
    save(root, "train/b/p600_truncated.png", texture(600))
    good.write_bytes(good.read_bytes()[:200])
    return root


def paths(group):
    return sorted(m["path"].rsplit("/", 2)[-2] + "/" + m["path"].rsplit("/", 1)[1] for m in group["members"])


def test_audit_finds_every_planted_problem(planted):
    result = audit_dataset(planted, PATTERN)
    r = result.report
    assert r["schema"] == SCHEMA and r["version"] == SCHEMA_VERSION
    assert r["counts"] == {"test": {"a": 5, "b": 5}, "train": {"a": 12, "b": 13}}
    assert r["exact_duplicates"]["groups"] == 1
    assert paths(r["exact_duplicates"]["list"][0]) == ["a/p0_a.png", "a/p0_a_copy.bmp"]
    assert r["exact_duplicates"]["cross_split_groups"] == 0
    assert r["leakage"]["groups"] == 1 and r["leakage"]["by_splits"] == {"test/train": 1}
    assert paths(r["leakage"]["list"][0]) == ["a/p1_a.png", "a/p200_leak.jpg"]
    assert r["conflicting_labels"]["groups"] == 1
    assert paths(r["conflicting_labels"]["list"][0]) == ["a/p2_a.png", "b/p300_conflict.png"]
    assert r["near_duplicates"]["groups"] == 3  # the three planted groups, nothing else
    assert r["unreadable"]["count"] == 1 and "p600_truncated" in r["unreadable"]["files"][0]["path"]
    assert r["unreadable"]["files"][0]["reason"]
    assert r["gray_stored_as_rgb"]["count"] == 1
    assert r["patients"]["in_several_splits"] == 1 and r["patients"]["examples"] == {"99": ["test", "train"]}
    assert r["summary"]["leakage"] is True
    assert r["imbalance_ratio"]["all"] == round(18 / 17, 2)


def test_outputs_and_warm_cache(planted, tmp_path):
    first = audit_dataset(planted, PATTERN)
    again = audit_dataset(planted, PATTERN)
    assert again.fingerprints.hit
    assert again.report["summary"] == first.report["summary"]
    lines = write_audit(again, tmp_path / "audit")
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["summary"] == first.report["summary"]
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # the leak, conflict and exact groups, side by side
    assert any(line.startswith("LEAKAGE") for line in lines) and any(line.startswith("CONFLICTING") for line in lines)


def test_audit_command_strict_exit_codes(planted, tmp_path, capsys):
    assert main(["audit", str(planted), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main(["audit", str(planted), "--out", str(tmp_path / "b"), "--patient-pattern", PATTERN, "--strict", "-q"]) == 1
    assert "LEAKAGE" in capsys.readouterr().out


def test_eda_command(planted, tmp_path):
    assert main(["eda", str(planted), "--out", str(tmp_path / "eda"), "-q"]) == 0
    names = {p.name for p in (tmp_path / "eda").iterdir()}
    assert {"eda.html", "class_distribution.png", "samples.png", "image_sizes.png", "intensity.png"} <= names
    assert all((tmp_path / "eda" / n).stat().st_size > 1000 for n in names if n.endswith(".png"))


def prep(data, reporter, **kw):
    return prepare(str(data), image_size=32, resize="pad", channels=1, normalize="per-image", mean=(0.5,), std=(0.25,),
                   val_fraction=0.2, test_fraction=0.2, seed=0, reporter=reporter, workers=1,
                   **{"patient_pattern": None, **kw})


def test_training_warns_loudly(planted, quiet):
    data = prep(planted, quiet)
    warnings = [m for lvl, m in quiet.messages if lvl == "warning"]
    assert any(m.startswith("LEAKAGE: 1 group") for m in warnings)
    assert any(m.startswith("CONFLICTING LABELS: 1 group") for m in warnings)
    assert data.summary()["audit"]["duplicate_leakage_groups"] == 1
    assert len(data.summary()["audit"]["warnings"]) == 2


def test_dedupe_drops_train_copies_and_conflicts(planted, quiet):
    data = prep(planted, quiet, dedupe=True)
    kept = {r.path.rsplit("/", 1)[1] for r in data.records}
    assert "p200_leak.jpg" in kept and "p1_a.png" not in kept  # the test copy stays
    assert not {"p2_a.png", "p300_conflict.png"} & kept
    assert data.audit["dedupe_dropped"] == 3 and data.audit["warnings"] == []


def test_strict_refuses(planted, quiet):
    with pytest.raises(DataError, match="--strict"):
        prep(planted, quiet, strict=True)
    prep(planted, quiet, strict=True, dedupe=True)  # nothing left to refuse


def test_carved_splits_keep_duplicates_together(tmp_path, quiet):
    for k in range(20):
        save(tmp_path / "d", f"{'ab'[k % 2]}/img{k}.png", texture(k))
    for k in range(6):  # copies that a random split would often put on the other side
        save(tmp_path / "d", f"{'ab'[k % 2]}/img{k}_copy.jpg", augmented(texture(k)))
    data = prep(tmp_path / "d", quiet)
    split_of = {r.path.rsplit("/", 1)[1].split(".")[0]: r.split for r in data.records}
    assert all(split_of[f"img{k}"] == split_of[f"img{k}_copy"] for k in range(6))
    assert data.audit["duplicate_leakage_groups"] == 0 and data.audit["near_duplicate_groups"] == 6


def test_flat_images_are_grouped_only_when_identical(tmp_path):
    from medclassify.data.audit import find_duplicates
    from medclassify.data.fingerprints import compute_fingerprints

    paths = [save(tmp_path, f"{v}_{k}.png", np.full((16, 16), v, np.uint8)) for v in (0, 200) for k in range(3)]
    paths.append(save(tmp_path, "t.png", texture(7)))
    dups = find_duplicates(compute_fingerprints([str(p) for p in paths], workers=1))
    assert sorted(len(g) for g in dups.exact) == [3, 3] and sorted(len(g) for g in dups.near) == [3, 3]
