"""LoRA by layer group: `lora`, `merge_lora`, `save_lora`, `load_lora`.

Low-rank adapters (Hu et al. 2021) on Keras's own `enable_lora` (Dense,
EinsumDense, Embedding, Conv1D/2D/3D): each adapted layer computes with
`kernel + (alpha / rank) * A @ B`, `B` starting at zero, and trains only `A`
and `B`. `lora` picks the layers by group and by role (attention query/value,
all projections, convolutions), leaves the head fully trainable and every
other weight frozen; the freezing functions keep it so (a group holding
adapters trains only its adapters: `kerastl.freezing`).

Two Keras behaviours are worked around here, in `_keep_adapters_when_saved`:
Keras saves an adapted layer with the adapter folded into its kernel and
zeroes the adapter when it loads (so a `.keras` file or `save_weights` keeps
the function but not the adapters, and the base kernel it restores is no
longer the pretrained one); and a KerasHub backbone's config does not record
which layers carry adapters. An adapted layer here saves its raw variables
(base kernel and adapters), and `TransferModel` records its adapters in its
config, so a `.keras` round trip gives back the same adapters on the same
base (`tests/test_peft.py` shows the Keras behaviour).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np

from kerastl import _atomic
from kerastl._adapter_names import ADAPTER_NAMES, is_adapter
from kerastl._internals import own_variables, sublayers
from kerastl._rebuild import rebuilt
from kerastl.groups import COARSE, FINE, HEAD, LayerGroups

__all__ = [
    "ADAPTER_NAMES",
    "TARGETS",
    "adapted_layers",
    "enable_adapters",
    "is_adapter",
    "load_lora",
    "lora",
    "lora_targets",
    "merge_lora",
    "merged_for_export",
    "save_lora",
]

_BASE_NAMES = ("kernel", "embeddings")  # the variable an adapter adds to

# Attention projections by layer name: Keras's MultiHeadAttention (KerasHub's
# BERT, RoBERTa, DeBERTa, ViT encoders) and KerasHub's own attention layers.
_QUERY_VALUE = frozenset({"query", "value", "query_dense", "value_dense"})
_ATTENTION = _QUERY_VALUE | {"key", "attention_output", "key_dense", "output_dense"}
_ADAPTABLE = "Dense, EinsumDense, Embedding, Conv1D, Conv2D or Conv3D"

TARGETS = ("auto", "query_value", "attention", "dense", "conv", "all")
"""Target presets: `query_value` (attention query and value projections, as
in the LoRA paper and KerasHub's default), `attention` (query, key, value and
output), `dense` (every Dense/EinsumDense: attention and feed-forward),
`conv` (Conv1D/2D/3D, 1x1 and kxk; Keras cannot adapt depthwise or separable
convolutions, so they stay frozen), `all` (dense and conv), `auto`
(`query_value` for transformers, else `conv`, else `dense`)."""

_CONFIG_KEYS = ("lora_rank", "lora_alpha")  # what Keras layers record of an adapter

Targets = str | Sequence[str] | Callable[[keras.layers.Layer], bool]


def lora(
    model: keras.Model,
    rank: int = 8,
    alpha: float | None = None,
    groups: str | Sequence[str] | None = None,
    targets: Targets = "auto",
    *,
    recompile: bool = True,
) -> list[str]:
    """Adds LoRA adapters to the layers of the named groups; only adapters and head train.

    Call it inside the strategy scope the model was built in (the adapters
    are new variables).

    Args:
        model: a `TransferModel` (or a registered backbone).
        rank: the adapters' rank (`A` is `in x rank`, `B` is `rank x out`).
        alpha: the adapters' scale is `alpha / rank`; None: `rank` (scale 1).
        groups: backbone group names (coarse such as `encoder`, `block6`, or
            fine such as `layer_4`). None: the backbone groups
            that train now (after `freeze_to`, those above the boundary), or
            every backbone group when the backbone is wholly frozen or
            wholly trainable.
        targets: which layers of those groups get adapters: a preset from
            `TARGETS`, a list of regular expressions matched against layer
            names and paths (`re.fullmatch`), or a `layer -> bool` function.
        recompile: as in `kerastl.set_trainable_groups`.

    Returns:
        The adapted layers' paths, in model order.

    Raises:
        ValueError: `rank`/`alpha` not positive, an unknown group or `head`,
            no layer of the groups matching `targets`, a matched layer Keras
            cannot adapt (named with its type), or a layer that already has
            adapters.

    Example:
        >>> model = kerastl.TransferModel("all-minilm-l6-v2", num_classes=2)
        >>> kerastl.lora(model, rank=8)[0]
        'transformer_layer_0/self_attention_layer/query'
    """
    rank, alpha = _check_rank(rank), _check_alpha(alpha)
    chosen = _groups_to_adapt(model, groups)
    layers = lora_targets(model, chosen, targets)
    taken = [layer for layer in layers if getattr(layer, "lora_enabled", False)]
    if taken:
        raise ValueError(
            f"{_path(taken[0])!r} already has LoRA adapters (rank {taken[0].lora_rank}); a layer "
            "takes one set. Train the adapters it has, or `merge_lora` the model and adapt "
            f"the merged copy. Received: groups={chosen}."
        )
    for layer in layers:
        enable_adapters(layer, rank, alpha)
    LayerGroups.of(model).forget_variables()
    train_adapters(model, layers, recompile=recompile)
    return [_path(layer) for layer in layers]


def lora_targets(
    model: keras.Model, groups: Iterable[str], targets: Targets = "auto"
) -> list[keras.layers.Layer]:
    """The layers `lora(model, groups=groups, targets=targets)` would adapt.

    Args:
        model: a `TransferModel` or a registered backbone.
        groups: group names (coarse or fine), checked.
        targets: see `lora`.

    Returns:
        The layers, in model order (without adapting them).

    Raises:
        ValueError: as `lora` does for groups and targets.

    Example:
        >>> [layer.name for layer in lora_targets(model, ["block6"], "conv")][:2]
        ['block6a_expand_conv', 'block6a_project']
    """
    names = list(groups)
    layer_groups = LayerGroups.of(model)
    members, seen = [], set()
    for name in names:
        if name == HEAD:
            raise ValueError(
                "The head trains fully beside the adapters; name backbone groups. "
                f"Received: groups={names}."
            )
        granularity = layer_groups.granularity_of(name)
        for layer in layer_groups[granularity][name]:
            for sublayer in sublayers(layer):
                if id(sublayer) not in seen:
                    seen.add(id(sublayer))
                    members.append(sublayer)
    candidates = [layer for layer in members if own_variables(layer)]
    chosen = _select(candidates, members, targets)
    if not chosen:
        kinds = sorted({type(layer).__name__ for layer in candidates})
        raise ValueError(
            f"No layer of groups {names} matches targets={targets!r}; their weight-bearing "
            f"layers are {kinds}. Choose another preset from {TARGETS} or name layers."
        )
    # Model order: where each layer's first weight was created.
    created = {id(variable): index for index, variable in enumerate(model.weights)}
    return sorted(chosen, key=lambda layer: created[id(own_variables(layer)[0])])


def adapted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` that carry LoRA adapters, in model order.

    Example:
        >>> len(kerastl.adapted_layers(model))
        12
    """
    return [layer for layer in sublayers(model) if getattr(layer, "lora_enabled", False)]


