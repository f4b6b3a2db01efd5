"""The group-rule vocabulary: where each layer group of a backbone family ends.

`GroupRules` hold `Boundary`s, written with `through`, `until` and `rest`.
This module imports nothing of kerastl's, so backbone specs and the group
resolver (`kerastl.groups`) both build on it without an import cycle.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Boundary:
    """Where one group (or one group per captured name) ends.

    Args:
        pattern: regex, matched with `re.fullmatch` against layer names.
        name: the group's name; may use `\\1`-style references to the
            pattern's groups. Default: the pattern's first captured group.
        until: if False, the group holds every layer matching (with this
            name) and every not-yet-grouped layer they depend on. If True, the group
            ends where the block containing the first matching layer begins
            (that layer's immediate dominator), so a block whose own layers are
            auto-named can still be cut off.
        optional: if True, a pattern that matches nothing is skipped (e.g.
            the classifier top, present only with `include_top=True`).
        rest: if True, `pattern` is ignored and the group holds every layer
            left after all other groups, when any of them has weights (for
            auto-named trailing layers, such as ConvNeXt's final norm).
    """

    pattern: str
    name: str | None = None
    until: bool = False
    optional: bool = False
    rest: bool = False


def through(pattern: str, name: str | None = None, optional: bool = False) -> Boundary:
    """A group that ends at (and includes) the layers matching `pattern`.

    Example:
        >>> through(r"(conv\\d_block\\d+)_out")  # one group per ResNet block
    """
    return Boundary(pattern, name, until=False, optional=optional)


def until(pattern: str, name: str) -> Boundary:
    """A group that ends just before the block containing `pattern` begins.

    Example:
        >>> until("mixed0", "stem")  # InceptionV3's stem: auto-named layers
    """
    return Boundary(pattern, name, until=True)


def rest(name: str) -> Boundary:
    """A last group holding every layer after the others, if any has weights.

    Example:
        >>> rest("post_norm")  # ConvNeXt's auto-named final LayerNormalization
    """
    return Boundary("", name, optional=True, rest=True)


@dataclasses.dataclass(frozen=True)
class GroupRules:
    """How a model family splits into groups.

    Args:
        boundaries: the fine-grained (block-level) group boundaries.
        stages: `(regex, name)` pairs merging consecutive fine groups whose
            name fully matches `regex` into one coarse group `name` (which may
            use `\\1` references). Fine groups no pair matches stay as they are.
        expand: names of container layers whose sublayers are grouped one by
            one, as if they were a chain of layers in the model (KerasHub's
            ViT keeps all its transformer blocks inside `vit_encoder`).
    """

    boundaries: tuple[Boundary, ...]
    stages: tuple[tuple[str, str], ...] = ()
    expand: tuple[str, ...] = ()
