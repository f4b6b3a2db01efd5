"""`TransferModel`: raw input → preprocessing → backbone → pooling/dropout → head."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerastl._graph import LayerGraph
from kerastl._internals import producer, sublayers
from kerastl._validation import check_positive_int
from kerastl.backbones.factory import DEFAULT, create_backbone
from kerastl.backbones.registry import find_spec, find_spec_by_class
from kerastl.backbones.spec import TEXT
from kerastl.backbones.tokenizers import tokenize
from kerastl.distribute.keras_fixes import FixedTraining
from kerastl.distribute.strategies import check_model_in_scope
from kerastl.groups import GroupRules, LayerGroups
from kerastl.peft import adapter_config, restore_adapters
from kerastl.preprocessing import Preprocessing

CLASSIFICATION = "classification"
MULTILABEL = "multilabel"
REGRESSION = "regression"
_TASKS = (CLASSIFICATION, MULTILABEL, REGRESSION)
_IMAGE_POOLING = ("avg", "max")
_IMAGE_TOKEN_POOLING = ("cls", "avg", "max")  # ViT-style backbones output tokens
_TEXT_POOLING = ("cls", "mean", "pooled")


@keras.saving.register_keras_serializable(package="kerastl")
class TransferModel(FixedTraining, keras.Model):
    """A pretrained backbone with a new head, preprocessing inside the model.

    Image models take raw RGB pixels in [0, 255] (`[batch, H, W, 3]`); the
    backbone's own preprocessing runs inside the model, so exports take raw
    pixels too. Text models hold their tokenizer (`preprocessor`), as KerasHub
    tasks do: `fit`, `evaluate` and `predict` (and `FineTuner`) take raw
    strings, or the token inputs (`token_ids`, `padding_mask`, ...) of a
    pipeline that tokenized once; the graph itself takes the token inputs. The
    head outputs logits (classification, multi-label) or values (regression),
    in float32 even under mixed precision.

    Args:
        backbone: a registry name (`kerastl.list_backbones()`) or a Keras
            model (e.g. from `create_backbone`).
        num_classes: number of classes (or outputs, for regression).
        task: `"classification"` (single label, softmax logits),
            `"multilabel"` (independent sigmoid logits) or `"regression"`.
        weights: backbone weights when `backbone` is a name; see `create_backbone`.
        input_shape: image input shape; default: the backbone's size.
        pooling: `"avg"`/`"max"` for images (and `"cls"`, the default, for
            backbones that output tokens, such as ViT); `"cls"`, `"mean"`
            (masked) or `"pooled"` (the backbone's own pooler) for text.
        dropout: dropout rate before the head.
        class_names: optional class labels, kept in the saved model.
        preprocessing: override the registry's preprocessing (a
            `Preprocessing` or a mode name: `caffe`, `tf`, `torch`, `included`).
        backbone_name: the registry name of a backbone given as a model
            (default: the model's name, if registered); picks group rules and
            preprocessing.
        preprocessor: for text, the tokenizer + packer that turns strings into
            the token inputs (`create_text_preprocessor`). Default: built from
            the registry's vocabulary when `backbone` is a name and `weights`
            is not None; else none (then pass token inputs).
        sequence_length: tokens per example for that default preprocessor.
        temperature: the softmax's temperature (`kerastl.calibrate` fits it):
            every probability kerastl computes or exports is
            `softmax(logits / temperature)`; the logits stay raw.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
        >>> model = kerastl.TransferModel("resnet50", num_classes=5, weights=None,
        ...                               input_shape=(64, 64, 3))
        >>> model.compile("adam")  # cross-entropy on logits and accuracy, for the task
    """

    def __init__(
        self,
        backbone: str | keras.Model,
        num_classes: int,
        *,
        task: str = CLASSIFICATION,
        weights: str | os.PathLike | None = DEFAULT,
        input_shape: Sequence[int | None] | None = None,
        pooling: str | None = None,
        dropout: float = 0.0,
        class_names: Sequence[str] | None = None,
        preprocessing: Preprocessing | str | dict | None = None,
        backbone_name: str | None = None,
        preprocessor: keras.layers.Layer | None = None,
        sequence_length: int = 128,
        temperature: float = 1.0,
        **kwargs: Any,
    ):
        _validate(num_classes, task, dropout, class_names, temperature)
        named = isinstance(backbone, str)
        if named:
            backbone_name = backbone
            backbone = create_backbone(backbone, weights=weights, input_shape=input_shape)
        elif not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a registry name or a keras.Model. "
                f"Received: backbone={backbone!r}."
            )
        # A KerasHub backbone built directly (not from the registry) gets its family's rules.
        spec = find_spec(backbone_name or backbone.name) or find_spec_by_class(
            type(backbone).__name__
        )
        modality = spec.modality if spec is not None else _guess_modality(backbone)
        tokens = modality != TEXT and len(backbone.output_shape) == 3
        pooling = pooling or ("cls" if modality == TEXT or tokens else "avg")
        if modality == TEXT:
            valid_pooling = _TEXT_POOLING
        else:
            valid_pooling = _IMAGE_TOKEN_POOLING if tokens else _IMAGE_POOLING
        if pooling not in valid_pooling:
            raise ValueError(
                f"`pooling` must be one of {valid_pooling} for a {modality} backbone. "
                f"Received: pooling={pooling!r}."
            )
        preprocessing = _resolve_preprocessing(preprocessing, spec)
        if modality != TEXT and preprocessor is not None:
            raise ValueError(
                "`preprocessor` (a tokenizer) is for text backbones; image preprocessing is "
                f"`preprocessing=`. Received: preprocessor={preprocessor!r} for a {modality} "
                "backbone."
            )
        if modality == TEXT and preprocessor is None and named and weights is not None:
            from kerastl.backbones.tokenizers import create_text_preprocessor

            preprocessor = create_text_preprocessor(spec.name, weights, sequence_length)

        # === Layers ===
        self.backbone = backbone
        self.preprocessing_layer = preprocessing.layer() if modality != TEXT else None
        self.pooling_layer = _pooling_layer(pooling, modality == TEXT, tokens)
        self.dropout_layer = keras.layers.Dropout(dropout, name="head_dropout")
        self.head_layer = keras.layers.Dense(num_classes, dtype="float32", name="head_dense")

        # === Functional Model ===
        if modality == TEXT:
            inputs = {
                key: keras.Input(shape=(None,), dtype="int32", name=key)
                for key in _text_input_names(backbone)
            }
            features = backbone(inputs)
            pooled = _pool(self.pooling_layer, features, inputs["padding_mask"], pooling)
            outputs = self.head_layer(self.dropout_layer(pooled))
        else:
            shape = tuple(input_shape) if input_shape is not None else backbone.input_shape[1:]
            inputs = keras.Input(shape=shape, name="image")
            outputs = self._image_logits(inputs, pooling)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone_name = spec.name if spec is not None else None
        self.num_classes = num_classes
        self.task = task
        self.pooling = pooling
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocessing = preprocessing
        self.modality = modality
        self.preprocessor = preprocessor
        self.temperature = float(temperature)

    def _image_logits(self, images, pooling: str):
        features = self.backbone(self.preprocessing_layer(images))
        tokens = len(self.backbone.output_shape) == 3
        pooled = _pool(self.pooling_layer, features, None, pooling, tokens)
        return self.head_layer(self.dropout_layer(pooled))

    def at_any_image_size(self) -> keras.Model:
        """This image model on images of any size, sharing every layer.

        For training at another resolution than the model's input
        (progressive resizing) while validating at it: what it trains is this
        model's weights. The model itself keeps its input size (exports too).

        Returns:
            A functional `keras.Model` from `(None, None, channels)` images to
            the same logits.

        Raises:
            ValueError: a text model, or a backbone built for one input size
                (its input shape, or position embeddings, fix it).

        Example:
            >>> model.at_any_image_size().predict(images_96)
        """
        self.check_any_image_size()
        images = keras.Input(shape=(None, None, self.input_shape[-1]), name="image")
        return keras.Model(
            images, self._image_logits(images, self.pooling), name=f"{self.name}_any_size"
        )

    def check_any_image_size(self) -> None:
        """Raises unless `at_any_image_size` can be built (see there).

        Example:
            >>> model.check_any_image_size()  # before a long run that resizes
        """
        if self.modality == TEXT:
            raise ValueError(
                f"Only image models take other image sizes; {self.name!r} is a text model."
            )
        fixed = tuple(self.backbone.input_shape[1:3])
        if fixed != (None, None):
            raise ValueError(
                f"The backbone of {self.name!r} takes {fixed[0]}x{fixed[1]} images only (its "
                "input shape is fixed when built), so it cannot train at another size."
            )

    def compile(self, optimizer="adam", loss="auto", metrics="auto", **kwargs):
        """`keras.Model.compile` with defaults for the model's task and a logits check.

        The head outputs logits: `loss="auto"` is sparse categorical (or, for
        `multilabel`, binary) cross-entropy `from_logits=True`, and mean squared
        error for `regression`; `metrics="auto"` is accuracy (binary accuracy at
        logit 0 for `multilabel`, mean absolute error for `regression`). A
        cross-entropy given with `from_logits=False` (Keras's default, which
        would treat the logits as probabilities and train on the wrong
        objective) is replaced by the same loss with `from_logits=True`, with a
        warning.

        Args:
            optimizer: as in `keras.Model.compile`.
            loss: `"auto"`, or any Keras loss.
            metrics: `"auto"`, or a list as in `keras.Model.compile`.
            **kwargs: further `keras.Model.compile` arguments.

        Example:
            >>> model.compile(keras.optimizers.Adam(1e-3))  # loss and accuracy for the task
        """
        if loss == "auto":
            loss = _default_loss(self.task)
        elif self.task != REGRESSION:
            loss = _from_logits(loss)
        if metrics == "auto":
            metrics = _default_metrics(self.task)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Recompiles from a saved compile config (Keras skips models whose
        `compile()` is overridden, so loading and recompiling would lose it)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`, with raw strings tokenized and the strategy checked.

        A model built outside `strategy.scope()` and trained inside it gets a
        clear error here instead of Keras's `colocate_vars_with` one. Training
        under tf.distribute goes through kerastl's Keras fixes (`FixedTraining`).
        """
        check_model_in_scope(self, self.distribute_strategy)
        if validation_data is not None:
            validation_data = self.prepare_data(validation_data)
        return super().fit(
            self.prepare_data(x), y, *args, validation_data=validation_data, **kwargs
        )

    def evaluate(self, x=None, *args, **kwargs):
        """`keras.Model.evaluate`; a text model also takes raw strings."""
        return super().evaluate(self.prepare_data(x), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; a text model also takes raw strings."""
        return super().predict(self.prepare_data(x), *args, **kwargs)

    def prepare_data(self, data):
        """What the graph takes: a text model's raw strings become its token inputs.

        Args:
            data: a `tf.data.Dataset` of `inputs` or `(inputs, labels, ...)`
                elements, a tuple `(inputs, labels)`, or inputs alone (arrays,
                lists of strings, token dicts).

        Returns:
            `data` with string inputs tokenized by `preprocessor`; anything
            else unchanged.

        Raises:
            ValueError: the inputs do not fit the model (strings for a text
                model without a preprocessor, strings for an image model,
                token dicts without the backbone's keys), naming what to pass.

        Example:
            >>> model = kerastl.TransferModel("all-minilm-l6-v2", num_classes=2)
            >>> model.prepare_data(tf.data.Dataset.from_tensor_slices((texts, labels)).batch(8))
        """
        if data is None:
            return None
        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            inputs = spec[0] if isinstance(spec, tuple) else spec
            if not self._check_inputs(inputs):
                return data
            if isinstance(spec, tuple):
                return data.map(lambda x, *rest: (self.preprocessor(x), *rest))
            return data.map(self.preprocessor)
        if isinstance(data, tuple) and data and not _is_string_batch(data):
            return (self.prepare_data(data[0]), *data[1:])
        if _is_string_batch(data) and self._check_inputs(tf.TensorSpec(None, tf.string)):
            return tokenize(self.preprocessor, tf.constant(list(data)))
        if _is_string_tensor(data) and self._check_inputs(tf.TensorSpec(None, tf.string)):
            _check_string_batch_shape(data)
            return tokenize(self.preprocessor, data)
        return data

    @tf.autograph.experimental.do_not_convert  # traced calls: Keras's own __call__ as it is
    def __call__(self, *args, **kwargs):
        """Calls the graph on its inputs; a text model's graph takes token inputs."""
        if self.modality == TEXT and args and _is_strings(args[0]):
            raise ValueError(
                "Calling a text TransferModel runs its graph, which takes the token inputs "
                f"{sorted(self.input)} (KerasHub's convention for calling a model). For raw "
                "strings use `model.predict(texts)`, `kerastl.predict_probabilities(model, "
                "texts)`, or `model(model.preprocessor(texts))`. Received: "
                f"{_describe_strings(args[0])}."
            )
        return super().__call__(*args, **kwargs)

    def _check_inputs(self, inputs) -> bool:
        """True when `inputs` (a spec) are strings to tokenize; raises when they cannot fit."""
        strings = isinstance(inputs, tf.TensorSpec) and inputs.dtype == tf.string
        if self.modality != TEXT:
            if strings or isinstance(inputs, dict):
                raise ValueError(
                    f"An image TransferModel takes pixels [batch, H, W, 3] in [0, 255]. "
                    f"Received inputs: {inputs}."
                )
            return False
        if strings:
            if self.preprocessor is None:
                raise ValueError(
                    "This text TransferModel has no tokenizer, so it cannot take raw strings: "
                    "build it with `preprocessor=kerastl.create_text_preprocessor(name, "
                    "weights)` (the default for a registry name with weights), or pass "
                    f"token inputs {sorted(self.input)}. Received inputs: {inputs}."
                )
            return True
        expected = set(self.input)
        if not isinstance(inputs, dict) or not expected <= set(inputs):
            raise ValueError(
                f"A text TransferModel takes raw strings or a dict of its token inputs "
                f"{sorted(expected)}. Received inputs: {inputs}."
            )
        return False

    def classify(self, features, padding_mask=None):
        """Applies the model's own pooling, dropout and head to backbone outputs.

        The layers are shared with the model, so a model built on this output
        (e.g. on cached backbone features) trains the same head weights.

        Args:
            features: backbone outputs (a tensor, or KerasHub's output dict).
            padding_mask: the token mask, for text backbones.

        Returns:
            The head's outputs (logits).

        Example:
            >>> inputs = keras.Input((7, 7, 1280))
            >>> head_only = keras.Model(inputs, model.classify(inputs))
        """
        if self.modality == TEXT and padding_mask is None:
            raise ValueError("A text model's head needs the `padding_mask` of its tokens.")
        tokens = self.modality != TEXT and len(self.backbone.output_shape) == 3
        pooled = _pool(self.pooling_layer, features, padding_mask, self.pooling, tokens)
        return self.head_layer(self.dropout_layer(pooled))

    def unused_layers(self) -> list[keras.layers.Layer]:
        """Backbone layers with weights that the model's output does not depend on.

        A text backbone's pooler (`pooled_dense`) feeds only its pooled output,
        which `cls` and `mean` pooling do not use: freezing keeps such layers
        frozen, so no stage lists weights that can get no gradient.

        Returns:
            The layers, in backbone order (empty for image models).

        Example:
            >>> [layer.name for layer in text_model.unused_layers()]
            ['pooled_dense']
        """
        outputs = self.backbone.output
        key = "pooled_output" if self.pooling == "pooled" else "sequence_output"
        if self.modality != TEXT or not isinstance(outputs, dict) or key not in outputs:
            return []
        used = outputs[key]
        graph = LayerGraph(self.backbone)
        index = {id(operation): i for i, operation in enumerate(graph.operations)}
        needed = graph.ancestors(index[id(producer(used))])
        return [
            operation
            for i, operation in enumerate(graph.operations)
            if i not in needed and getattr(operation, "weights", None)
        ]

    @property
    def groups(self) -> LayerGroups:
        """The model's layer groups (backbone groups, then `head`), resolved once.

        Example:
            >>> model.groups.names()
            ['stem', 'conv2', 'conv3', 'conv4', 'conv5', 'head']
        """
        return LayerGroups.of(self)

    @property
    def group_rules(self) -> GroupRules | None:
        """The backbone's group rules, or None for an unregistered backbone."""
        spec = find_spec(self.backbone_name) if self.backbone_name else None
        return spec.groups if spec is not None else None

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "backbone_name": self.backbone_name,
            "num_classes": self.num_classes,
            "task": self.task,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "class_names": self.class_names,
            # A KerasHub backbone's config keeps (None, None, 3): keep the model's size.
            "input_shape": list(self.input_shape[1:]) if self.modality != TEXT else None,
            "preprocessing": {
                "scale": list(self.preprocessing.scale),
                "offset": list(self.preprocessing.offset),
                "reverse_channels": self.preprocessing.reverse_channels,
            },
            # KerasHub backbones serialize constructor arguments only, not their
            # layers' trainable flags: keep which layers are frozen here.
            "preprocessor": (
                keras.saving.serialize_keras_object(self.preprocessor)
                if self.preprocessor is not None
                else None
            ),
            "frozen_layers": [
                index
                for index, layer in enumerate(sublayers(self, include_self=False))
                if not layer.trainable
            ],
            "temperature": self.temperature,
            **self._adapters_config(),
        }

    def _adapters_config(self) -> dict:
        """LoRA adapters (`kerastl.peft`): which layers carry them, and which
        weights are frozen (an adapted group's base weights, in trainable layers)."""
        adapters = adapter_config(self)
        if not adapters:
            return {}
        frozen = [index for index, variable in enumerate(self.weights) if not variable.trainable]
        return {"lora_adapters": {"layers": adapters, "frozen_weights": frozen}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        frozen = set(config.pop("frozen_layers", []))
        adapters = config.pop("lora_adapters", None)
        model = cls(**config)
        # Pre-order: a frozen container is set before its sublayers.
        for index, layer in enumerate(sublayers(model, include_self=False)):
            if index in frozen:
                layer.trainable = False
        if adapters:
            restore_adapters(model, adapters["layers"])
            weights = model.weights
            for index in adapters["frozen_weights"]:
                weights[index].trainable = False
        return model


@keras.saving.register_keras_serializable(package="kerastl")
class TokenPooling(keras.layers.Layer):
    """Pools a `[batch, seq, dim]` sequence: first token (`cls`) or masked mean.

    Args:
        mode: `"cls"`, `"mean"` or `"pooled"` (input is already pooled).

    Example:
        >>> TokenPooling("mean")({"sequence": x, "mask": mask})
    """

    def __init__(self, mode: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in _TEXT_POOLING:
            raise ValueError(f"`mode` must be one of {_TEXT_POOLING}. Received: mode={mode!r}.")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "pooled":
            return inputs["sequence"]
        sequence = inputs["sequence"]
        if self.mode == "cls":
            return sequence[:, 0, :]
        mask = keras.ops.cast(inputs["mask"], sequence.dtype)[:, :, None]
        total = keras.ops.sum(sequence * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1e-9)

    def compute_output_shape(self, input_shape):
        shape = input_shape["sequence"]
        return shape if self.mode == "pooled" else (shape[0], shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _pooling_layer(pooling: str, text: bool, tokens: bool) -> keras.layers.Layer:
    if text or pooling == "cls":
        return TokenPooling(pooling, name="pooling")
    if tokens:
        layers = {
            "avg": keras.layers.GlobalAveragePooling1D,
            "max": keras.layers.GlobalMaxPooling1D,
        }
    else:
        layers = {
            "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D,
        }
    return layers[pooling](name="pooling")


def _text_input_names(backbone) -> list[str]:
    inputs = backbone.input
    if isinstance(inputs, dict):
        return list(inputs)
    raise ValueError(
        f"A text backbone must take a dict of token inputs. Received: inputs={inputs!r}."
    )


def _pool(layer, features, padding_mask, pooling: str, tokens: bool = False):
    if padding_mask is not None:
        return layer(_text_pooling_inputs(features, padding_mask, pooling))
    return layer({"sequence": features} if tokens and pooling == "cls" else features)


def _text_pooling_inputs(features, padding_mask, pooling):
    if isinstance(features, dict):
        if pooling == "pooled":
            if "pooled_output" not in features:
                raise ValueError(
                    "`pooling='pooled'` needs a backbone with a pooler (e.g. BERT). "
                    f"Received outputs: {list(features)}."
                )
            return {"sequence": features["pooled_output"]}
        features = features["sequence_output"]
    elif pooling == "pooled":
        raise ValueError("`pooling='pooled'` needs a backbone with a pooler (e.g. BERT).")
    return {"sequence": features, "mask": padding_mask}


def _is_string_batch(data) -> bool:
    """A list/tuple/array of Python or NumPy strings (raw texts given directly)."""
    if isinstance(data, list | tuple):
        return bool(data) and all(isinstance(item, str | bytes) for item in data)
    return isinstance(data, np.ndarray) and data.dtype.kind in "USO" and data.ndim == 1


def _is_string_tensor(data) -> bool:
    """A string `tf.Tensor` or `tf.RaggedTensor` (any rank), or a NumPy string
    array that is not 1-D (1-D ones are `_is_string_batch`)."""
    if isinstance(data, tf.Tensor | tf.RaggedTensor):
        return data.dtype == tf.string
    return isinstance(data, np.ndarray) and data.dtype.kind in "USO" and data.ndim != 1


def _is_strings(data) -> bool:
    return _is_string_batch(data) or _is_string_tensor(data)


def _describe_strings(data) -> str:
    if isinstance(data, list | tuple):
        return f"a {type(data).__name__} of {len(data)} strings"
    kind = "an array" if isinstance(data, np.ndarray) else "a tensor"
    return f"{kind} of strings of shape {tuple(data.shape)}"


def _check_string_batch_shape(data) -> None:
    if isinstance(data, tf.RaggedTensor) or len(data.shape) != 1:
        kind = "a ragged tensor" if isinstance(data, tf.RaggedTensor) else "a tensor"
        raise ValueError(
            "A text TransferModel takes a batch of raw strings of shape [batch] (one text "
            f"per example). Received: {kind} of strings with shape {data.shape}."
        )


def _guess_modality(backbone) -> str:
    return TEXT if isinstance(backbone.input, dict) else "image"


def _resolve_preprocessing(preprocessing, spec) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    if isinstance(preprocessing, str):
        return Preprocessing.from_mode(preprocessing)
    if isinstance(preprocessing, dict):
        return Preprocessing(
            scale=tuple(preprocessing["scale"]),
            offset=tuple(preprocessing["offset"]),
            reverse_channels=bool(preprocessing["reverse_channels"]),
        )
    if preprocessing is None:
        return spec.preprocessing if spec is not None else Preprocessing()
    raise TypeError(
        "`preprocessing` must be a Preprocessing, a mode name or None. "
        f"Received: preprocessing={preprocessing!r}."
    )


# Cross-entropies that take probabilities unless `from_logits=True`.
_PROBABILITY_LOSSES = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
}


def _default_loss(task: str):
    if task == CLASSIFICATION:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if task == MULTILABEL:
        return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.MeanSquaredError()


def _default_metrics(task: str) -> list:
    if task == CLASSIFICATION:
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if task == MULTILABEL:
        return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def _from_logits(loss):
    """`loss`, or the same cross-entropy with `from_logits=True` (with a warning)."""
    if isinstance(loss, dict):
        return {key: _from_logits(value) for key, value in loss.items()}
    if isinstance(loss, list | tuple):
        return type(loss)(_from_logits(value) for value in loss)
    if isinstance(loss, str) or (callable(loss) and not isinstance(loss, keras.losses.Loss)):
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", "")
        if name not in _PROBABILITY_LOSSES:
            return loss
        replacement = getattr(keras.losses, _PROBABILITY_LOSSES[name])(from_logits=True)
    elif getattr(loss, "from_logits", True) is False:
        replacement = type(loss).from_config({**loss.get_config(), "from_logits": True})
    else:
        return loss
    warnings.warn(
        "TransferModel outputs logits, but the loss expects probabilities "
        "(from_logits=False): it would train on the wrong objective. Using "
        f"{type(replacement).__name__}(from_logits=True) instead. Received: loss={loss!r}.",
        stacklevel=3,
    )
    return replacement


def _validate(num_classes, task, dropout, class_names, temperature):
    check_positive_int("num_classes", num_classes)
    if isinstance(temperature, bool) or not (
        isinstance(temperature, int | float) and temperature > 0
    ):
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}.")
    if task not in _TASKS:
        raise ValueError(f"`task` must be one of {_TASKS}. Received: task={task!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must have num_classes={num_classes} entries. "
            f"Received: {len(class_names)} names."
        )
