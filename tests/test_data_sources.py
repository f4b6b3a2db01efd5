"""Image folders and text tables: bad records are skipped and named, never crash a run."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kerastl.data
from kerastl.data import BadRecordError


def _png(path, channels, value=100):
    image = np.full((12, 10, channels), value, "uint8")
    image[0, 0] = 0
    path.write_bytes(tf.io.encode_png(image).numpy())


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for name in ("cats", "dogs", "empty"):
        (root / name).mkdir(parents=True)
    _png(root / "cats" / "rgb.png", 3)
    _png(root / "cats" / "grey.png", 1, value=50)
    _png(root / "cats" / "rgba.png", 4)
    (root / "cats" / "grey.jpg").write_bytes(
        tf.io.encode_jpeg(np.full((8, 8, 1), 9, "uint8")).numpy()
    )
    _png(root / "dogs" / "dog.png", 3)
    (root / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dogs" / "empty.png").write_bytes(b"")
    _png(root / "dogs" / "two_channel.png", 2)
    truncated = tf.io.encode_png(np.ones((40, 40, 3), "uint8")).numpy()
    (root / "dogs" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")
    Image.fromarray(np.full((9, 7, 3), 200, "uint8")).save(root / "dogs" / "dog.webp")
    (root / "dogs" / "dog.tif").write_bytes(b"II*\0")  # a format not read: noted
    (root / "dogs" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not even noted
    return root


def test_image_folder_skips_and_names_bad_files_and_reads_the_rest(folder):
    dataset, names, report = kerastl.data.image_folder(folder, (16, 16))
    assert names == ["cats", "dogs", "empty"]
    assert report.kept == 6
    skipped = {path.split("/")[-1]: reason for path, reason in report.skipped}
    assert set(skipped) == {"corrupt.jpg", "empty.png", "two_channel.png", "truncated.png"}
    assert skipped["two_channel.png"].startswith("wrong channels: 2")
    assert report.counts() == {"corrupt": 3, "wrong channels": 1}
    assert any("'empty' has no usable image" in note for note in report.notes)
    assert "files of other types, not read: 1 .tif, 1 .txt (read: .jpg," in report.summary()
    assert "skipped 4" in report.summary()
    images, labels = zip(*[(x.numpy(), int(y)) for x, y in dataset], strict=True)
    assert labels == (0, 0, 0, 0, 1, 1)  # dogs: dog.png, dog.webp
    assert abs(images[5].mean() - 200) < 4  # the WebP's grey, lossy-coded
    assert all(x.shape == (16, 16, 3) and x.dtype == np.float32 for x in images)
    grey = images[1]  # cats/grey.png: the same value in the three channels
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert min(x.min() for x in images) >= 0 and max(x.max() for x in images) <= 255


def test_keras_image_dataset_from_directory_stops_midway_on_the_same_folder(folder):
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(16, 16), shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        for _ in dataset:
            pass


def test_image_folder_strict_raises_on_the_first_bad_file(folder):
    with pytest.raises(BadRecordError, match=r"dogs/corrupt.jpg: corrupt"):
        kerastl.data.image_folder(folder, (16, 16), strict=True)


def test_image_folder_rejects_classes_without_folders(folder):
    with pytest.raises(ValueError, match=r"Classes without a folder.*\['birds'\]"):
        kerastl.data.image_folder(folder, (16, 16), class_names=["cats", "birds"])
    with pytest.raises(FileNotFoundError, match="Received: directory="):
        kerastl.data.image_folder(folder / "nope", (16, 16))


def test_csv_table_reports_missing_fields_and_unknown_labels_by_row(tmp_path):
    table = tmp_path / "reviews.csv"
    table.write_text(
        'text,label\ngreat film,fresh\n,fresh\ndull,\nodd one,meh\n"long, with a comma",rotten\n'
    )
    dataset, names, report = kerastl.data.text_table(table, class_names=["rotten", "fresh"])
    assert names == ["rotten", "fresh"]
    rows = [(t.numpy().decode(), int(y)) for t, y in dataset]
    assert rows == [("great film", 1), ("long, with a comma", 0)]
    assert [where.rsplit(":", 1)[1] for where, _ in report.skipped] == ["3", "4", "5"]
    assert report.counts() == {"missing field": 2, "unknown label": 1}


def test_a_table_with_a_byte_order_mark_reads_and_a_missing_column_is_named(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; before, it joined the
    first column's name, every row was skipped and the table called empty."""
    mark = b"\xef\xbb\xbf"
    table = tmp_path / "excel.csv"
    table.write_bytes(mark + b'text,label\r\ngreat film,fresh\r\n"dull, long",rotten\r\n')
    dataset, names, report = kerastl.data.text_table(table)
    rows = [(t.numpy().decode(), int(y)) for t, y in dataset]
    assert rows == [("great film", 0), ("dull, long", 1)] and names == ["fresh", "rotten"]
    assert report.skipped == []
    lines = tmp_path / "excel.jsonl"
    lines.write_bytes(mark + json.dumps({"text": "great film", "label": "fresh"}).encode())
    dataset, _, report = kerastl.data.text_table(lines)
    assert [t.numpy().decode() for t, _ in dataset] == ["great film"] and report.skipped == []
    with pytest.raises(ValueError, match=r"no column 'review' in its header; its columns: \['text"):
        kerastl.data.text_table(table, text="review")


