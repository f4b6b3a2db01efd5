"""Data for `kerastl train`: separate validation/test sources, split folders refused,
stratified limits, class names from the config, skipped records on the console."""

import dataclasses

import numpy as np
import pytest
from checks import image_folder_of

from kerastl.app.cli import main
from kerastl.app.config import load_config
from kerastl.app.data import load_data
from kerastl.data.sampling import stratified_sample


def _labels(dataset):
    return np.concatenate([np.asarray(y) for _, y in dataset])


def _config(tmp_path, *overrides):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'runs'}",
            "model.weights=none",
            "model.image_size=32",
            "data.batch_size=4",
            *overrides,
        ],
    )


def test_validation_and_test_folders_are_read_with_the_training_classes(tmp_path):
    image_folder_of(tmp_path / "train", ["ants", "bees", "wasps"], 4)
    image_folder_of(tmp_path / "val", ["ants", "bees", "wasps"], 2, seed=1)
    image_folder_of(tmp_path / "test", ["ants", "bees", "wasps", "moths"], 1, seed=2)
    data = load_data(
        _config(
            tmp_path,
            f"data.source=folder:{tmp_path / 'train'}",
            f"data.validation_source=folder:{tmp_path / 'val'}",
            f"data.test_source=folder:{tmp_path / 'test'}",
        )
    )
    assert data.class_names == ["ants", "bees", "wasps"]
    assert sorted(_labels(data.train)) == [0] * 4 + [1] * 4 + [2] * 4  # nothing held out
    assert sorted(_labels(data.validation)) == [0, 0, 1, 1, 2, 2]
    assert sorted(_labels(data.test)) == [0, 1, 2]
    assert any("moths" in note for report in data.reports for note in report.notes)


