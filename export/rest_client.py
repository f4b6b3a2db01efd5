"""A REST client for a kerastl bundle served by TF Serving (port 8501).

    python export/rest_client.py --url http://localhost:8501 --model elpv cell1.png cell2.png
    python export/rest_client.py --model reviews --text "a gripping film" "far too long"

sends the images as `image_bytes` (base64 in JSON, as TF Serving expects for
`tf.string` inputs), or with `--text` the raw strings to the `text`
signature, and prints the top classes. Only the standard library is needed
to send requests; `kerastl.export.requests` builds bodies for the other
signatures.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def predict(url: str, model: str, body: dict, version: int | None = None, timeout: float = 30.0):
    """POSTs a `:predict` body and returns the decoded JSON answer.

    Args:
        url: the server's REST address, e.g. `http://localhost:8501`.
        model: the served model's name.
        body: a request body (`{"signature_name": ..., "instances": [...]}`).
        version: a specific version, or None for the latest.
        timeout: seconds to wait.

    Returns:
        The response (`{"predictions": [...]}`).

    Raises:
        RuntimeError: the server answered with an error (its message included),
            or no server answered at `url` (the message says how to start one).

    Example:
        >>> predict("http://localhost:8501", "elpv", image_bytes_body(["cell.png"]))
    """
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}{path} answered {error.code}: {error.read().decode()}") from error
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise RuntimeError(
            f"No TF Serving answered at {url} ({reason}). Start TF Serving on the bundle "
            f"(export/README.md, section 2, port 8501), or pass --url."
        ) from None


def image_bytes_body(paths: list[str], signature: str = "image_bytes") -> dict:
    """A row-format body sending image files as base64 `image_bytes`."""
    instances = []
    for path in paths:
        with open(path, "rb") as file:
            instances.append({"image_bytes": {"b64": base64.b64encode(file.read()).decode()}})
    return {"signature_name": signature, "instances": instances}


def text_body(texts: list[str], signature: str = "text") -> dict:
    """A row-format body sending raw strings to the `text` signature.

    Example:
        >>> text_body(["a gripping film"])
        {'signature_name': 'text', 'instances': [{'text': 'a gripping film'}]}
    """
    return {"signature_name": signature, "instances": [{"text": text} for text in texts]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="JPEG/PNG files, or strings with --text")
    parser.add_argument("--text", action="store_true", help="send the inputs as raw strings")
    parser.add_argument("--url", default="http://localhost:8501")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int)
    args = parser.parse_args(argv)
    body = text_body(args.inputs) if args.text else image_bytes_body(args.inputs)
    try:
        answer = predict(args.url, args.model, body, args.version)
    except (RuntimeError, OSError) as error:
        print(f"rest_client: error: {error}", file=sys.stderr)
        return 2
    for path, row in zip(args.inputs, answer["predictions"], strict=True):
        ranked = ", ".join(
            f"{name} {p:.3f}"
            for name, p in zip(row["class_name"], row["top_k_probabilities"], strict=True)
        )
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
