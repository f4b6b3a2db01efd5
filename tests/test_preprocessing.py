"""In-model preprocessing equals Keras Applications' preprocess_input."""

import keras
import numpy as np
import pytest

from kerastl.preprocessing import ImagePreprocessing, Preprocessing, load_image


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_modes_match_keras_applications(mode, reference):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(Preprocessing.from_mode(mode).layer()(x))
    np.testing.assert_allclose(ours, reference(x.copy()), rtol=1e-5, atol=1e-4)


def test_layer_round_trips_its_config():
    layer = ImagePreprocessing(scale=[0.5], offset=[1.0, 2.0, 3.0], reverse_channels=True)
    clone = ImagePreprocessing.from_config(layer.get_config())
    x = np.ones((1, 2, 2, 3), "float32")
    np.testing.assert_array_equal(layer(x), clone(x))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="mode='imagenet'"):
        Preprocessing.from_mode("imagenet")
    with pytest.raises(ValueError, match=r"scale=\[1.0, 2.0\]"):
        ImagePreprocessing(scale=[1.0, 2.0])


def test_load_image_crops_resizes_and_reports_bad_files(tmp_path):
    import PIL.Image

    path = tmp_path / "red.png"
    PIL.Image.new("RGB", (40, 20), (255, 0, 0)).save(path)
    image = load_image(path, (8, 8))
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], 255.0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        load_image(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        load_image(tmp_path / "missing.jpg")
    PIL.Image.new("RGB", (40, 20), (255, 0, 0)).quantize(4).save(tmp_path / "palette.bmp")
    with pytest.raises(ValueError, match=r"palette\.bmp' right: unsupported BMP: 8 bits"):
        load_image(tmp_path / "palette.bmp")  # TF alone: the palette's index 0, black