def test_a_folder_of_split_folders_is_refused_naming_them(tmp_path, capsys):
    image_folder_of(tmp_path / "data" / "train", ["ants", "bees"], 2)
    image_folder_of(tmp_path / "data" / "val", ["ants", "bees"], 1)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{source: 'folder:{tmp_path / 'data'}'}}\noutput_dir: {tmp_path}\n")
    assert main(["train", str(config), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert (
        "split folders ['train', 'val']" in error
        and f"folder:{tmp_path / 'data' / 'train'}" in error
    )
    image_folder_of(tmp_path / "nested" / "a", ["ants", "bees"], 1)
    image_folder_of(tmp_path / "nested" / "b", ["ants", "bees"], 1)
    with pytest.raises(ValueError, match=r"the same sub-folders \['ants', 'bees'\]"):
        load_data(_config(tmp_path, f"data.source=folder:{tmp_path / 'nested'}"))


def test_a_limit_keeps_every_class_in_proportion_after_a_seeded_shuffle(tmp_path):
    labels = np.repeat(np.arange(10), 100)  # read in class order, as a folder is
    chosen = stratified_sample(labels, 256, seed=0)
    assert len(chosen) == 256 and set(np.bincount(labels[chosen])) == {25, 26}
    assert not np.array_equal(chosen, stratified_sample(labels, 256, seed=1))
    x = np.zeros((60, 8, 8, 3), "float32")
    np.savez(tmp_path / "sorted.npz", x=x, y=np.repeat(np.arange(3), 20))
    data = load_data(
        _config(
            tmp_path,
            f"data.source=arrays:{tmp_path / 'sorted.npz'}",
            "data.limit=9",
            "data.validation_limit=3",
        )
    )
    assert sorted(_labels(data.train)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(_labels(data.validation)) == [0, 1, 2]


def test_arrays_take_class_names_as_labels_and_a_missing_array_is_named(tmp_path):
    """Before: string labels failed inside NumPy (`ufunc 'maximum' did not contain
    a loop`), and a file without `x` with a bare `KeyError`."""
    x = np.zeros((12, 8, 8, 3), "float32")
    np.savez(tmp_path / "named.npz", x=x, y=np.array(["dog", "cat", "owl"] * 4))
    source = f"data.source=arrays:{tmp_path / 'named.npz'}"
    data = load_data(_config(tmp_path, source, "data.validation_fraction=0.25"))
    assert data.class_names == ["cat", "dog", "owl"]  # sorted, as a table's
    assert sorted(_labels(data.train)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ordered = load_data(_config(tmp_path, source, "data.class_names=[owl, dog, cat]"))
    assert ordered.class_names == ["owl", "dog", "cat"]
    with pytest.raises(ValueError, match=r"not among data.class_names \['owl', 'dog'\]: \['cat'\]"):
        load_data(_config(tmp_path, source, "data.class_names=[owl, dog]"))
    np.savez(tmp_path / "renamed.npz", images=x, labels=np.zeros(12, "int64"))
    with pytest.raises(ValueError, match=r"needs the arrays 'x' .* no 'x'. Its arrays: \['images'"):
        load_data(_config(tmp_path, f"data.source=arrays:{tmp_path / 'renamed.npz'}"))


def test_a_class_too_small_to_hold_out_stays_in_training_and_is_named(tmp_path):
    """Before: at `validation_fraction=0.6` a class's one example went to validation
    (the model never trained on it), and a class left without a validation example
    (its metrics undefined) was not named."""
    x = np.zeros((13, 8, 8, 3), "float32")
    np.savez(tmp_path / "few.npz", x=x, y=np.array(["common"] * 10 + ["few"] * 2 + ["rare"]))
    source = f"data.source=arrays:{tmp_path / 'few.npz'}"
    data = load_data(_config(tmp_path, source, "data.validation_fraction=0.6"))
    assert data.class_names == ["common", "few", "rare"]
    assert sorted(_labels(data.train)) == [0, 0, 0, 0, 1, 2]  # rare's one example trains
    assert sorted(_labels(data.validation)) == [0] * 6 + [1]
    (report,) = data.reports
    assert report.source == f"validation (0.6 of arrays:{tmp_path / 'few.npz'}, stratified)"
    assert [note.split(",")[0] for note in report.notes] == ["class 'rare' has 1 example"]
    quarter = load_data(_config(tmp_path, source, "data.validation_fraction=0.25"))
    notes = [note.split(",")[0] for note in quarter.reports[0].notes]
    assert notes == ["class 'few' has 2 examples", "class 'rare' has 1 example"]
    assert "balanced accuracy averages the other classes" in quarter.reports[0].notes[0]


@pytest.mark.slow
def test_config_class_names_make_unknown_table_labels_bad_records(tmp_path):
    rows = ["text,label"] + [f"good {i},fresh" for i in range(30)] + ["typo,frseh"]
    rows += [f"bad {i},rotten" for i in range(30)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    source = f"data.source=table:{tmp_path / 'reviews.csv'}"
    found = load_data(_config(tmp_path, source, "model.backbone=all-minilm-l6-v2"))
    assert found.class_names == ["fresh", "frseh", "rotten"]
    assert any("'frseh' has 1 row(s)" in note for note in found.reports[0].notes)
    named = load_data(
        _config(
            tmp_path, source, "model.backbone=all-minilm-l6-v2", "data.class_names=[rotten, fresh]"
        )
    )
    assert named.class_names == ["rotten", "fresh"]
    assert named.reports[0].counts() == {"unknown label": 1}
    assert named.reports[0].one_line().startswith("skipped 1 of 61 records")


def test_a_corrupt_image_is_named_in_the_report_not_in_a_raw_tensorflow_line(tmp_path, capfd):
    import kerastl.data

    image_folder_of(tmp_path, ["ants", "bees"], 2)
    (tmp_path / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    _, _, report = kerastl.data.image_folder(tmp_path, (8, 8))
    captured = capfd.readouterr()
    assert "rendezvous" not in captured.err.lower() and "Invalid PNG" not in captured.err
    assert report.one_line() == f"skipped 1 of 5 records in {tmp_path} (1 x corrupt)"
    assert "broken.png" in report.summary()


def _ids_of(dataset):
    """Each example's id: images whose every pixel holds it."""
    return sorted(int(x[0, 0, 0]) for batch, _ in dataset for x in np.asarray(batch))


@pytest.mark.slow
def test_validation_is_held_out_of_training_and_the_test_split_evaluated_once(
    tmp_path, monkeypatch
):
    import kerastl.app.run as run

    def arrays(name, ids):
        x = np.broadcast_to(ids[:, None, None, None], (len(ids), 8, 8, 3)).astype("float32")
        np.savez(tmp_path / f"{name}.npz", x=x, y=(ids % 2).astype("int64"))
        return f"arrays:{tmp_path / name}.npz"

    config = _config(
        tmp_path,
        f"data.source={arrays('train', np.arange(40))}",
        f"data.test_source={arrays('test', np.arange(100, 110))}",
        "data.validation_fraction=0.25",
        "stages=[{epochs: 2, train: head}]",
        "export=false",
    )
    data = load_data(config)
    train, validation, test = (_ids_of(d) for d in (data.train, data.validation, data.test))
    assert len(validation) == 10 and sorted(train + validation) == list(range(40))
    assert sorted(_labels(data.validation)) == [0] * 5 + [1] * 5  # stratified
    assert test == list(range(100, 110))

    passes = []

    def counted(dataset):
        def examples():
            passes.append(1)
            yield from dataset.as_numpy_iterator()

        import tensorflow as tf

        return tf.data.Dataset.from_generator(examples, output_signature=dataset.element_spec)

    monkeypatch.setattr(
        run,
        "load_data",
        lambda c, spec, **options: dataclasses.replace(data, test=counted(data.test)),
    )
    result = run.train(config, verbose=0)
    assert len(passes) == 1 and result.test.plain.examples == 10
    with open(result.report) as report:
        assert "## Test (evaluated once" in report.read()


def test_the_recipes_hold_validation_out_of_training_and_never_select_on_test():
    from pathlib import Path

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    yamls = sorted(recipes.glob("*.yaml"))
    assert {path.stem for path in yamls} >= {"image_classification", "text_classification"}
    for path in yamls:  # the longer runs (`*_full.yaml`) too
        data = load_config(path).data
        assert data.validation_split is None and data.test_split == "test", path.name
    with pytest.raises(ValueError, match="cannot be the test split"):
        load_config(None, ["data.validation_split=test", "data.test_split=test"])
