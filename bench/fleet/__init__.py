"""Helpers of bench/bench_fleet.py: the simulated fleet, the capacity loops, /proc sampling."""
