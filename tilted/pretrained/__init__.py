"""Small models trained here on data that ships with a package, with their weights (no downloads).

See :mod:`tilted.pretrained.sklearn_digits` and the model card docs/pretrained.md.
"""

from tilted.pretrained.sklearn_digits import (
    DigitsCNN,
    PixelLogistic,
    digits,
    digits_classifier,
    digits_data,
    digits_logistic,
    digits_unet,
)

__all__ = [
    "DigitsCNN",
    "PixelLogistic",
    "digits",
    "digits_classifier",
    "digits_data",
    "digits_logistic",
    "digits_unet",
]
