"""The train step: 8 simulated devices equal 1 device; non-finite losses are caught and not applied."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from ria_jax import models, optim, parallel, step


def _config(model_name="resnet18"):
  config = base.get_config()
  config.model.name = model_name
  config.model.width = 1 / 8
  config.model.stem = "small"
  config.model.input_norm = "none"
  config.model.dropout = 0.0
  config.model.pool_size = 1
  config.ria.layer = "layer3" if model_name.startswith("resnet") else "conv5_3"
  config.ria.temperature = 0.1
  config.optim.lr = 0.05
  return config


def _batch(n=16, size=32, seed=0):
  rng = np.random.default_rng(seed)
  x1y1 = rng.uniform(0, 0.5, size=(n, 2))
  wh = rng.uniform(0.2, 0.5, size=(n, 2))
  valid = rng.uniform(size=n) < 0.75  # uneven share of valid boxes per device
  return {"image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, size=n).astype(np.int32),
          "box": np.concatenate([x1y1, x1y1 + wh], axis=1).astype(np.float32),
          "box_valid": valid}


def _run(config, mesh, n_steps=3):
  model = models.from_config(config.model, 10, axis_name=parallel.AXIS)
  kwargs = step.step_kwargs_from_config(config, model, 100)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  if config.model.dtype == "float64":  # parameters are float32 by design; float64 checks cast them
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  state = parallel.replicate(step.create_train_state(variables, kwargs["tx"], 0), mesh)
  fn = step.make_train_step(mesh, **kwargs)
  history = []
  for i in range(n_steps):
    state, metrics = fn(state, _batch(seed=i))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


# float64 shows the computation is the same (1e-9); float32 shows what users
# see: summation order differs, and BatchNorm's backward on tiny batches
# amplifies the round-off step after step (measured: 1e-5 -> 1e-3 relative
# on VGG16-BN's gradient norm over 4 steps, 1e-14 -> 1e-11 in float64).
@pytest.mark.parametrize("model_name,weights_gradient,dtype,rtol,atol", [
    ("resnet18", "stop", "float32", 1e-4, 1e-5),
    ("resnet18", "full", "float64", 1e-9, 1e-12),
    ("vgg16_bn", "stop", "float64", 1e-9, 1e-12),
])
def test_eight_devices_equal_one_device(model_name, weights_gradient, dtype, rtol, atol):
  assert jax.device_count() == 8
  config = _config(model_name)
  config.ria.weights_gradient = weights_gradient
  config.model.dtype = dtype
  with jax.enable_x64(dtype == "float64"):
    one, hist_one = _run(config, parallel.make_mesh(jax.devices()[:1]))
    eight, hist_eight = _run(config, parallel.make_mesh(jax.devices()))
    init = models.from_config(config.model, 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  # Same global batch, synchronised BatchNorm, global normalisation of the RIA mean.
  for m1, m8 in zip(hist_one, hist_eight, strict=True):
    chex.assert_trees_all_close(m1, m8, rtol=rtol, atol=atol)
  chex.assert_trees_all_close(one.params, eight.params, rtol=rtol, atol=atol)
  chex.assert_trees_all_close(one.model_state, eight.model_state, rtol=rtol, atol=atol)
  assert int(one.step) == 3
  assert all(float(m["ria"]) > 0 and float(m["valid_share"]) < 1 for m in hist_one)  # RIA on, some boxes invalid
  # Training moved the parameters (the comparison is not between two initial states).
  assert not np.allclose(jax.tree.leaves(init["params"])[0], jax.tree.leaves(one.params)[0])


def test_nonfinite_loss_is_reported_and_not_applied():
  config = _config()
  mesh = parallel.make_mesh(jax.devices()[:2])
  model = models.from_config(config.model, 10, axis_name=parallel.AXIS)
  kwargs = step.step_kwargs_from_config(config, model, 100)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  state = parallel.replicate(step.create_train_state(variables, kwargs["tx"], 0), mesh)
  fn = step.make_train_step(mesh, **kwargs)
  batch = _batch()
  batch["image"] = batch["image"].astype(np.float32) / 255
  batch["image"][3, 5, 5, 0] = np.nan
  before = jax.device_get(state)
  state, metrics = fn(state, batch)
  metrics = jax.device_get(metrics)
  assert step.NONFINITE_TERMS[int(metrics["nonfinite"])] == "ce"
  after = jax.device_get(state)
  chex.assert_trees_all_equal(before.params, after.params)
  chex.assert_trees_all_equal(before.opt_state, after.opt_state)
  assert int(after.step) == 1


def test_beta_schedule_and_optimizers():
  sched = optim.beta_schedule(ml_collections.ConfigDict(dict(beta=0.5, beta_delay_steps=10, beta_warmup_steps=4)))
  np.testing.assert_allclose([float(sched(s)) for s in (0, 9, 10, 11, 13, 50)],
                             [0, 0, 0.125, 0.25, 0.5, 0.5])
  lr = optim.learning_rate_schedule({"lr": 1.0, "warmup_steps": 10, "schedule": "cosine"}, 110)
  np.testing.assert_allclose([float(lr(0)), float(lr(5)), float(lr(10)), float(lr(60)), float(lr(110))],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  lr = optim.learning_rate_schedule({"lr": 1.0, "schedule": "step", "step_boundaries": (0.5,),
                                     "step_decay": 0.1}, 100)
  np.testing.assert_allclose([float(lr(49)), float(lr(50))], [1.0, 0.1], rtol=1e-6)
  params = {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "bn": {"scale": jnp.ones(2)}}
  mask = optim.decay_mask(params)
  assert mask == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False}}
  # SGD weight decay (PyTorch style) only touches kernels: with zero gradient
  # and lr 1, kernel -> kernel * (1 - wd), the rest unchanged.
  tx, _ = optim.create_optimizer({"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.1,
                                  "schedule": "constant"}, 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["conv"]["bias"], 0.0)
  with pytest.raises(ValueError, match="optim.name"):
    optim.create_optimizer({"name": "lamb", "lr": 1.0}, 10)


def test_bfloat16_compute_trains_with_float32_params_and_loss():
  config = _config()
  config.model.dtype = "bfloat16"
  state, history = _run(config, parallel.make_mesh(jax.devices()[:2]), n_steps=2)
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  for m in history:
    assert int(m["nonfinite"]) == 0 and m["loss"].dtype == np.float32 and np.isfinite(float(m["ria"]))
  # Close to the float32 run (bf16 has ~3 significant digits).
  _, reference = _run(_config(), parallel.make_mesh(jax.devices()[:2]), n_steps=1)
  np.testing.assert_allclose(float(history[0]["ce"]), float(reference[0]["ce"]), rtol=3e-2)