def train_adapters(
    model: keras.Model,
    layers: Sequence[keras.layers.Layer] | None = None,
    *,
    recompile: bool = True,
) -> list[str]:
    """Trains the adapters of `layers` (default: every adapted layer) and the head.

    The fine groups holding those layers train their adapters only (see
    `kerastl.freezing`); every other group but the head is frozen.

    Args:
        model: a model with adapters.
        layers: adapted layers whose groups train.
        recompile: as in `kerastl.set_trainable_groups`.

    Returns:
        The trainable fine group names.

    Example:
        >>> train_adapters(model)[-1]
        'head'
    """
    from kerastl.freezing import set_trainable_groups

    wanted = adapter_groups(model, adapted_layers(model) if layers is None else layers)
    return set_trainable_groups(model, wanted, granularity=FINE, recompile=recompile)


def adapter_groups(model: keras.Model, layers: Sequence[keras.layers.Layer]) -> list[str]:
    """The fine groups that train when `layers` train their adapters: the groups
    holding them, and the head.

    Example:
        >>> adapter_groups(model, lora_targets(model, ["block6"]))[-1]
        'head'
    """
    wanted = {id(layer) for layer in layers}
    return [
        name
        for name, members in LayerGroups.of(model)[FINE].items()
        if name == HEAD or any(id(sub) in wanted for layer in members for sub in sublayers(layer))
    ]


