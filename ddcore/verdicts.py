"""One noise rule for every notebook's conclusion: when is a difference between two methods real?

Each method is trained `num_nets` times (students from different seeds); its accuracy is a mean
with a spread sd (population std over students, as `evaluate.summarize` reports). For a
difference d = mean_b - mean_a the noise is sqrt(sd_a^2 + sd_b^2), the spread of a difference of
two independent draws; |d| <= noise reads "within noise", otherwise "better" or "worse".

It is a deliberately simple rule for a handful of students, not a significance test: with 3
students a difference just beyond the noise is a hint, and the notebooks say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Comparison", "compare", "noise", "verdict_word"]


def noise(sd_a: float, sd_b: float) -> float:
    """The noise a difference of two means must beat: sqrt(sd_a^2 + sd_b^2)."""
    return math.hypot(sd_a, sd_b)


def verdict_word(diff: float, noise_level: float) -> str:
    """'better', 'worse' or 'within noise' for a difference (b - a) and its noise."""
    if abs(diff) <= noise_level:
        return "within noise"
    return "better" if diff > 0 else "worse"


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean_b - mean_a, in the metric's units (percentage points in the notebooks)
    noise: float  # sqrt(sd_a^2 + sd_b^2)
    word: str  # 'better' | 'worse' | 'within noise' (b compared with a)

    def __str__(self) -> str:
        return f"{self.diff:+.1f} (noise {self.noise:.1f}, {self.word})"


def compare(mean_a: float, sd_a: float, mean_b: float, sd_b: float) -> Comparison:
    """b against a under the shared noise rule."""
    diff, level = mean_b - mean_a, noise(sd_a, sd_b)
    return Comparison(diff, level, verdict_word(diff, level))
