"""Benchmarks for warmgw. `python -m loadtest.overhead`: the gateway's per-request overhead."""