def merge_lora(model: keras.Model) -> keras.Model:
    """A plain copy of `model` with every adapter folded into its kernel.

    Each adapted kernel becomes `kernel + (alpha / rank) * A @ B` (float32),
    the copy has no adapter variables and computes what `model` computes (to
    float32 rounding); `model` keeps its adapters. Every export merges first.

    Args:
        model: a model with LoRA adapters.

    Returns:
        A new, uncompiled model of the same class and config without
        adapters; frozen layers stay frozen, and the adapted groups' base
        weights are trainable again (a plain model).

    Raises:
        ValueError: `model` has no adapters (e.g. it is already merged).

    Example:
        >>> merged = kerastl.merge_lora(model)
        >>> kerastl.export.onnx(merged, "out/model.onnx")
    """
    adapted = adapted_layers(model)
    if not adapted:
        raise ValueError(
            f"Model {model.name!r} has no LoRA adapters to merge (`merge_lora` returns a "
            "plain model; `kerastl.lora` adds adapters)."
        )
    merged = {id(_base_variable(layer)): _merged_value(layer) for layer in adapted}
    values = [
        merged[id(variable)] if id(variable) in merged else np.asarray(variable)
        for variable in model.weights
        if not is_adapter(variable)
    ]
    config = _without_adapters(keras.saving.serialize_keras_object(model))
    plain = rebuilt(model, config=config)  # its precision, its tokenizer
    plain.set_weights(values)
    return plain


def merged_for_export(model: keras.Model) -> keras.Model:
    """`merge_lora(model)` if `model` has adapters, else `model` itself."""
    return merge_lora(model) if adapted_layers(model) else model


