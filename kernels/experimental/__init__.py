"""Kernel variants that no GPU has measured yet: tested under Triton's interpreter, compiled ahead of time by the
compile gate and timed by `benchmarks/gpu_check.py`, until a GPU run promotes them into the kernels or removes them.
The model never runs them."""