def test_jsonl_table_skips_malformed_lines_and_infers_classes(tmp_path):
    table = tmp_path / "reviews.jsonl"
    lines = [
        json.dumps({"review": "fine", "y": "pos"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"review": "bad"}),
        json.dumps({"review": "awful", "y": "neg"}),
    ]
    table.write_text("\n".join(lines) + "\n")
    dataset, names, report = kerastl.data.text_table(table, text="review", label="y")
    assert names == ["neg", "pos"]
    assert [int(y) for _, y in dataset] == [1, 0]
    assert report.counts() == {"malformed row": 2, "missing field": 1}
    with pytest.raises(BadRecordError, match=r"reviews.jsonl:2: malformed row"):
        kerastl.data.text_table(table, text="review", label="y", strict=True)


def test_text_table_rejects_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"Expected a .csv or .jsonl file. Received: path="):
        kerastl.data.text_table(tmp_path / "reviews.tsv")


def test_a_folder_image_reaches_the_model_as_served_bytes_and_kerastl_explain_give_it(tmp_path):
    """One resize for a run's images (`resized_rgb`, antialiased): training from a
    folder, the exported `image_bytes` signature and `kerastl explain`. The folder
    reader resized without antialiasing before: on texture, tens of grey levels
    away from what the served model then received."""
    from kerastl.export.signatures import decode_images
    from kerastl.preprocessing import load_image

    (tmp_path / "photos" / "texture").mkdir(parents=True)
    path = tmp_path / "photos" / "texture" / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    dataset, _, _ = kerastl.data.image_folder(tmp_path / "photos", (24, 20))
    trained = next(iter(dataset))[0].numpy()
    served = decode_images(tf.constant([path.read_bytes()]), (24, 20))[0].numpy()
    explained = load_image(path, (24, 20), crop_fraction=1.0, antialias=True)
    # The same op on the same pixels: equal up to float32 rounding (~1e-5 at 255).
    np.testing.assert_allclose(served, trained, atol=1e-3)
    np.testing.assert_allclose(explained, trained, atol=1e-3)
    aliased = tf.image.resize(pixels.astype("float32"), (24, 20)).numpy()
    assert np.abs(aliased - trained).mean() > 10


def test_bmps_tensorflow_would_misread_are_skipped_and_named(tmp_path):
    root = tmp_path / "bmps" / "cells"
    root.mkdir(parents=True)
    colour = np.zeros((6, 5, 3), "uint8")
    colour[..., 2], colour[:3, :, 0] = 200, 100
    image = Image.fromarray(colour)
    image.save(root / "rgb.bmp")
    image.convert("L").save(root / "grey.bmp")  # 8-bit with a grey palette: reads right
    image.quantize(8).save(root / "palette.bmp")
    image.convert("1").save(root / "mono.bmp")
    # TensorFlow's decoder, on its own: the palette's indices (0-7) come out as grey levels.
    misread = tf.io.decode_image((root / "palette.bmp").read_bytes(), channels=3).numpy()
    assert misread.max() < 8
    dataset, _, report = kerastl.data.image_folder(root.parent, (6, 5))
    skipped = {path.split("/")[-1]: reason for path, reason in report.skipped}
    assert set(skipped) == {"palette.bmp", "mono.bmp"}
    assert "with a colour palette, whose indices" in skipped["palette.bmp"]
    assert "1 bit per pixel" in skipped["mono.bmp"] and "save it as PNG" in skipped["mono.bmp"]
    assert report.counts() == {"unsupported BMP": 2}
    grey, rgb = (x.numpy() for x, _ in dataset)  # grey.bmp, rgb.bmp
    np.testing.assert_allclose(rgb, colour, atol=1e-3)
    np.testing.assert_allclose(grey[..., 0], np.asarray(image.convert("L")), atol=1e-3)


def test_image_folder_shows_the_progress_of_its_check(folder, capsys):
    kerastl.data.image_folder(folder, (16, 16), verbose=2)
    out = capsys.readouterr().out
    assert f"kerastl: checking the images in {folder} (10 images) ..." in out
    assert f"kerastl: checking the images in {folder}: 10 images in" in out
