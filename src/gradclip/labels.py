"""Labels shared by the records' readers and the W&B names: one home for how a setting is named.

Plain Python, no torch and no pandas, so that the training process and the analysis both import
it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable

AGC_DEFAULT_EXCLUDE = ("head.*",)  # configs/clip/agc.yaml: the classifier head is exempt, as in timm


def agc_exemption(exclude: Iterable[str]) -> str | None:
    """What an AGC run exempts, when it is not the default: None for ``[head.*]``, 'head clipped'
    for ``[]`` (every unit clipped, the paper's algorithm), else 'exempt <patterns>'."""
    exclude = tuple(exclude)
    if exclude == AGC_DEFAULT_EXCLUDE:
        return None
    return "head clipped" if not exclude else f"exempt {' '.join(exclude)}"
