"""Running test scripts in their own processes, always bounded in time and cleaned up.

TensorFlow's logical devices and cluster must be set before it starts, so
distribution tests run scripts from `tests/scripts/` in fresh interpreters.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "scripts"


def script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_script(
    name: str, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Runs `tests/scripts/<name>` to completion; raises on timeout (the child is killed)."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(**env),
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def workers(name: str, *args: str, count: int = 2, **env: str) -> Iterator[list[subprocess.Popen]]:
    """Starts `count` copies of a script as the workers of one TF_CONFIG cluster
    on loopback ports; every one still running is killed on exit."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    try:
        for index in range(count):
            config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(SCRIPTS / name), *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=script_env(TF_CONFIG=json.dumps(config), **env),
                )
            )
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def finish(processes: list[subprocess.Popen], deadline: float) -> list[str]:
    """Waits for every process until `deadline` (time.monotonic); returns their outputs.
    On timeout the processes are killed and the test fails with their output."""
    outputs = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            output, _ = process.communicate()
            raise AssertionError(
                f"worker still running at the deadline:\n{output[-3000:]}"
            ) from None
        outputs.append(output)
    return outputs


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
