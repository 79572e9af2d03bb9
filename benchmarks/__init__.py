"""benchmarks: what the project measures, kept out of the library packages.

The `retina-bench` console script (`benchmarks.cli`, also `python -m benchmarks`) runs the kernel
microbenchmarks (`contrastive`, `attention`) and the library's compile-only resource report
(`kernels.resources`). The scripts beside them (`shards_build.py`, `train_throughput.py`,
`contrastive_tile_sweep.py`, `gpu_session.sh`) run on their own; every result goes to `results/`.
"""
