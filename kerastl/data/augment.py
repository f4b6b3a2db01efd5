"""Image augmentation: named policies, fixed views for caching, and test-time views.

Augmentation is a Keras layer applied to training batches in the input
pipeline (`FineTuner(augmentation=...)`), never part of the model, so never
exported. Three uses share the views defined here:

- **training**: `augmentation(["dihedral", ...])`, random draws each epoch;
- **cached stages**: `views_of(augmentation, count)` fixes `count` views of
  every training batch, whose frozen features are computed once and served
  one view per example each epoch (`FineTuner(cache_views=...)`);
- **test time**: `tta_views("dihedral")` are the views whose predictions are
  averaged (`kerastl.evaluate(..., tta=...)`).

`label_mixing` is the batch-level kind (MixUp, CutMix): it mixes pairs of
images and their labels, so it maps whole `(images, labels)` batches to soft
labels (`Stage(mixup=...)`, `Stage(cutmix=...)`).

The dihedral group (the 8 symmetries of a square: 4 quarter turns, each
mirrored or not) suits images without an orientation: solar cells, micrographs,
satellite tiles, histology.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras

AUGMENTATIONS = (
    "flip",
    "flip_vertical",
    "dihedral",
    "rotate",
    "rotate_small",
    "zoom",
    "zoom_small",
    "translate",
    "translate_small",
    "contrast",
    "brightness",
    "randaugment",
)
POLICIES = {
    # Deitsch et al. (elpv, 2019): flips, quarter turns, +-3 degrees, +-2% scale and shift.
    "light": ("dihedral", "rotate_small", "zoom_small", "translate_small"),
    "orientation_free": ("dihedral",),
    "natural": ("flip", "rotate", "zoom", "translate", "contrast"),
}
TTA_VIEWS = {"dihedral": tuple(range(8)), "flip": (0, 1), "none": (0,)}
MIXINGS = ("mixup", "cutmix")


@keras.saving.register_keras_serializable(package="kerastl")
class RandomDihedral(keras.layers.Layer):
    """One of the 8 symmetries of the square per image, drawn uniformly.

    View `v` (0-7) transposes the image if `v & 4`, flips it vertically if
    `v & 2` and horizontally if `v & 1`; these 8 compositions are the
    dihedral group (quarter turns and mirrors). A label that does not depend
    on orientation is kept. Square images only (a transpose changes the shape
    of any other).

    Args:
        seed: seed of the draws.

    Example:
        >>> RandomDihedral(seed=0)(images, training=True).shape == images.shape
        True
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        count = keras.ops.shape(images)[0]
        draws = keras.random.randint((count,), 0, 8, seed=self.seed_generator)
        return dihedral_view(images, draws)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def dihedral_view(images, view):
    """The dihedral view `view` of each image of a batch.

    Args:
        images: `[batch, size, size, channels]`, square.
        view: an integer 0-7 for the whole batch, or one per image (`[batch]`).

    Returns:
        The transformed batch, same shape.

    Example:
        >>> dihedral_view(images, 5)  # transposed and flipped horizontally
    """
    ops = keras.ops
    if images.shape[1] is not None and images.shape[1] != images.shape[2]:
        raise ValueError(
            f"Dihedral views need square images. Received: shape {tuple(images.shape)}."
        )
    view = ops.convert_to_tensor(view, "int32")
    if len(view.shape) == 0:
        view = ops.full((ops.shape(images)[0],), view, "int32")

    def where(bit, changed, unchanged):
        mask = ops.reshape(ops.not_equal(ops.bitwise_and(view, bit), 0), (-1, 1, 1, 1))
        return ops.where(mask, changed, unchanged)

    images = where(4, ops.transpose(images, (0, 2, 1, 3)), images)
    images = where(2, ops.flip(images, axis=1), images)
    return where(1, ops.flip(images, axis=2), images)


