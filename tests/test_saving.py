"""kerastl.load_model restores what keras.models.load_model drops."""

import keras
import numpy as np
import pytest
from checks import TINY_TEXT, assert_same_optimizer_state

import kerastl


def _classifier():
    import keras_hub

    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, max_sequence_length=16, **TINY_TEXT
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)


def _inputs():
    return {
        "token_ids": np.array([[2, 5, 7, 3]] * 4, "int32"),
        "padding_mask": np.ones((4, 4), "int32"),
        "segment_ids": np.zeros((4, 4), "int32"),
    }, np.array([0, 1, 0, 1])


def test_keras_hub_task_loses_its_optimizer_with_keras_load_model(tmp_path):
    """The trap: KerasHub tasks override compile(), so Keras skips the saved
    compile config. If this fails, Keras or KerasHub fixed it."""
    model = _classifier()
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*_inputs(), epochs=1, verbose=0)
    model.save(tmp_path / "task.keras")
    with pytest.warns(UserWarning, match="compile"):
        loaded = keras.models.load_model(tmp_path / "task.keras")
    assert not isinstance(loaded.optimizer, keras.optimizers.SGD)


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True])
def test_load_model_restores_a_task_group_optimizer_and_its_state(tmp_path, frozen):
    model = _classifier()
    if frozen:
        kerastl.freeze_to(model, "encoder", recompile=False)
    optimizer = kerastl.discriminative_optimizer(model, base_lr=1e-3, decay=0.5)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _inputs()
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "task.keras")

    training = ["encoder", "pooler", "head"] if frozen else None
    loaded = kerastl.load_model(tmp_path / "task.keras", trainable_groups=training)
    assert isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)
    assert len(loaded.optimizer.optimizers) == len(model.optimizer.optimizers)
    assert kerastl.trainable_groups(loaded) == kerastl.trainable_groups(model)
    assert_same_optimizer_state(model.optimizer, loaded.optimizer)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    loaded.fit(x, y, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 3


@pytest.mark.slow
def test_a_frozen_task_loaded_without_its_groups_says_what_to_pass(tmp_path):
    model = _classifier()
    kerastl.freeze_to(model, "encoder", recompile=False)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(*_inputs(), epochs=1, verbose=0)
    model.save(tmp_path / "task.keras")
    with pytest.raises(ValueError, match="pass the groups that were training"):
        kerastl.load_model(tmp_path / "task.keras")


def test_layer_groups_of_a_task_follow_its_backbone():
    model = _classifier()
    assert list(kerastl.layer_groups(model)) == ["embeddings", "encoder", "pooler", "head"]


def test_load_model_on_an_ordinary_model_is_keras_load_model(tmp_path):
    model = kerastl.TransferModel("mobilenet", num_classes=2, weights=None, input_shape=(32, 32, 3))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.save(tmp_path / "m.keras")
    loaded = kerastl.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, kerastl.TransferModel) and isinstance(
        loaded.optimizer, keras.optimizers.Adam
    )
