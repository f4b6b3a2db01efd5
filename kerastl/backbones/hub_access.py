"""Loading from model hubs (Keras weight storage, Kaggle, Hugging Face) with a
fast, clear failure when no hub is reachable: never a hang, never a bare
`URL fetch failure`."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 3.0
_NETWORK_ERRORS = (
    "URL fetch failure",
    "Name or service not known",
    "Failed to resolve",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "timed out",
)


class HubUnavailableError(RuntimeError):
    """Pretrained weights had to come from a hub and none could be reached."""


def hub_reachable(host: str, port: int = 443, timeout: float = _CONNECT_TIMEOUT_S) -> bool:
    """Returns whether a TCP connection to `host:port` opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_from_hub(load: Callable[[], T], what: str, host: str, local_hint: str) -> T:
    """Runs `load()` (a real hub download, which may hit a local cache), turning a
    network failure into a `HubUnavailableError` that says what to do offline.

    Hugging Face handles retry for ~25 s when offline, so for them the host is
    probed first and, if unreachable, the load runs with `HF_HUB_OFFLINE=1`
    (cache only, immediate failure).

    Args:
        load: the loading call.
        what: what is being loaded, for the message (e.g. `"resnet50 ImageNet weights"`).
        host: the hub host the load needs.
        local_hint: how to pass local weights instead.

    Returns:
        What `load()` returns.
    """
    offline = host == "huggingface.co" and not hub_reachable(host)
    try:
        with hf_offline(offline):
            return load()
    except Exception as error:  # the hub clients raise many unrelated types
        text = f"{type(error).__name__}: {error}"
        if offline or any(marker in text for marker in _NETWORK_ERRORS):
            raise HubUnavailableError(
                f"Cannot load {what}: no model hub is reachable ({host}) and no cached "
                f"copy was found. This machine looks offline. {local_hint} "
                f"(Underlying error: {text[:300]})"
            ) from error
        raise


@contextlib.contextmanager
def hf_offline(enabled: bool = True) -> Iterator[None]:
    """Holds the Hugging Face client offline (cache and local files only).

    `huggingface_hub` reads `HF_HUB_OFFLINE` once, at import, so both the
    variable and the imported constant are set, and restored afterwards.
    """
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    previous_env = os.environ.get("HF_HUB_OFFLINE")
    previous_constant = hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous_constant
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def preset_host(handle: str) -> str:
    """Returns the host a KerasHub preset handle downloads from."""
    if handle.startswith("hf://"):
        return "huggingface.co"
    if handle.startswith(("gs://",)):
        return "storage.googleapis.com"
    return "www.kaggle.com"