def save_lora(model: keras.Model, path: str | os.PathLike) -> str:
    """Writes the adapters and the head to an `.npz` file (atomically).

    The file also holds a SHA-256 digest of every base layer's weights (all
    but adapters and head), so `load_lora` refuses a different base.

    Args:
        model: a `TransferModel` with adapters.
        path: the file to write, ending in `.npz` (e.g. `reviews.lora.npz`).

    Returns:
        The path written.

    Raises:
        ValueError: no adapters, or a path not ending in `.npz`.

    Example:
        >>> kerastl.save_lora(model, "runs/reviews.lora.npz")
        'runs/reviews.lora.npz'
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"`path` must end in '.npz'. Received: path={path!r}.")
    layers = sublayers(model)
    adapted = adapted_layers(model)
    if not adapted:
        raise ValueError(
            f"Model {model.name!r} has no LoRA adapters to save (a merged model has none)."
        )
    index = {id(layer): i for i, layer in enumerate(layers)}
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for number, layer in enumerate(adapted):
        first, second = _adapter_pair(layer)
        arrays[f"adapter_{number}_a"] = np.asarray(first)
        arrays[f"adapter_{number}_b"] = np.asarray(second)
        entries.append(
            {
                "index": index[id(layer)],
                "path": _path(layer),
                "rank": int(layer.lora_rank),
                "alpha": float(layer.lora_alpha),
            }
        )
    head = _head_variables(model)
    for number, variable in enumerate(head):
        arrays[f"head_{number}"] = np.asarray(variable)
    meta = {
        "format": "kerastl-lora",
        "version": 1,
        "model": model.name,
        "adapters": entries,
        "head": [variable.path for variable in head],
        "base": _base_digests(model),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic.write_atomically(path, lambda temporary: np.savez(temporary, **arrays))
    return path


def load_lora(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Puts the adapters and head of `save_lora`'s file onto a model without adapters.

    Args:
        model: a freshly built model with the same base weights (e.g.
            `TransferModel(backbone, num_classes=...)` with the same
            pretrained weights and number of classes).
        path: a file written by `save_lora`.

    Returns:
        `model`, with the adapters and head loaded; adapters and head trainable.

    Raises:
        ValueError: not such a file; `model` already has adapters; its base
            differs from the one the adapters were trained on (the first
            differing layer is named); or its head has other shapes.

    Example:
        >>> model = kerastl.TransferModel("all-minilm-l6-v2", num_classes=2)
        >>> kerastl.load_lora(model, "runs/reviews.lora.npz")
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = _read_meta(arrays, path)
    if adapted_layers(model):
        raise ValueError(
            f"Model {model.name!r} already has LoRA adapters; load adapters onto a freshly "
            f"built model. Received: path={path!r}."
        )
    _check_same_base(meta["base"], _base_digests(model), path)
    head = _head_variables(model)
    saved_head = [arrays[f"head_{number}"] for number in range(len(meta["head"]))]
    shapes = [tuple(variable.shape) for variable in head]
    saved_shapes = [tuple(value.shape) for value in saved_head]
    if shapes != saved_shapes:
        raise ValueError(
            f"The head in {path!r} has weight shapes {saved_shapes}; this model's head has "
            f"{shapes} (another number of classes?)."
        )
    layers = sublayers(model)
    for number, entry in enumerate(meta["adapters"]):
        layer = layers[entry["index"]]
        enable_adapters(layer, entry["rank"], entry["alpha"])
        for variable, value in zip(
            _adapter_pair(layer),
            (arrays[f"adapter_{number}_a"], arrays[f"adapter_{number}_b"]),
            strict=True,
        ):
            variable.assign(value)
    for variable, value in zip(head, saved_head, strict=True):
        variable.assign(value)
    LayerGroups.of(model).forget_variables()
    train_adapters(model)
    return model


def restore_adapters(model: keras.Model, entries: Sequence[dict]) -> None:
    """Re-adds adapters recorded by `adapter_config` (zero-valued until weights load).

    For a model rebuilt from its config: Keras layers record their rank in
    their own config, KerasHub backbones do not.
    """
    layers = sublayers(model)
    for entry in entries:
        layer = layers[entry["index"]]
        if not getattr(layer, "lora_enabled", False):
            enable_adapters(layer, entry["rank"], entry["alpha"])
        else:
            _keep_adapters_when_saved(layer)


def adapter_config(model: keras.Model) -> list[dict]:
    """`[{index, rank, alpha}]` of the adapted layers (index in `sublayers(model)`)."""
    index = {id(layer): i for i, layer in enumerate(sublayers(model))}
    return [
        {"index": index[id(layer)], "rank": int(layer.lora_rank), "alpha": float(layer.lora_alpha)}
        for layer in adapted_layers(model)
    ]


# --- choosing layers ---


def _groups_to_adapt(model, groups) -> list[str]:
    from kerastl.freezing import trainable_groups

    if isinstance(groups, str):
        groups = [groups]
    if groups is not None:
        names = list(groups)
        if not names:
            raise ValueError("`groups` must name at least one group. Received: groups=[].")
        for name in names:
            if name != HEAD:
                LayerGroups.of(model).granularity_of(name)  # unknown names raise, listed
        return names
    states = {name: state for name, state in trainable_groups(model).items() if name != HEAD}
    training = [name for name, state in states.items() if state != "frozen"]
    return training if 0 < len(training) < len(states) else list(states)


def _select(candidates, members, targets) -> list:
    if callable(targets):
        chosen = [layer for layer in candidates if targets(layer)]
        return _adaptable(chosen, targets)
    if isinstance(targets, str):
        if targets not in TARGETS:
            raise ValueError(
                f"`targets` must be one of {TARGETS}, a list of layer-name patterns or a "
                f"function. Received: targets={targets!r}."
            )
        return _preset(candidates, members, targets)
    patterns = [re.compile(pattern) for pattern in targets]
    chosen = [
        layer
        for layer in candidates
        if any(p.fullmatch(layer.name) or p.fullmatch(_path(layer)) for p in patterns)
    ]
    return _adaptable(chosen, targets)


def _adaptable(chosen, targets) -> list:
    refused = [layer for layer in chosen if not hasattr(layer, "enable_lora")]
    if refused:
        layer = refused[0]
        raise ValueError(
            f"Keras cannot add LoRA to {type(layer).__name__} layer {_path(layer)!r} (it can to "
            f"{_ADAPTABLE}). Received: targets={targets!r}."
        )
    return chosen


def _preset(candidates, members, preset: str) -> list:
    attention_parts = _attention_parts(candidates, members)
    if preset == "auto":
        if any(layer.name in _QUERY_VALUE for layer in attention_parts):
            preset = "query_value"
        elif any(_is_conv(layer) for layer in candidates):
            preset = "conv"
        else:
            preset = "dense"
    if preset == "query_value":
        return [layer for layer in attention_parts if layer.name in _QUERY_VALUE]
    if preset == "attention":
        return [layer for layer in attention_parts if layer.name in _ATTENTION]
    dense = preset in ("dense", "all")
    conv = preset in ("conv", "all")
    return [
        layer for layer in candidates if (dense and _is_dense(layer)) or (conv and _is_conv(layer))
    ]


def _attention_parts(candidates, members) -> list:
    """Projections inside attention layers, or KerasHub's `query_dense`-style names."""
    inside = set()
    for layer in members:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            inside.update(id(sub) for sub in sublayers(layer, include_self=False))
    return [
        layer
        for layer in candidates
        if _is_dense(layer)
        and (id(layer) in inside or layer.name in _ATTENTION - {"query", "key", "value"})
    ]


