import shutil

import numpy as np
from PIL import Image

from medclassify.cli import main


def test_explain_one_image_of_another_size_and_channel_count(tiny_run, tmp_path, capsys):
    # the run is 32 px grey; this is a 90x70 RGB image: preprocessing resizes and converts it
    rgb = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    for method in ("gradcam", "gradcam++", "occlusion", "activations"):
        out = tmp_path / f"{method}.png"
        assert main(["explain", str(tiny_run), str(tmp_path / "x.png"), "--method", method, "--out", str(out), "-q"]) == 0
        assert Image.open(out).size[0] >= 64
    assert main(["explain", str(tiny_run), str(tmp_path / "x.png"), "--method", "lime", "--samples", "50",
                 "--out", str(tmp_path / "lime.png"), "-q"]) == 0


def test_explain_a_folder_in_batch(tiny_run, small_dataset, tmp_path, capsys):
    """Every readable image of the folder explained; an unreadable one counted, not fatal."""
    folder = tmp_path / "in"
    shutil.copytree(small_dataset / "test" / "lesion", folder)
    good = sorted(p.stem for p in folder.glob("*.png"))
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["explain", str(tiny_run), str(folder), "--out", str(tmp_path / "cams"), "--target", "lesion"]) == 0
    written = sorted(p.name for p in (tmp_path / "cams").glob("*.png"))
    assert good and written == [f"{stem}_gradcam.png" for stem in good]
    assert f"1 of {len(good) + 1} image(s) could not be read" in capsys.readouterr().err


def test_explain_errors_are_one_line(tiny_run, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(img)
    cases = [
        (["--method", "shap"], "Unknown explanation method"),
        (["--target", "tumour"], "not a class of run"),
        (["--layer", "nope"], "has no layer 'nope'"),
        (["--out", str(tmp_path / "x.jpg")], "must be a .png"),
    ]
    for extra, message in cases:
        assert main(["explain", str(tiny_run), str(img), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(["explain", str(tiny_run), str(tmp_path / "bad.png"), "-q"]) == 2
    assert "cannot be read" in capsys.readouterr().err
