"""Loading a run configuration: layered defaults → YAML → `--set`.

The schema is `kerastl.app.schema` (`RunConfig`); the model and tuner it
names are built by `kerastl.app.builders`.

Every value has a default; a YAML file overrides some, and `--set
key.path=value` overrides those (values are parsed as YAML: `3`, `1e-4`,
`null`, `[flip, rotate]`). An unknown key is an error naming the nearest
valid key; a value of the wrong type is an error naming the key, the value
and the type expected. `to_yaml` writes the fully resolved configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from kerastl._atomic import write_text
from kerastl.app.schema import ConfigError, RunConfig


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `key.path=value` overrides.

    Args:
        path: a YAML file, or None for the defaults.
        overrides: strings like `"stages.1.lr=1e-4"` or `"data.limit=64"`.

    Returns:
        The resolved `RunConfig`.

    Raises:
        ConfigError: an unknown key (naming the nearest valid one) or a bad value.

    Example:
        >>> config = load_config("recipes/image_classification.yaml", ["model.image_size=96"])
    """
    values = to_dict(RunConfig())
    if path is not None:
        with open(path) as file:
            loaded = yaml.safe_load(file) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{os.fspath(path)}: expected a mapping at the top level.")
        _merge(values, loaded, "")
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set expects key=value. Received: {override!r}.")
        _set(values, key.strip().split("."), yaml.safe_load(text), key.strip())
    return _build(RunConfig, values, "")


def to_dict(config) -> dict:
    """A config as plain YAML-ready data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def to_yaml(config: RunConfig) -> str:
    """The fully resolved configuration as YAML (loads back with `load_config`)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: RunConfig, run_dir: str | os.PathLike) -> str:
    """Writes the resolved configuration into a run directory as `config.yaml`.

    Every run directory has one, whoever wrote it (`kerastl train`, a recipe
    script): `kerastl train --resume` and `kerastl export` read it.

    Args:
        config: the run's `RunConfig`.
        run_dir: the run directory.

    Returns:
        The path written (atomically).

    Example:
        >>> save_config(config, "runs/elpv-lite0")
        'runs/elpv-lite0/config.yaml'
    """
    from kerastl.training.run_directory import CONFIG

    path = os.path.join(os.fspath(run_dir), CONFIG)
    write_text(path, to_yaml(config))
    return path


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _merge(target: dict, source: dict, prefix: str) -> None:
    for key, value in source.items():
        where = f"{prefix}{key}"
        if key not in target:
            raise ConfigError(_unknown(key, list(target), where))
        if isinstance(target[key], dict) and isinstance(value, dict):
            _merge(target[key], value, where + ".")
        else:
            target[key] = value


def _set(values, keys: list[str], value, where: str) -> None:
    node, in_list = values, False
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"{where}: {key!r} is not an index of a list of {len(node)}. "
                    f"Expected 0..{len(node) - 1}."
                )
            key = int(key)
        elif isinstance(node, dict) and in_list and last:
            pass  # a list item (a stage) may omit keys; `_build` checks the name
        elif not isinstance(node, dict) or key not in node:
            valid = list(node) if isinstance(node, dict) else []
            raise ConfigError(_unknown(key, valid, where))
        if last:
            node[key] = value
        else:
            in_list = isinstance(node, list)
            node = node[key]


def _unknown(key: str, valid: list[str], where: str) -> str:
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return f"Unknown config key {where!r}.{hint} Valid keys here: {valid}."


def _build(cls, values, prefix: str):
    if not isinstance(values, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping. Received: {values!r}.")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(_unknown(key, names, f"{prefix}{key}"))
    arguments = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in values.items()}
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}") from None


def _coerce(value, hint, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list. Received: {value!r}.")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, f"{where}.{i}") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build(hint, value, f"{where}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false. Received: {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer. Received: {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # YAML reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number. Received: {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string. Received: {value!r}.")
        return value
    return value


def recipe_command_line(
    path: str | os.PathLike, argv: Sequence[str] | None = None
) -> tuple[RunConfig, int | str]:
    """A recipe script's command line: its YAML with `--set KEY=VALUE` overrides.

    Args:
        path: the recipe's YAML file, unless `--config FILE` names another
            (e.g. the recipe's longer `*_full.yaml`).
        argv: the arguments (default: `sys.argv[1:]`): `--config FILE`,
            `--set KEY=VALUE` (repeatable) and `--quiet` (no per-epoch progress).

    Returns:
        `(config, verbose)`: the resolved `RunConfig` and the verbosity: 0
        with `--quiet`, else `"auto"` (progress bars on a terminal, a line
        per epoch in a log).

    Example:
        >>> config, verbose = recipe_command_line("recipes/image_classification.yaml")
    """
    import argparse

    parser = argparse.ArgumentParser(description=f"The recipe configured by {path}.")
    parser.add_argument("--config", default=os.fspath(path), help=f"default: {path}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    return load_config(args.config, args.set), 0 if args.quiet else "auto"
