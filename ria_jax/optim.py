"""Optimisers, learning-rate schedules and the RIA-weight warm-up, from the ``optim``/``loss`` config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def learning_rate_schedule(optim_cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to ``lr * final_lr_ratio``, step decay or constant.

  Args:
    optim_cfg: ``lr``, ``schedule``, ``warmup_steps``, ``final_lr_ratio``
      (cosine), ``step_boundaries`` (fractions of training) and ``step_decay``
      (step).
    total_steps: length of training.

  Returns:
    An optax schedule.
  """
  lr = float(optim_cfg["lr"])
  warmup = int(optim_cfg.get("warmup_steps", 0))
  kind = optim_cfg.get("schedule", "cosine")
  decay_steps = max(total_steps - warmup, 1)
  if kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(optim_cfg.get("final_lr_ratio", 0.0)))
  elif kind == "step":
    boundaries = {int(b * total_steps) - warmup: float(optim_cfg.get("step_decay", 0.1))
                  for b in optim_cfg.get("step_boundaries", (0.5, 0.75))}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif kind == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optim.schedule={kind!r} is not one of {SCHEDULES}.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params: Any) -> Any:
  """True for weights that get weight decay: kernels, not biases or BatchNorm scales/offsets."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def create_optimizer(optim_cfg: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
  """The optax transformation and its learning-rate schedule.

  Args:
    optim_cfg: ``name`` (sgd|adamw), ``momentum``, ``nesterov``,
      ``weight_decay`` (decoupled for AdamW, L2-style added to the gradient for
      SGD as in PyTorch, both skipping biases and BatchNorm parameters),
      ``grad_clip`` (global norm, 0 = off), ``b1``, ``b2``, ``eps`` and the
      schedule fields.
    total_steps: length of training.
  """
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  name = optim_cfg.get("name", "sgd")
  wd = float(optim_cfg.get("weight_decay", 0.0))
  chain = []
  if float(optim_cfg.get("grad_clip", 0.0)) > 0:
    chain.append(optax.clip_by_global_norm(float(optim_cfg["grad_clip"])))
  if name == "sgd":
    if wd > 0:
      chain.append(optax.add_decayed_weights(wd, mask=decay_mask))
    chain.append(optax.sgd(schedule, momentum=float(optim_cfg.get("momentum", 0.9)) or None,
                           nesterov=bool(optim_cfg.get("nesterov", False))))
  elif name == "adamw":
    chain.append(optax.adamw(schedule, b1=float(optim_cfg.get("b1", 0.9)), b2=float(optim_cfg.get("b2", 0.999)),
                             eps=float(optim_cfg.get("eps", 1e-8)), weight_decay=wd, mask=decay_mask))
  else:
    raise ValueError(f"optim.name={name!r} is not one of {OPTIMIZERS}.")
  return optax.chain(*chain), schedule


def beta_schedule(loss_cfg: Mapping[str, Any]) -> optax.Schedule:
  """RIA weight over steps: 0 -> beta linearly over ``beta_warmup_steps`` after ``beta_delay_steps``.

  A warm-up avoids starving classification early on (DESIGN.md section 4).
  """
  beta = float(loss_cfg.get("beta", 0.5))
  delay = int(loss_cfg.get("beta_delay_steps", 0))
  warmup = int(loss_cfg.get("beta_warmup_steps", 0))

  def schedule(step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    ramp = jnp.clip((step - delay + 1) / max(warmup, 1), 0.0, 1.0) if warmup > 0 else \
        (step >= delay).astype(jnp.float32)
    return beta * ramp

  return schedule
