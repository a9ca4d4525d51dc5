"""The confidence cascade: inside a local site, low-confidence answers go to the upstream.

Per-site switching is all or nothing; a small model is often right when it is sure and wrong
when it is not. Every local answer carries the model's own confidence (the geometric mean of
its chosen tokens' probabilities, from llama.cpp's logits). On the version's shadow samples
(confidence, agreement score) we fit agreement as a non-decreasing function of confidence
(isotonic regression, scipy) and take as the site's threshold the lowest confidence at which
the fitted agreement still meets the promotion bar (the teacher's self-agreement minus the
margin). In `local`, an answer below the threshold is not served: the upstream answers
instead, and the call records why.

The fit needs `min_samples` samples with a confidence; with fewer, or when even the most
confident answers miss the bar, there is no threshold (`None`: the cascade does nothing and the
policy alone decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # serve locally only at or above this confidence; None: no cascade
    bar: float  # the agreement the fit had to reach
    n: int  # samples fitted
    local_share: float  # share of those samples at or above the threshold (1 without a threshold)
    agreement_without: float | None  # mean agreement of all local answers
    agreement_with: float | None  # mean agreement of the answers the cascade keeps local

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate(samples: Sequence[tuple[float, float]], bar: float, min_samples: int) -> Calibration:
    """The cascade threshold from (confidence, score) pairs of one version's shadow samples."""
    pairs = [(float(c), float(s)) for c, s in samples if c is not None and s is not None]
    if not pairs:
        return Calibration(None, bar, 0, 1.0, None, None)
    confidence = np.array([c for c, _ in pairs])
    score = np.array([s for _, s in pairs])
    without = float(score.mean())
    if len(pairs) < min_samples:
        return Calibration(None, bar, len(pairs), 1.0, without, without)
    from scipy.optimize import isotonic_regression  # here: scipy.optimize costs the proxy's start ~0.3 s

    order = np.argsort(confidence, kind="stable")
    fitted = isotonic_regression(score[order], increasing=True).x
    meets = np.nonzero(fitted >= bar)[0]
    if meets.size == 0:
        return Calibration(None, bar, len(pairs), 1.0, without, without)
    first = int(meets[0])
    if first == 0:  # every confidence meets the bar: nothing to send upstream
        return Calibration(None, bar, len(pairs), 1.0, without, without)
    threshold = float(confidence[order][first])
    kept = confidence >= threshold
    return Calibration(threshold, bar, len(pairs), float(kept.mean()), without, float(score[kept].mean()))
