"""Benchmarks run by `manage.py bench ...`: each prints measured numbers next to a baseline
measured in the same invocation, on the same machine."""
