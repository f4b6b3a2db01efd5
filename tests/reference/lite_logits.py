"""Writes `lite_logits.npz`: the ImageNet logits of EfficientNet-Lite1 and Lite2
on scikit-learn's `china.jpg` and `flower.jpg` from the reference PyTorch code.

Not part of the suite (it needs torch, which kerastl never installs). Run it
where torch is, with the kerastl `.venv` beside it for the asset packages and
the exact pixels the tests feed kerastl:

    .venv/bin/python tests/reference/lite_logits.py pixels   # writes pixels{240,260}.npy
    pip install torch && pip install --no-deps efficientnet-lite-pytorch
    python tests/reference/lite_logits.py logits              # reads them, writes the npz

The same reference code gives Lite0's documented top-5 (`tests/test_assets.py`).
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"lite1": 240, "lite2": 260}
PHOTOS = ("china.jpg", "flower.jpg")


def pixels() -> None:
    import sklearn

    import kerastl

    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    for size in set(SIZES.values()):
        images = np.stack(
            [kerastl.load_image(os.path.join(folder, name), (size, size)) for name in PHOTOS]
        )
        np.save(os.path.join(HERE, f"pixels{size}.npy"), (images - 127.0) / 128.0)


def logits() -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from kerastl.backbones.assets import asset_path

    found = {}
    for variant, size in SIZES.items():
        model = EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=asset_path(f"efficientnet-{variant}")
        )
        model.eval()
        images = np.load(os.path.join(HERE, f"pixels{size}.npy")).transpose(0, 3, 1, 2)
        with torch.no_grad():
            found[variant] = model(torch.from_numpy(images.astype("float32"))).numpy()
    np.savez_compressed(os.path.join(HERE, "lite_logits.npz"), **found)


if __name__ == "__main__":
    {"pixels": pixels, "logits": logits}[sys.argv[1]]()
