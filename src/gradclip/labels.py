"""Labels shared by the records' readers and the W&B names: one home for how a setting is named.

Plain Python, no torch and no pandas, so that the training process and the analysis both import
it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable

AGC_DEFAULT_EXCLUDE = ("head.*",)  # configs/clip/agc.yaml: the classifier head is exempt, as in timm

# The noise distributions of the closed-form problems (gradclip.data), in words, in the order the
# figures show them.
NOISE_LABEL = {"gaussian": "gaussian noise", "lognormal": "skewed noise (lognormal)",
               "student_t": "heavy-tailed noise (student-t, 3 d.o.f.)",
               "mixture": "symmetric mixture (contaminated normal)", "exponential": "skewed noise (exponential)"}


def agc_exemption(method: str, exclude: Iterable[str] | None) -> str | None:
    """What a run's clipping exempts, where that names another method than the default: None
    unless ``method`` is AGC with an exemption other than ``[head.*]`` (``exclude`` None: the
    default); 'head clipped' for ``[]`` (every unit clipped, the paper's algorithm), else
    'exempt <patterns>'."""
    if method != "agc":  # (a frame of several methods holds nan for the others' exclude)
        return None
    exclude = AGC_DEFAULT_EXCLUDE if exclude is None else tuple(exclude)
    if exclude == AGC_DEFAULT_EXCLUDE:
        return None
    return "head clipped" if not exclude else f"exempt {' '.join(exclude)}"
