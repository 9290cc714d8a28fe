"""Benchmarks behind `morphlm bench ...` (growth, compression, fpt, throughput): each writes
benchmarks/results/<name>.json with the metadata of common.py. runner.py is the one runner (a result cache
per (arm, seed), a worker pool, stop handling), stats.py the one mean ± std over seeds; data sets are read
from the data folder (:func:`morphlm.data.paths.data_dir`, ``$MORPHLM_DATA``)."""
