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