def augmentation(names: Sequence[str] | str, *, seed: int = 0) -> keras.Sequential:
    """Random image augmentations as one Keras layer (active only when training).

    Args:
        names: a policy (`light`: dihedral + +-3 degrees + +-2% zoom and shift,
            the elpv paper's; `orientation_free`: dihedral only; `natural`:
            horizontal flip, +-10% rotation/zoom/shift, contrast) or a list of
            `flip` (horizontal), `flip_vertical`, `dihedral`, `rotate` (+-10% of
            a turn), `rotate_small` (+-3 degrees), `zoom` (+-10%), `zoom_small`
            (+-2%), `translate` (+-10%), `translate_small` (+-2%), `contrast`
            (+-20%), `brightness` (+-20%), `randaugment` (Keras's RandAugment);
            a list may also name policies.
        seed: seed of the random draws: the same seed, the same draws.

    Returns:
        A `keras.Sequential`; pass it as `FineTuner(augmentation=...)`.

    Example:
        >>> tuner = kerastl.FineTuner(model, augmentation=augmentation("light"))
    """
    layers = keras.layers
    makers: dict[str, Callable[[], keras.layers.Layer]] = {
        "flip": lambda: layers.RandomFlip("horizontal", seed=seed),
        "flip_vertical": lambda: layers.RandomFlip("vertical", seed=seed),
        "dihedral": lambda: RandomDihedral(seed=seed),
        "rotate": lambda: layers.RandomRotation(0.1, seed=seed),
        "rotate_small": lambda: layers.RandomRotation(3 / 360, fill_mode="reflect", seed=seed),
        "zoom": lambda: layers.RandomZoom(0.1, seed=seed),
        "zoom_small": lambda: layers.RandomZoom(0.02, fill_mode="reflect", seed=seed),
        "translate": lambda: layers.RandomTranslation(0.1, 0.1, seed=seed),
        "translate_small": lambda: layers.RandomTranslation(
            0.02, 0.02, fill_mode="reflect", seed=seed
        ),
        "contrast": lambda: layers.RandomContrast(0.2, seed=seed),
        "brightness": lambda: layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed),
        "randaugment": lambda: layers.RandAugment(value_range=(0, 255), seed=seed),
    }
    expanded = policy_layers(names)
    unknown = [name for name in expanded if name not in makers]
    if unknown or not expanded:
        raise ValueError(
            f"Augmentations must be a policy {tuple(POLICIES)} or a non-empty list of "
            f"{AUGMENTATIONS}. Received: {names!r}."
        )
    return keras.Sequential([makers[name]() for name in expanded], name="augmentation")


def policy_layers(names: Sequence[str] | str) -> list[str]:
    """The augmentation names a policy or list stands for, policies expanded.

    Example:
        >>> policy_layers("light")
        ['dihedral', 'rotate_small', 'zoom_small', 'translate_small']
    """
    names = [names] if isinstance(names, str) else list(names)
    return [part for name in names for part in POLICIES.get(name, (name,))]


@dataclasses.dataclass(frozen=True)
class Views:
    """`count` fixed views of an input batch: `views(inputs, index)`.

    Args:
        count: how many views.
        make: `(inputs, index) -> inputs` for `index` in `[0, count)`.
        exact: True when the views are fixed transforms (the same inputs
            always give the same view), False for random draws.
    """

    count: int
    make: Callable
    exact: bool

    def __call__(self, inputs, index: int):
        # Under a mixed policy the augmentation layers compute (and return) in
        # float16 or bfloat16; a view keeps its batch's dtype, which is what
        # the feature extractor was traced for.
        return keras.ops.cast(self.make(inputs, index), inputs.dtype)


