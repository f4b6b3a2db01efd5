"""`load_model`: `keras.models.load_model` that also restores the optimizer of
models whose `compile()` is overridden (KerasHub tasks such as `BertTextClassifier`).

Keras applies a saved compile config only to models that keep `Model.compile`;
for the others it warns, leaves them compiled with their defaults (a KerasHub
task: Adam 5e-5, step 0) and skips the saved optimizer variables. Here the
saved config is applied through the model's own `compile()` and the optimizer
variables are read from the same archive.

A KerasHub task's config holds no per-layer `trainable` flags, so a task
saved with frozen layers comes back fully trainable: name the groups that
were training (`trainable_groups=`) so the optimizer is rebuilt over the
same variables. `TransferModel` keeps its frozen layers by itself.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Sequence

import keras

from kerastl._internals import object_sharing_scope

_SKIPPED_COMPILE = "was not called as part of model loading because the model's `compile()`"
_SKIPPED_OPTIMIZER = "Skipping variable loading for optimizer"


def load_model(
    path: str | os.PathLike,
    *,
    trainable_groups: Sequence[str] | None = None,
    safe_mode: bool = True,
    custom_objects=None,
    compile: bool = True,
):
    """Loads a `.keras` model with its optimizer, whatever its `compile()` is.

    Args:
        path: a `.keras` archive written by `model.save`.
        trainable_groups: for a model whose config does not keep frozen
            layers (a KerasHub task), the groups that were training when it
            was saved; the others are frozen before the optimizer is restored.
        safe_mode: as in `keras.models.load_model`.
        custom_objects: as in `keras.models.load_model`.
        compile: restore the compiled state (optimizer, loss, metrics).

    Returns:
        The model; compiled with its saved optimizer (type, settings,
        iterations and slot variables) when it was saved compiled.

    Raises:
        ValueError: the saved optimizer state does not fit the model's
            trainable variables (the message says what to pass).

    Example:
        >>> classifier = kerastl.load_model("bert_classifier.keras")
        >>> classifier.fit(train_ds)  # continues with the saved optimizer state
    """
    path = os.fspath(path)
    overridden = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.models.load_model(
            path, safe_mode=safe_mode, custom_objects=custom_objects, compile=compile
        )
    for warning in caught:
        message = str(warning.message)
        if _SKIPPED_COMPILE in message:
            overridden = True
        elif _SKIPPED_OPTIMIZER not in message or not overridden:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if trainable_groups is not None:
        from kerastl.freezing import set_trainable_groups

        set_trainable_groups(model, trainable_groups, recompile=False)
    if compile and (overridden or trainable_groups is not None):
        _compile_from_archive(model, path, safe_mode, custom_objects)
    return model


def _compile_from_archive(model, path, safe_mode, custom_objects) -> None:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json")).get("compile_config")
        weights = archive.read("model.weights.h5")
    if not config:
        return
    # One optimizer shared by many OptimizerMap entries must load as one instance.
    with keras.saving.custom_object_scope(custom_objects or {}), object_sharing_scope():
        arguments = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
    model.compile(**arguments)
    model.optimizer.build(model.trainable_variables)
    _assign_optimizer_variables(model.optimizer, weights, path)


def _assign_optimizer_variables(optimizer, weights_h5: bytes, path: str) -> None:
    """Assigns the archive's `optimizer/vars/<i>` (every variable of the
    optimizer, sub-optimizers included, in order) to the rebuilt optimizer."""
    import h5py

    with h5py.File(io.BytesIO(weights_h5), "r") as store:
        saved = store.get("optimizer/vars")
        values = [saved[str(i)][()] for i in range(len(saved))] if saved is not None else []
    variables = optimizer.variables
    if len(values) != len(variables) or any(
        tuple(v.shape) != tuple(value.shape) for v, value in zip(variables, values, strict=True)
    ):
        raise ValueError(
            f"The optimizer saved in {path!r} has {len(values)} variables; rebuilt over the "
            f"model's trainable variables it has {len(variables)}. The model's trainable "
            "layers differ from when it was saved: pass the groups that were training "
            "as `trainable_groups=`."
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
