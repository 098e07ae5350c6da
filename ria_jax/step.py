"""TrainState, the pure per-device ``train_step`` and its data-parallel, jitted form.

``train_step(state, batch, rng)`` is written for one device's share of the
batch, pmap-style: metrics are summed with ``lax.psum`` over the ``'data'``
axis, gradients are summed too (by AD itself, see the comment in the code;
the objective is normalised by *global* counts, so the sum is the
global-batch gradient) and BatchNorm statistics are averaged with
``lax.pmean``. :func:`make_train_step` wraps it in ``jax.shard_map`` inside
``jax.jit`` with the state replicated, the batch sharded along ``'data'`` and
the state's buffers donated. The same code runs on 1 CPU, N GPUs and
multi-host pods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from ria_jax import losses, objective, optim
from ria_jax.parallel import AXIS

# Codes of the ``nonfinite`` metric: which term went NaN/inf first.
NONFINITE_TERMS = {1: "ce", 2: "ria", 3: "gradients"}


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (replicated on every device).

  Attributes:
    step: number of updates applied so far.
    params: model parameters (float32).
    model_state: other model collections, e.g. ``{'batch_stats': ...}``.
    opt_state: optax state.
    rng: raw ``uint32[2]`` key data of the run's base key (steps fold in their index).
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(variables: Mapping[str, Any], tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A step-0 state from initialised model variables."""
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
               beta_schedule: optax.Schedule, ria_cfg: losses.RiaConfig, alpha: float, use_ria: bool,
               label_smoothing: float = 0.0, axis_name: str | None = AXIS
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on this device's share of the batch (pure; call inside ``shard_map``).

  Args:
    state: the replicated train state.
    batch: this device's examples (see ``objective.objective``).
    rng: a key for this step (dropout); each device folds in its index.
    model: the classifier.
    tx: the optimiser.
    lr_schedule: learning rate by step (logged only; ``tx`` holds its own).
    beta_schedule: RIA weight by step.
    ria_cfg: RIA loss constants.
    alpha: CE weight.
    use_ria: statically False for the plain-CE baseline.
    label_smoothing: CE label smoothing.
    axis_name: the data axis (``None`` to run without ``shard_map``).

  Returns:
    ``(new_state, metrics)`` with global-batch metrics. A step whose loss or
    gradients are not finite leaves params, optimiser and BatchNorm state
    unchanged and reports the term in ``metrics['nonfinite']``.
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  beta = beta_schedule(state.step)

  def loss_fn(params):
    return objective.objective(model, params, state.model_state, batch, ria_cfg=ria_cfg, alpha=alpha,
                               beta=beta, use_ria=use_ria, train=True, rngs={"dropout": rng},
                               axis_name=axis_name, label_smoothing=label_smoothing)

  (loss, (terms, sums, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # No psum on ``grads``: the params enter shard_map replicated (invariant
    # along the axis), and under shard_map's varying-manual-axes typing the
    # transpose of that replication *is* a psum, which AD has already applied.
    loss, terms, sums = jax.lax.psum((loss, terms, sums), axis_name)
    new_model_state = jax.lax.pmean(new_model_state, axis_name)
  grad_norm = optax.tree.norm(grads)

  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  nonfinite = jnp.select([~jnp.isfinite(terms["ce"]), ~jnp.isfinite(terms["ria"]), ~jnp.isfinite(grad_norm)],
                         [1, 2, 3], 0)
  ok = nonfinite == 0
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                            opt_state=keep(new_opt_state, state.opt_state),
                            model_state=keep(new_model_state, state.model_state))
  metrics = objective.finalize_metrics(sums)
  metrics.update(loss=loss, lr=lr_schedule(state.step), beta=jnp.asarray(beta, jnp.float32),
                 grad_norm=grad_norm, nonfinite=nonfinite, ce_term=terms["ce"], ria_term=terms["ria"])
  return new_state, metrics


def make_train_step(mesh: Mesh, **step_kwargs: Any) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                                                 tuple[TrainState, dict[str, jax.Array]]]:
  """``train_step`` as one jitted, data-parallel function ``(state, global_batch) -> (state, metrics)``.

  The step's key is ``fold_in(state.rng, state.step)``, so a resumed run
  draws the same randomness as an uninterrupted one.
  """

  def per_device(state: TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return train_step(state, batch, rng, axis_name=AXIS, **step_kwargs)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                          out_specs=(PartitionSpec(), PartitionSpec()))
  return jax.jit(sharded, donate_argnums=(0,))


def step_kwargs_from_config(config: Any, model: nn.Module, total_steps: int) -> dict[str, Any]:
  """The static arguments of ``train_step`` built from a config."""
  tx, lr_schedule = optim.create_optimizer(config.optim, total_steps)
  return {
      "model": model,
      "tx": tx,
      "lr_schedule": lr_schedule,
      "beta_schedule": optim.beta_schedule(config.loss),
      "ria_cfg": losses.RiaConfig.from_config(config.ria),
      "alpha": float(config.loss.alpha),
      "use_ria": float(config.loss.beta) > 0,
      "label_smoothing": float(config.loss.get("label_smoothing", 0.0)),
  }
