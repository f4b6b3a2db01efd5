"""The `kerastl` command line."""

import os

import pytest

from kerastl.cli import main
from tests.test_assets import SKLEARN_IMAGES


def test_list_backbones(capsys):
    assert main(["list-backbones", "resnet5*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["resnet50", "resnet50v2"]


def test_list_backbones_no_match_is_an_error(capsys):
    assert main(["list-backbones", "zzz*"]) == 2
    assert "No backbone matches 'zzz*'" in capsys.readouterr().err


def test_describe_prints_the_group_table(capsys):
    assert main(["describe", "mobilenet", "--weights", "none", "--granularity", "fine"]) == 0
    out = capsys.readouterr().out
    assert "block_13" in out and "total" in out and "3,228,864" in out


def test_describe_unknown_name_exits_2_with_the_closest(capsys):
    assert main(["describe", "resnet05"]) == 2
    assert "Closest registered names: ['resnet50'" in capsys.readouterr().err


@pytest.mark.slow
def test_describe_predict_classifies_with_the_offline_weights(capsys):
    image = os.path.join(SKLEARN_IMAGES, "china.jpg")
    assert main(["describe", "efficientnet-lite0", "--predict", image, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg  442:" in out
