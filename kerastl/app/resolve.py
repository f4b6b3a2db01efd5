"""`resolve(config)`: a `RunConfig` checked as a whole, once, before any data or model.

The schema's dataclasses check each value on its own; what depends on
several sections (the monitored value against the metrics, test-time views
against the backbone's modality) and on the registry (the backbone's spec)
is checked here, and the spec is looked up once for the whole run.
"""

from __future__ import annotations

import dataclasses

from kerastl.app.schema import RunConfig
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT, BackboneSpec
from kerastl.training.monitoring import check_monitor


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """A checked `RunConfig` and what it names.

    Args:
        config: the run configuration.
        spec: its backbone's registry entry.
    """

    config: RunConfig
    spec: BackboneSpec


def resolve(config: RunConfig) -> ResolvedRun:
    """Checks what depends on several parts of `config` and looks its backbone up.

    Args:
        config: the run configuration.

    Returns:
        A `ResolvedRun`.

    Raises:
        ValueError: an unknown backbone (the registry's names listed), a
            `train.monitor` training will not log, or `data.tta` views for a
            text backbone.

    Example:
        >>> run = resolve(load_config("recipes/image_classification.yaml"))
        >>> run.spec.modality
        'image'
    """
    spec = get_spec(config.model.backbone)
    check_monitor(config.train.monitor, config.train.metrics, validation=True)
    if config.data.tta != "none" and spec.modality == TEXT:
        raise ValueError(
            "`data.tta` views are image transforms; a text backbone takes none. Received: "
            f"data.tta={config.data.tta!r} for model.backbone={config.model.backbone!r}."
        )
    return ResolvedRun(config, spec)
