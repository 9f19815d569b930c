"""`python -m coherence`: show the compiled core at work on the seizure the README describes.

A CPU flipping between 10 % and 90 % averages 50 %: healthy on every dashboard. Its
standard deviation over a window says otherwise. The sentinel itself is the `coherence`
command (coherence.cli): `coherence live`, `coherence simulate`, `coherence check`.
"""
import sys

from coherence import RollingStats, __version__

WINDOW_BUCKETS = 100          # 10 s of 100 ms buckets: the design's default seizure window


def main() -> int:
    steady, seizure = RollingStats(WINDOW_BUCKETS), RollingStats(WINDOW_BUCKETS)
    for i in range(300):
        steady.push(50.0 + (i % 3 - 1))                # 49-51 %: busy but stable
        seizure.push(90.0 if (i // 10) % 2 else 10.0)  # 1 s at 90 %, 1 s at 10 %
    print(f"coherence {__version__}: the compiled core, on 30 s of CPU utilization in 100 ms buckets")
    print(f"{'signal':<28}{'mean %':>8}{'std %':>8}")
    for name, s in (("steady 49-51 %", steady), ("flipping 10 % <-> 90 %", seizure)):
        print(f"{name:<28}{s.mean:>8.1f}{s.std():>8.1f}")
    print("Same average; only the variance shows the seizure.")
    print("Watch this host with `coherence live`; see the demo with `coherence simulate`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
