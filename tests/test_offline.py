"""Hub weights fail fast offline, with a message that says what to do."""

import socket
import time

import pytest

import kerastl
from kerastl.backbones.hub_access import HubUnavailableError


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """DNS fails at once, as on this project's machines; no cached weights."""

    def refuse(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle-cache"))


def _fails_fast(call, *fragments):
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError) as caught:
        call()
    assert time.perf_counter() - started < 15
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_imagenet_weights_offline(no_network):
    _fails_fast(
        lambda: kerastl.create_backbone("mobilenet", weights="imagenet"),
        "no model hub is reachable",
        "storage.googleapis.com",
        "weights='/path/to/file.h5'",
    )


def test_kaggle_preset_offline(no_network):
    _fails_fast(
        lambda: kerastl.create_backbone("bert_base_en_uncased"),
        "no model hub is reachable",
        "www.kaggle.com",
        "weights='/path/to/dir'",
    )


def test_hugging_face_handle_offline_does_not_retry_for_long(no_network):
    _fails_fast(
        lambda: kerastl.create_backbone(
            "bert_base_en_uncased", weights="hf://google-bert/bert-base-uncased"
        ),
        "huggingface.co",
    )


def test_transfer_model_offline_imagenet_raises_the_same_error(no_network):
    _fails_fast(lambda: kerastl.TransferModel("mobilenet", num_classes=2), "Download them")
