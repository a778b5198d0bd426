"""Test configuration: 8 fake CPU devices (for pmap / sharding tests), set before jax loads."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert len(jax.devices()) == 8, "tests need the 8 fake CPU devices; jax was imported too early"