def _is_dense(layer) -> bool:
    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))


def _is_conv(layer) -> bool:
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))


# --- adapters ---


def enable_adapters(layer: keras.layers.Layer, rank: int, alpha: float | None) -> None:
    """Keras's `enable_lora` on one layer, saved with its raw variables.

    Example:
        >>> enable_adapters(model.get_layer("top_conv"), rank=4, alpha=None)
    """
    layer.enable_lora(rank, lora_alpha=alpha)
    _keep_adapters_when_saved(layer)


def _keep_adapters_when_saved(layer) -> None:
    """Saves and loads `layer`'s raw variables (base kernel and adapters).

    Keras's adapted layers save `kernel + scale * A @ B` and zero `A` and `B`
    when they load; instance methods replace that with `Layer`'s plain
    per-variable save and load.
    """
    layer.save_own_variables = functools.partial(keras.layers.Layer.save_own_variables, layer)
    layer.load_own_variables = functools.partial(keras.layers.Layer.load_own_variables, layer)


def _adapter_pair(layer) -> tuple[keras.Variable, keras.Variable]:
    pair = sorted(
        (variable for variable in own_variables(layer) if is_adapter(variable)),
        key=lambda variable: variable.name,
    )
    return pair[0], pair[1]


def _base_variable(layer) -> keras.Variable:
    return next(v for v in own_variables(layer) if v.name in _BASE_NAMES)


def _merged_value(layer) -> np.ndarray:
    first, second = _adapter_pair(layer)
    base = np.asarray(_base_variable(layer), dtype=np.float32)
    delta = np.matmul(np.asarray(first, np.float32), np.asarray(second, np.float32))
    return base + np.float32(layer.lora_alpha / layer.lora_rank) * delta


def _without_adapters(config):
    if isinstance(config, dict):
        return {
            key: _without_adapters(value)
            for key, value in config.items()
            if key not in _CONFIG_KEYS and key != "lora_adapters"
        }
    if isinstance(config, list):
        return [_without_adapters(value) for value in config]
    return config


# --- adapter files ---


def _head_variables(model) -> list[keras.Variable]:
    groups = LayerGroups.of(model)[COARSE]
    if HEAD not in groups:
        raise ValueError(
            f"Model {model.name!r} has no head group; adapter files are for TransferModels."
        )
    seen, variables = set(), []
    for layer in groups[HEAD]:
        for sub in sublayers(layer):
            for variable in own_variables(sub):
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
    return variables


def _base_digests(model) -> list[list[str]]:
    """`[path, sha256]` of each weight-bearing layer outside the head (adapters left out)."""
    head = {id(sub) for layer in LayerGroups.of(model)[COARSE][HEAD] for sub in sublayers(layer)}
    digests = []
    for layer in sublayers(model):
        variables = [v for v in own_variables(layer) if not is_adapter(v)]
        if not variables or id(layer) in head:
            continue
        digest = hashlib.sha256()
        for variable in variables:
            value = np.ascontiguousarray(np.asarray(variable))
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
        digests.append([_path(layer), digest.hexdigest()])
    return digests


def _check_same_base(saved, current, path: str) -> None:
    if len(saved) != len(current):
        raise ValueError(
            f"The adapters in {path!r} were trained on a base with {len(saved)} weight-bearing "
            f"layers; this model has {len(current)} (another backbone?)."
        )
    differing = [
        (old[0], new[0]) for old, new in zip(saved, current, strict=True) if old[1] != new[1]
    ]
    if differing:
        old, new = differing[0]
        where = repr(new) if old == new else f"{new!r} (saved as {old!r})"
        raise ValueError(
            f"The adapters in {path!r} were trained on other base weights: {len(differing)} of "
            f"{len(current)} layers differ, the first {where}. Build the model with the "
            "pretrained weights the adapters were trained on."
        )


def _read_meta(arrays: dict, path: str) -> dict:
    try:
        meta = json.loads(str(arrays["meta"]))
        valid = meta.get("format") == "kerastl-lora"
    except (KeyError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{path!r} is not an adapter file written by `kerastl.save_lora`.")
    return meta


def _path(layer) -> str:
    return layer.path or layer.name


def _check_rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}.")
    return int(rank)


def _check_alpha(alpha) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"`alpha` must be a positive number or None. Received: alpha={alpha!r}.")
    return float(alpha)
