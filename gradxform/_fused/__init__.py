"""Fused CPU kernels for whole chains (see `gradxform.update_and_apply`).

`adam.py` recognises a chain that ends in Adam's parts and runs them, with the parameter step,
as one pass of a C++ kernel (`adam.cc`, built by `build.py`). The per-leaf chain stays the
reference: every fused result equals it to float32 rounding.
"""
