"""Small models trained here on data that ships with a package, with their weights (no downloads).

See :mod:`tilted.pretrained.sklearn_digits` (digits DDPM and classifiers), :mod:`tilted.pretrained.peptides`
(a tiny protein ESM) and the model cards in docs/pretrained.md.
"""

from tilted.pretrained.peptides import peptide_data, peptide_lm
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
    "peptide_lm",
    "peptide_data",
]
