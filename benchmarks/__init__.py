"""Benchmarks of the DialNexa provider: N concurrent call-waits against the simulator, and hook overhead.

``python -m benchmarks --help`` (or ``make bench BENCH_ARGS="..."``); see ``docs/benchmarks.md``.
"""
