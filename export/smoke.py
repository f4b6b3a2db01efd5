"""Smoke check of a served kerastl bundle: replays its example requests.

    python export/smoke.py --url http://localhost:8501 --model elpv serving/elpv/1

Sends every `assets.extra/requests/<signature>.json` of the bundle to the
running server and compares the answers with the recorded
`<signature>.response.json` (probabilities within `--atol`, identical class
names). Prints one line per signature; exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rest_client import predict


def check(url: str, model: str, bundle: str, atol: float = 1e-4) -> list[tuple[str, bool, str]]:
    """Replays a bundle's example requests against a server.

    Args:
        url: the server's REST address.
        model: the served model's name.
        bundle: the version directory written by `kerastl.export.serving_bundle`.
        atol: largest probability difference accepted.

    Returns:
        `(signature, passed, detail)` per example request.

    Example:
        >>> check("http://localhost:8501", "elpv", "serving/elpv/1")
        [('image_bytes', True, 'max diff 0'), ...]
    """
    pattern = os.path.join(bundle, "assets.extra", "requests", "*.json")
    bodies = sorted(p for p in glob.glob(pattern) if not p.endswith(".response.json"))
    if not bodies:
        raise FileNotFoundError(f"No example requests under {os.path.dirname(pattern)!r}.")
    results = []
    for path in bodies:
        with open(path) as file:
            body = json.load(file)
        with open(path[: -len(".json")] + ".response.json") as file:
            expected = json.load(file)["predictions"]
        signature = body["signature_name"]
        try:
            answer = predict(url, model, body)["predictions"]
        except (RuntimeError, OSError) as error:
            results.append((signature, False, str(error)))
            continue
        results.append((signature, *_compare(answer, expected, atol)))
    return results


def _compare(answer, expected, atol):
    key = "probabilities" if "probabilities" in expected[0] else "predictions"
    if len(answer) != len(expected):
        return False, f"{len(answer)} predictions, expected {len(expected)}"
    got = np.array([row[key] for row in answer], dtype=float)
    want = np.array([row[key] for row in expected], dtype=float)
    diff = float(np.max(np.abs(got - want)))
    names_match = all(
        a.get("class_name") == e.get("class_name") for a, e in zip(answer, expected, strict=True)
    )
    passed = diff <= atol and names_match
    return passed, f"max diff {diff:.2g}" + ("" if names_match else ", class names differ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the version directory, e.g. serving/elpv/1")
    parser.add_argument("--url", default="http://localhost:8501")
    parser.add_argument("--model", required=True)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    results = check(args.url, args.model, args.bundle, args.atol)
    for signature, passed, detail in results:
        print(f"{'ok    ' if passed else 'FAILED'} {signature}: {detail}")
    return 0 if all(passed for _, passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
