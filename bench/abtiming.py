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


def print_summary(results: dict[str, dict[str, list[float]]], variants: tuple[str, str], header: str) -> None:
    """One line per workload: the median over rounds of each variant's seconds and their ratio
    (first / second: above 1 means the second variant is faster)."""
    a_name, b_name = variants
    print(f"\n{header}")
    print(f"{'workload':<14}{a_name + ' s':>16}{b_name + ' s':>18}{'speed-up':>10}")
    for work, cells in results.items():
        a, b = (statistics.median(cells[v]) for v in variants)
        print(f"{work:<14}{a:>16.4f}{b:>18.4f}{a / b:>10.2f}")
