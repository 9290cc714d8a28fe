"""Benchmarks behind `morphlm bench ...`: each writes benchmarks/results/<name>.json (see common.py)."""
