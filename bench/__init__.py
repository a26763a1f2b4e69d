"""Rerunnable benchmark for docker-heal-proxy; see ``bench/run.py`` and docs/benchmarks.md."""
