"""Models: torchvision parameter counts, shapes, BatchNorm modes, dtypes, pooling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ria_jax import models
from ria_jax.models import common

# torchvision's numbers at 1000 classes (sum(p.numel() for p in m.parameters())).
TORCHVISION_PARAMS = {
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
}


def _abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
  variables = _abstract_variables(models.create(name), 224)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert count == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name,maps", [
    ("vgg16", {"conv5_3": (14, 14, 512), "pool5": (7, 7, 512)}),
    ("vgg16_bn", {"conv5_3": (14, 14, 512), "pool5": (7, 7, 512)}),
    ("resnet18", {"layer3": (14, 14, 256), "layer4": (7, 7, 512)}),
    ("resnet50", {"layer3": (14, 14, 1024), "layer4": (7, 7, 2048)}),
])
def test_output_shapes_at_224(name, maps):
  model = models.create(name, num_classes=10)
  variables = _abstract_variables(model, 224)
  logits, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3))), variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  for layer, shape in maps.items():
    assert out[layer].shape == (2, *shape), layer
  assert set(models.cam_layers(name)) <= set(out)


def test_unknown_model_and_bad_kwargs_are_rejected():
  with pytest.raises(ValueError, match="Unknown model 'vgg17'"):
    models.create("vgg17")
  with pytest.raises(TypeError, match="resnet18"):
    models.create("resnet18", pool_size=3)


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18"])
def test_batch_stats_update_in_train_mode_only(name):
  model = models.create(name, num_classes=3, width=0.125, **({"stem": "cifar"} if "resnet" in name else {}))
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) * 2 + 1
  variables = model.init(jax.random.key(1), x)
  _, new_state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(2)})
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         new_state["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode uses the running averages and cannot mutate them.
  logits_eval, _ = model.apply(variables, x, train=False)
  logits_eval2, _ = model.apply({**variables, "batch_stats": new_state["batch_stats"]}, x, train=False)
  assert not np.allclose(logits_eval, logits_eval2)
  # First BN layer: the running mean moved 10% towards the batch mean (torch momentum 0.1).
  first_bn = "bn1_1" if "vgg" in name else "bn1"
  conv_out = model.apply(variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(2)}, capture_intermediates=True)[1]
  conv_name = "conv1_1" if "vgg" in name else "conv1"
  pre_bn = conv_out["intermediates"][conv_name]["__call__"][0]
  expected = 0.1 * np.asarray(pre_bn).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(new_state["batch_stats"][first_bn]["mean"], expected, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  model = models.create("resnet18", num_classes=5, width=0.125, stem="cifar", dtype="bfloat16")
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  logits, out = model.apply(variables, x)
  assert logits.dtype == jnp.float32
  assert out["layer4"].dtype == jnp.bfloat16


def test_width_multiplier_and_cifar_stem():
  model = models.create("resnet18", num_classes=10, width=0.25, stem="cifar")
  variables = _abstract_variables(model, 64)
  _, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3))), variables)
  assert out["layer4"].shape == (1, 8, 8, 128)
  assert out["layer1"].shape == (1, 64, 64, 16)


def _torch_adaptive_avg_pool_reference(x, size):
  """Literal transcription of ATen's adaptive_avg_pool2d index arithmetic."""
  b, h, w, c = x.shape
  y = np.zeros((b, size, size, c), x.dtype)
  for i in range(size):
    h0, h1 = int(np.floor(i * h / size)), int(np.ceil((i + 1) * h / size))
    for j in range(size):
      w0, w1 = int(np.floor(j * w / size)), int(np.ceil((j + 1) * w / size))
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize("h,size", [(7, 7), (2, 7), (5, 3), (14, 7), (9, 4), (3, 1)])
def test_adaptive_avg_pool_matches_torch_semantics(h, size):
  x = np.random.default_rng(h * 10 + size).normal(size=(2, h, h, 3)).astype(np.float32)
  got = common.adaptive_avg_pool(jnp.asarray(x), size)
  chex.assert_trees_all_close(got, _torch_adaptive_avg_pool_reference(x, size), rtol=1e-5, atol=1e-6)


def test_vgg_dropout_only_in_train_mode():
  model = models.create("vgg16", num_classes=4, width=0.0625, pool_size=1)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  a, _ = model.apply(variables, x)
  b, _ = model.apply(variables, x)
  np.testing.assert_array_equal(a, b)
  c, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  d, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(4)})
  assert not np.allclose(c, d)
