"""Fused CPU kernels for whole chains (see `gradxform.update_and_apply`).

`program.py` traces the elementwise parts at the end of a chain and writes them, with the
parameter step, as one C++ loop; `build.py` compiles it once per machine and the XLA FFI
handler of `elementwise.cc` runs it over every leaf in one pass, called by `calls.py` on each
device's part of the leaves. `codec.py` is int8 state's quantization by the same helpers. The
per-leaf chain stays the reference: every fused result equals it to float32 rounding.
"""
