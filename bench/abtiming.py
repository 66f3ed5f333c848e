"""Timing helpers shared by the side-by-side (A/B) scripts in bench/: a median of repeated calls
after a warm-up, and the summary table of variants measured alternately over rounds."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of fn() after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_summary(results: dict[str, dict[str, list[float]]], variants: tuple[str, ...], header: str) -> None:
    """One line per workload: the median over rounds of each variant's seconds, and each later
    variant's speed-up over the first (first / variant: above 1 means that variant is faster)."""
    base, others = variants[0], variants[1:]
    print(f"\n{header}; speed-up = {base} / variant")
    print(
        f"{'workload':<14}" + "".join(f"{v + ' s':>18}" for v in variants) + "".join(f"{'x ' + v:>18}" for v in others)
    )
    for work, cells in results.items():
        med = {v: statistics.median(cells[v]) for v in variants}
        print(
            f"{work:<14}"
            + "".join(f"{med[v]:>18.4f}" for v in variants)
            + "".join(f"{med[base] / med[v]:>18.2f}" for v in others)
        )