def views_of(augmentation: keras.layers.Layer, count: int, *, seed: int = 0) -> Views:
    """`count` views of every batch for caching under `augmentation`.

    With `augmentation` a `RandomDihedral` alone (the `dihedral` or
    `orientation_free` policy) and `count` 8, the views are the 8 exact
    symmetries; otherwise `count` independent, seeded draws of `augmentation`.

    Args:
        augmentation: the training augmentation (a layer or `augmentation(...)`).
        count: views per example, >= 1.
        seed: seed of the random draws.

    Returns:
        A `Views`.

    Example:
        >>> views = views_of(augmentation("dihedral"), 8)
        >>> views.exact
        True
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"`cache_views` must be an integer >= 1. Received: {count!r}.")
    inner = augmentation.layers if isinstance(augmentation, keras.Sequential) else [augmentation]
    if count == 8 and len(inner) == 1 and isinstance(inner[0], RandomDihedral):
        return Views(8, dihedral_view, exact=True)
    config = keras.saving.serialize_keras_object(augmentation)
    copies = [
        keras.saving.deserialize_keras_object(_reseeded(config, seed * 1000 + index))
        for index in range(count)
    ]
    return Views(count, lambda inputs, index: copies[index](inputs, training=True), exact=False)


def tta_views(name: str) -> tuple[int, ...]:
    """The dihedral view indices test-time augmentation averages over.

    Args:
        name: `dihedral` (all 8), `flip` (identity and horizontal mirror) or `none`.

    Returns:
        View indices for `dihedral_view`.

    Example:
        >>> tta_views("flip")
        (0, 1)
    """
    if name not in TTA_VIEWS:
        raise ValueError(f"`tta` must be one of {tuple(TTA_VIEWS)}. Received: tta={name!r}.")
    return TTA_VIEWS[name]


def label_mixing(kind: str, strength: float, num_classes: int, *, seed: int = 0) -> Callable:
    """MixUp or CutMix of a batch: pairs of images mixed, and their labels with them.

    MixUp (Zhang et al. 2018) blends two images with a weight drawn from
    Beta(`strength`, `strength`); CutMix (Yun et al. 2019) pastes a box of one
    image into another, the box's area drawn from Beta(`strength`,
    `strength`). Each image's one-hot label is mixed in the same proportions,
    so the labels come out soft (train with a categorical cross-entropy). The
    partners are a seeded permutation of the batch (Keras's `MixUp`/`CutMix`
    layers).

    Args:
        kind: `mixup` or `cutmix`.
        strength: the Beta distribution's parameter, > 0 (MixUp 0.2-0.4 and
            CutMix 1.0 are the papers' choices).
        num_classes: classes of the integer labels.
        seed: seed of the draws.

    Returns:
        A function `(images, labels, *rest) -> (images, soft labels, *rest)`
        for `tf.data.Dataset.map` on batches with integer labels.

    Example:
        >>> mixed = train_ds.map(label_mixing("mixup", 0.2, num_classes=2))
    """
    if kind not in MIXINGS:
        raise ValueError(f"`kind` must be one of {MIXINGS}. Received: kind={kind!r}.")
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not strength > 0:
        raise ValueError(f"`{kind}` must be a number > 0. Received: {kind}={strength!r}.")
    # float32 under any policy: Keras 3.15's MixUp and CutMix fail in a mixed
    # policy's float16 (a float32 Beta draw times float16 images; `tf.range`
    # in float16), and the soft labels are the loss's, which is float32.
    layer = (
        keras.layers.MixUp(alpha=strength, seed=seed, dtype="float32")
        if kind == "mixup"
        else keras.layers.CutMix(factor=strength, seed=seed, dtype="float32")
    )

    def mix(images, labels, *rest):
        import tensorflow as tf

        _, one_hot, *_ = one_hot_labels(num_classes)(images, labels)
        if kind == "cutmix":
            mixed_images, soft = _cutmix_labelled_by_pasted_pixels(layer, images, one_hot)
        else:
            mixed = layer({"images": images, "labels": one_hot}, training=True)
            mixed_images, soft = mixed["images"], mixed["labels"]
        return (tf.cast(mixed_images, images.dtype), soft, *rest)

    return mix


def one_hot_labels(num_classes: int) -> Callable:
    """Integer labels of a batch as one-hot rows (validation data of a mixing stage).

    Args:
        num_classes: classes of the labels.

    Returns:
        A function `(inputs, labels, *rest) -> (inputs, one-hot labels, *rest)`
        for `tf.data.Dataset.map`.

    Example:
        >>> validation = val_ds.map(one_hot_labels(2))
    """

    def one_hot(inputs, labels, *rest):
        import tensorflow as tf

        return (inputs, tf.one_hot(tf.reshape(tf.cast(labels, "int32"), [-1]), num_classes), *rest)

    return one_hot


def _cutmix_labelled_by_pasted_pixels(layer: keras.layers.CutMix, images, one_hot):
    """Keras's `CutMix`, with each label weighted by the pixels actually pasted.

    Keras 3.15 weights the labels by the box's real-valued area but pastes
    the whole pixels inside it: a box of width 7.99 at offset 0.005 pastes 7
    of 8 columns (49 of 64 pixels) and labels the image 100% its partner's
    (tests/test_augment.py shows it). Here the partner's share is the mask's
    mean.
    """
    import tensorflow as tf

    transformation = layer.get_random_transformation({"images": images}, training=True)
    pasted = layer.transform_images(images, transformation, training=True)
    share = tf.reduce_mean(tf.cast(transformation["batch_masks"], "float32"), axis=[1, 2, 3])
    partner = tf.gather(one_hot, transformation["permutation_order"])
    return pasted, (1.0 - share[:, None]) * one_hot + share[:, None] * partner


def _reseeded(config, seed: int):
    """A serialized layer config with every `seed` set to `seed`."""
    if isinstance(config, dict):
        return {k: seed if k == "seed" else _reseeded(v, seed) for k, v in config.items()}
    if isinstance(config, list):
        return [_reseeded(v, seed) for v in config]
    return config
