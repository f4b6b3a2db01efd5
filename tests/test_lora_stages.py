"""`Stage(rank=...)`: LoRA stages in `FineTuner`, with caching and best-epoch restore
(resume: `tests/test_staged_resume.py`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.app.config import load_config
from kerastl.peft import adapted_layers, is_adapter


def _lite0(seed=0):
    keras.utils.set_random_seed(seed)
    return kerastl.TransferModel(
        "efficientnet-lite0", 3, weights=None, input_shape=(32, 32, 3), dropout=0.0
    )


def _images(count=24, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, count))).batch(batch)


def _values(model):
    return [np.array(v) for v in model.weights]


STAGES = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(2, train="block6", rank=2, lr=1e-2)]


@pytest.mark.slow
def test_a_lora_stage_cut_where_an_earlier_stage_was_reads_its_cache(capsys):
    """`block6` and the LoRA stage's first adapted group `block6a` cut the same
    tensors: planned once, they share one cache (it was extracted twice)."""
    stages = [kerastl.Stage(1, train="block6", lr=1e-2), kerastl.Stage(1, train="block6", rank=2)]
    tuner = kerastl.FineTuner(_lite0(), verbose=2)
    tuner.fit(_images(), _images(8, seed=1), stages=stages, backup_dir=False)
    out = capsys.readouterr().out.splitlines()
    extracted = [line for line in out if line.startswith("kerastl: caching") and "(once)" in line]
    assert extracted == ["kerastl: caching block6 (once) ..."]
    assert [summary["cached"] for summary in tuner.stage_summaries] == ["block6", "block6"]


@pytest.mark.slow
def test_a_lora_stage_on_cached_features_equals_it_end_to_end_and_moves_only_adapters():
    weights = []
    for cache in (True, False):
        model = _lite0()
        tuner = kerastl.FineTuner(model, cache_features=cache, cache_shuffle_seed=None, verbose=0)
        before = {v.path: np.array(v) for v in model.weights}
        tuner.fit(_images(), _images(8, seed=1), stages=STAGES, backup_dir=False)
        assert tuner.stage_summaries[1]["cached"] == ("block6a" if cache else "no")
        assert adapted_layers(model) and all(
            x.name.startswith(("block6", "block7", "top")) for x in adapted_layers(model)
        )
        for variable in model.weights:
            if not is_adapter(variable) and not variable.path.startswith("head_dense"):
                np.testing.assert_array_equal(
                    np.array(variable), before[variable.path], variable.path
                )
        assert kerastl.trainable_groups(model)["block6"] == "lora"
        weights.append(_values(model))
    for cached, uncached in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


@pytest.mark.slow
def test_the_best_epoch_before_a_lora_stage_comes_back_with_zero_adapters():
    """The recorder's best weights gain zeros for adapters added after them."""
    reference = _lite0()
    kerastl.FineTuner(reference, verbose=0).fit(
        _images(), _images(8, seed=1), stages=STAGES[:1], backup_dir=False
    )
    model = _lite0()
    tuner = kerastl.FineTuner(model, monitor="val_loss", verbose=0)
    diverging = kerastl.Stage(1, train="block6", rank=2, lr=10.0)  # far worse than the probe
    tuner.fit(_images(), _images(8, seed=1), stages=[STAGES[0], diverging], backup_dir=False)
    assert tuner.recorder.best_epoch == 1
    assert not any(np.array(v).any() for v in model.weights if is_adapter(v))
    x = next(iter(_images(8, seed=1)))[0]
    np.testing.assert_allclose(model(x), reference(x), atol=1e-5)


def test_lora_stage_settings_are_checked_before_training():
    assert kerastl.Stage(1, train="lora").rank == 8
    assert kerastl.Stage(1, train="lora", lora_targets=["query", "value"]).lora_targets == (
        "query",
        "value",
    )
    for kwargs, message in [
        ({"train": "head", "rank": 2}, "`train='head'` trains only the head"),
        ({"lora_alpha": 4}, "`lora_alpha` needs `rank`"),
        ({"train": "lora", "rank": 0}, "`rank` must be a positive integer"),
        ({"train": "lora", "lora_targets": "everything"}, "`lora_targets` must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            kerastl.Stage(1, **kwargs)
    model = _lite0()
    stages = [
        kerastl.Stage(1, train="block6", rank=2),
        kerastl.Stage(1, train="block7", rank=4),
    ]
    with pytest.raises(
        ValueError, match=r"Stage 2 gives 'block7a_.*' LoRA rank 4 .* stage 1 gave it rank 2"
    ):
        kerastl.FineTuner(model, verbose=0).fit(_images(), stages=stages, backup_dir=False)
    assert not adapted_layers(model)  # refused before any stage ran
    with pytest.raises(ValueError, match=r"No layer of groups .* matches targets='query_value'"):
        kerastl.FineTuner(model, verbose=0).fit(
            _images(),
            stages=[kerastl.Stage(1, train="lora", lora_targets="query_value")],
            backup_dir=False,
        )


def test_a_yaml_config_gives_lora_stages(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "stages:\n"
        "  - {epochs: 1, train: head}\n"
        "  - {epochs: 2, train: lora, rank: 4, lora_alpha: 8, lora_targets: [query, value]}\n"
    )
    stage = load_config(path).stages[1]
    assert (stage.train, stage.rank, stage.lora_alpha, stage.lora_targets) == (
        "lora",
        4,
        8,
        ("query", "value"),
    )
