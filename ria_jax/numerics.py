"""Dtype policy for losses and maps: compute in float32, or wider if given wider."""

import jax
import jax.numpy as jnp


def at_least_f32(x: jax.Array) -> jax.Array:
  """Casts bf16/f16 inputs to float32 and leaves float32/float64 as they are.

  Losses, CAMs and boxes are computed in float32 under mixed precision, but
  float64 inputs (finite-difference tests, careful users) keep float64.
  """
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))
