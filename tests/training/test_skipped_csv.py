"""skipped.csv is valid CSV whatever a skipped file's name holds (commas, quotes)."""

import csv
import shutil


def test_skipped_csv_quotes_names_with_commas_and_quotes(small_dataset, tmp_path, quiet):
    from medclassify.config import TrainConfig
    from medclassify.training.fit import train

    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    cls = sorted(p for p in (data / "train").iterdir() if p.is_dir())[0]
    bad = cls / 'scan, "left".png'
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="seed_cnn", image_size=32, epochs=1,
                         time_budget=None, batch_size=16, early_stopping=0, pretrained="none")
    run = train(config, reporter=quiet).run_dir
    with open(run / "skipped.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"]
    assert [r[0] for r in rows[1:]] == [str(bad)] and all(len(r) == 2 for r in rows)
