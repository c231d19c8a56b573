import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's image cache."""
    old = os.environ.get("MEDCLASSIFY_CACHE")
    os.environ["MEDCLASSIFY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MEDCLASSIFY_CACHE", None)
    else:
        os.environ["MEDCLASSIFY_CACHE"] = old


@pytest.fixture
def quiet():
    from medclassify.reporting import Reporter

    return Reporter(quiet=True)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Two grey classes, class-per-folder with train/test split folders, 32 px."""
    from medclassify.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("ds") / "data", per_class=30, size=32, splits={"train": 0.8, "test": 0.2})


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} is absent (integration data lives in ../shared/datasets)")
    return path


def train_tiny(data, out, **overrides) -> Path:
    """A seed_cnn run (32 px, 3 epochs, a few seconds) on `data`; `overrides` change the config."""
    from medclassify.config import TrainConfig
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    config = TrainConfig(**{"data": str(data), "out": str(out), "model": "seed_cnn", "image_size": 32, "epochs": 3,
                            "time_budget": None, "batch_size": 16, "augment": "light", "early_stopping": 0,
                            "normalize": "fixed", "lr": 3e-3, **overrides})
    return train(config, reporter=Reporter(quiet=True)).run_dir


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_run(small_dataset, tmp_path_factory):
    """A trained seed_cnn run on small_dataset, with a test split. Tests that modify a run copy it
    first (see run_copy)."""
    return train_tiny(small_dataset, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return copy_run(tiny_run, tmp_path / "run")
