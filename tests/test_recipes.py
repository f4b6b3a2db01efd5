"""Each recipe runs end to end on its default data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_classify_imagenet_recipe_reproduces_its_documented_result():
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "classify_imagenet.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert "china.jpg: top-5 classes [442, 663, 698, 497, 832]" in result.stdout
    assert "flower.jpg: top-5 classes [985, 947, 309, 994, 310]" in result.stdout
