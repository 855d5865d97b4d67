"""The per-part benchmarks (``finops bench-producer``, ``bench-stream``, ``bench-sink`` and the intake bench), in
the application shell: each drives a part's public API against a bare baseline, and the stream bench feeds the hot
path from the fleet simulator (``producers.simulator``), i.e. two parts at once. ``finops bench`` (:mod:`finops.bench`)
runs them all and writes the table.
"""
