"""`ExportOptions`: the settings the SavedModel and TF Serving exports share,
checked once where an export starts and passed whole to the code that writes
and checks it."""

from __future__ import annotations

import dataclasses

from kerastl._validation import check_positive_int
from kerastl.export.parity import DEFAULT_TOLERANCE

IMAGE_DTYPES = ("float32", "uint8")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How a SavedModel's signatures are built and checked.

    Args:
        image_dtype: `"float32"` or `"uint8"` for the `image_tensor` input.
        top_k: labels in the `class_name` output.
        preprocessor: the KerasHub text preprocessor of the `text` signature
            (None: the model's own, else the registered backbone's).
        sequence_length: that registered preprocessor's token length.
        tolerance: largest absolute difference of probabilities allowed
            against Keras.
        tta: the views `image_tensor_tta` averages over (`dihedral`, `flip`;
            checked with that signature).
        verbose: progress output, as in `kerastl.export.saved_model`.
        antialias: how `image_bytes` and `tf_example` resize a decoded image,
            as in `kerastl.export.saved_model`.

    Raises:
        ValueError: a value outside its range (named, with the value).

    Example:
        >>> ExportOptions(image_dtype="uint8", top_k=3)
        ExportOptions(image_dtype='uint8', top_k=3, ...)
    """

    image_dtype: str = "float32"
    top_k: int = 5
    preprocessor: object = dataclasses.field(default=None, repr=False)
    sequence_length: int = 128
    tolerance: float = DEFAULT_TOLERANCE
    tta: str = "dihedral"
    verbose: int | str = "auto"
    antialias: bool = True

    def __post_init__(self):
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(
                f"`image_dtype` must be one of {IMAGE_DTYPES}. "
                f"Received: image_dtype={self.image_dtype!r}."
            )
        check_positive_int("top_k", self.top_k)
        if not isinstance(self.antialias, bool):
            raise ValueError(
                f"`antialias` must be True or False. Received: antialias={self.antialias!r}."
            )
        check_positive_int("sequence_length", self.sequence_length)
        if isinstance(self.tolerance, bool) or not self.tolerance > 0:
            raise ValueError(
                f"`tolerance` must be a positive number. Received: tolerance={self.tolerance!r}."
            )
