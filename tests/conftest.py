"""Test setup: 8 simulated CPU devices and float32 matmuls at full precision.

The device count must be set before JAX initialises its backend, which is why
it happens here, at import time of the first conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "")

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
