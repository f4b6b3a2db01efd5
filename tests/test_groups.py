"""Group resolution on small hand-made graphs."""

import keras
import pytest

from kerastl.groups import GroupRules, layer_groups, merge_stages, rest, through, until


def _branchy_model():
    """stem -> (two auto-named branches) -> concat 'block1' -> dense 'block2'."""
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="stem_dense")(inputs)
    left = keras.layers.Dense(4)(x)  # auto-named: session-wide counters
    right = keras.layers.Dense(4)(keras.layers.Dense(4)(x))
    x = keras.layers.Concatenate(name="block1")([left, right])
    x = keras.layers.Dense(2, name="block2_dense")(x)
    x = keras.layers.Activation("relu")(x)
    return keras.Model(inputs, x, name="branchy")


RULES = GroupRules(
    boundaries=(
        until("block1", "stem"),
        through("block1", "block1"),
        through("block2_dense", "block2"),
    ),
    stages=(("block1|block2", "body"),),
)


def _names(groups):
    return {group: [layer.name for layer in layers] for group, layers in groups.items()}


def test_until_cuts_at_the_dominator_of_a_block_of_auto_named_layers():
    model = _branchy_model()
    groups = _names(layer_groups(model, "fine", RULES))
    assert list(groups) == ["stem", "block1", "block2"]
    assert groups["stem"][-1] == "stem_dense"
    assert len(groups["block1"]) == 4 and groups["block1"][-1] == "block1"
    # The trailing auto-named activation has no weights: it joins the last group.
    assert groups["block2"][0] == "block2_dense" and len(groups["block2"]) == 2


def test_groups_do_not_depend_on_auto_name_counters():
    first = _names(layer_groups(_branchy_model(), "fine", RULES))
    second = _names(layer_groups(_branchy_model(), "fine", RULES))
    assert first["block1"] != second["block1"]  # the counters moved on ...
    assert [len(v) for v in first.values()] == [
        len(v) for v in second.values()
    ]  # ... groups did not


def test_coarse_merges_consecutive_fine_groups():
    groups = layer_groups(_branchy_model(), "coarse", RULES)
    assert list(groups) == ["stem", "body"]


def test_weight_bearing_layer_outside_every_group_is_named():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="a")(inputs)
    x = keras.layers.Dense(4, name="leftover_dense")(x)
    model = keras.Model(inputs, x, name="m")
    with pytest.raises(ValueError, match=r"not covered by any group: \['leftover_dense'\]"):
        layer_groups(model, "fine", GroupRules((through("a", "first"),)))


def test_rest_collects_trailing_weight_bearing_layers_explicitly():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="a")(inputs)
    x = keras.layers.LayerNormalization()(x)
    model = keras.Model(inputs, x, name="m")
    groups = layer_groups(model, "fine", GroupRules((through("a", "first"), rest("post_norm"))))
    assert list(groups) == ["first", "post_norm"]


def test_boundary_that_matches_nothing_raises_unless_optional():
    model = _branchy_model()
    with pytest.raises(
        ValueError, match=r"Group boundary 'nothing_.*' matches no layer of model 'branchy'"
    ):
        layer_groups(model, "fine", GroupRules((through(r"nothing_\d", "x"),)))
    optional = GroupRules((*RULES.boundaries, through("predictions", "top", optional=True)))
    assert "top" not in layer_groups(model, "fine", optional)


def test_duplicate_group_names_raise():
    rules = GroupRules((through("stem_dense", "same"), through("block2_dense", "same")))
    with pytest.raises(ValueError, match="give the group name 'same'"):
        layer_groups(_branchy_model(), "fine", rules)


def test_stage_merging_non_consecutive_groups_raises():
    fine = {"a": [1], "b": [2], "c": [3]}
    with pytest.raises(ValueError, match="not consecutive"):
        merge_stages(fine, (("a|c", "ac"),))


def test_granularity_is_validated():
    with pytest.raises(ValueError, match="granularity='medium'"):
        layer_groups(_branchy_model(), "medium", RULES)


def test_model_without_registered_rules_asks_for_rules():
    with pytest.raises(
        ValueError, match=r"No group rules are registered for a model named 'branchy'"
    ):
        layer_groups(_branchy_model())


def test_vit_blocks_inside_one_encoder_layer_become_groups():
    from checks import tiny_backbone

    groups = layer_groups(tiny_backbone("vit_base_patch16_224_imagenet"), "fine")
    assert list(groups) == ["embeddings", "layer_1", "layer_2", "encoder_norm"]
    assert [type(layer).__name__ for layer in groups["layer_1"]] == ["ViTEncoderBlock"]
