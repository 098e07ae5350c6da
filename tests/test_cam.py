"""Grad-CAM against straightforward references, written here without the tap mechanism.

The references re-implement the part of each network *after* the Grad-CAM
layer with plain ``lax`` ops on the parameter dicts, then take, per example,
``jax.grad`` of that example's single target logit with respect to the
activation, and combine as the papers define it (NumPy).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ria_jax import cam, models

# ---------------------------------------------------------------- references


def _conv(x, kernel, stride, pad, bias=None):
  y = lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad), (pad, pad)],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  return y if bias is None else y + bias


def _bn(x, p, s):
  return (x - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def _basic_block(x, p, s, stride):
  y = jax.nn.relu(_bn(_conv(x, p["conv1"]["kernel"], stride, 1), p["bn1"], s["bn1"]))
  y = _bn(_conv(y, p["conv2"]["kernel"], 1, 1), p["bn2"], s["bn2"])
  if "downsample_conv" in p:
    x = _bn(_conv(x, p["downsample_conv"]["kernel"], stride, 0), p["downsample_bn"], s["downsample_bn"])
  return jax.nn.relu(x + y)


def _bottleneck(x, p, s, stride):
  y = jax.nn.relu(_bn(_conv(x, p["conv1"]["kernel"], 1, 0), p["bn1"], s["bn1"]))
  y = jax.nn.relu(_bn(_conv(y, p["conv2"]["kernel"], stride, 1), p["bn2"], s["bn2"]))
  y = _bn(_conv(y, p["conv3"]["kernel"], 1, 0), p["bn3"], s["bn3"])
  if "downsample_conv" in p:
    x = _bn(_conv(x, p["downsample_conv"]["kernel"], stride, 0), p["downsample_bn"], s["downsample_bn"])
  return jax.nn.relu(x + y)


def _resnet_head(variables, layer, n_blocks4, block):
  p, s = variables["params"], variables["batch_stats"]

  def head(a):
    if layer == "layer3":
      for i in range(n_blocks4):
        a = block(a, p[f"layer4_{i}"], s[f"layer4_{i}"], 2 if i == 0 else 1)
    feat = a.mean(axis=(1, 2))
    return feat @ p["fc"]["kernel"] + p["fc"]["bias"]

  return head


def _vgg_head(variables, layer):
  p = variables["params"]

  def head(a):
    if layer == "conv5_3":
      # 2x2 max-pool; ties (e.g. all-zero windows after ReLU) send the
      # gradient to the first maximum in row-major order, as PyTorch does.
      b, h, w, c = a.shape
      windows = a.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
      windows = windows.reshape(b, h // 2, w // 2, c, 4)
      first = jnp.argmax(windows, axis=-1)[..., None]
      a = jnp.take_along_axis(windows, first, axis=-1)[..., 0]
    x = a.reshape(a.shape[0], -1)  # pool_size == pool5 size: adaptive pool is the identity
    x = jax.nn.relu(x @ p["fc6"]["kernel"] + p["fc6"]["bias"])
    x = jax.nn.relu(x @ p["fc7"]["kernel"] + p["fc7"]["bias"])
    return x @ p["fc8"]["kernel"] + p["fc8"]["bias"]

  return head


def _reference_gradients(head, activations, targets):
  per_example = []
  for i in range(activations.shape[0]):
    score = lambda a, i=i: head(a[None])[0, targets[i]]
    per_example.append(np.asarray(jax.grad(score)(activations[i])))
  return np.stack(per_example)


def _reference_cam(a, g, method):
  a, g = np.asarray(a, np.float64), np.asarray(g, np.float64)
  if method == "gradcam":
    weights = g.mean(axis=(1, 2))
    return np.maximum(np.einsum("bhwk,bk->bhw", a, weights), 0)
  if method == "hirescam":
    return np.maximum((a * g).sum(-1), 0)
  # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential
  # score), written as pytorch-grad-cam's get_cam_weights but without its
  # 1e-6 in the denominator, which dominates when gradients are ~1e-3.
  g2, g3 = g**2, g**3
  sum_a = a.sum(axis=(1, 2))[:, None, None, :]
  denom = 2 * g2 + sum_a * g3
  with np.errstate(divide="ignore", invalid="ignore"):
    aij = np.where(denom != 0, g2 / denom, 0)
  weights = (np.maximum(g, 0) * aij).sum(axis=(1, 2))
  return np.maximum(np.einsum("bhwk,bk->bhw", a, weights), 0)


# ---------------------------------------------------------------- fixtures

CASES = {
    "vgg16": dict(kwargs=dict(width=1 / 16, pool_size=2), size=64),
    "vgg16_bn": dict(kwargs=dict(width=1 / 16, pool_size=2), size=64),
    "resnet18": dict(kwargs=dict(width=1 / 8, stem="cifar"), size=32),
    "resnet50": dict(kwargs=dict(width=1 / 16, stem="cifar"), size=32),
}


def _setup(name, batch=4, seed=0):
  case = CASES[name]
  model = models.create(name, num_classes=6, **case["kwargs"])
  key_x, key_init, key_bn = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.uniform(key_x, (batch, case["size"], case["size"], 3))
  variables = model.init(key_init, x)
  if "batch_stats" in variables:
    # Running statistics = this batch's statistics (recovered from one
    # momentum-0.9 update) times a random factor: well-scaled activations in
    # eval mode, yet not the identity normalisation.
    _, new = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key_bn})
    batch_stats = jax.tree.map(lambda old, upd: (upd - 0.9 * old) / 0.1,
                               variables["batch_stats"], new["batch_stats"])
    variables = {**variables, "batch_stats": jax.tree.map(
        lambda v: v * (1 + 0.2 * jax.random.uniform(key_bn, v.shape)), batch_stats)}
  return model, variables, x


def _head(name, variables, layer):
  if name.startswith("vgg"):
    return _vgg_head(variables, layer)
  block = {"resnet18": _basic_block, "resnet50": _bottleneck}[name]
  return _resnet_head(variables, layer, 2 if name == "resnet18" else 3, block)


@pytest.mark.parametrize("name,layer", [
    ("vgg16", "conv5_3"), ("vgg16", "pool5"), ("vgg16_bn", "conv5_3"),
    ("resnet18", "layer3"), ("resnet18", "layer4"), ("resnet50", "layer3"), ("resnet50", "layer4"),
])
def test_cam_matches_per_example_reference(name, layer):
  model, variables, x = _setup(name)
  targets = jnp.array([0, 5, 2, 2])
  res = jax.jit(lambda v, x, t: cam.forward_with_cam(model, v, x, layer=layer, targets=t))(variables, x, targets)
  plain_logits, plain_out = model.apply(variables, x)
  chex.assert_trees_all_close(res.logits, plain_logits, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(res.activations, plain_out[layer], rtol=1e-5, atol=1e-6)

  head = _head(name, variables, layer)
  chex.assert_trees_all_close(head(plain_out[layer]), plain_logits, rtol=1e-4, atol=1e-5)
  ref_grads = _reference_gradients(head, plain_out[layer], np.asarray(targets))
  scale = np.abs(ref_grads).max()
  np.testing.assert_allclose(res.gradients, ref_grads, rtol=1e-4, atol=1e-5 * scale)
  for method in cam.METHODS:
    got = res.cam if method == "gradcam" else cam.cam_from_gradients(res.activations, res.gradients, method)
    ref_cam = _reference_cam(plain_out[layer], ref_grads, method)
    assert ref_cam.max() > 0  # the comparison is not between two zero maps
    np.testing.assert_allclose(got, ref_cam, rtol=1e-3, atol=1e-5 * ref_cam.max(), err_msg=method)


def test_method_argument_selects_the_variant():
  model, variables, x = _setup("resnet18")
  t = jnp.array([1, 2, 3, 4])
  base = cam.forward_with_cam(model, variables, x, layer="layer4", targets=t)
  for method in ("gradcam++", "hirescam"):
    res = cam.forward_with_cam(model, variables, x, layer="layer4", targets=t, method=method)
    chex.assert_trees_all_close(res.cam, cam.cam_from_gradients(base.activations, base.gradients, method))


def test_argmax_targets_by_default():
  model, variables, x = _setup("resnet18", batch=6)
  res = cam.forward_with_cam(model, variables, x, layer="layer4")
  np.testing.assert_array_equal(res.targets, np.argmax(res.logits, -1))


def test_targets_change_the_map():
  model, variables, x = _setup("resnet18")
  a = cam.forward_with_cam(model, variables, x, layer="layer4", targets=jnp.zeros(4, jnp.int32))
  b = cam.forward_with_cam(model, variables, x, layer="layer4", targets=jnp.ones(4, jnp.int32))
  assert not np.allclose(a.cam, b.cam)


def test_unknown_layer_is_reported():
  model, variables, x = _setup("resnet18")
  with pytest.raises(ValueError, match="'conv5_3'.*available"):
    cam.forward_with_cam(model, variables, x, layer="conv5_3")


def test_bad_method_rejected():
  a = jnp.ones((1, 2, 2, 3))
  with pytest.raises(ValueError, match="Unknown CAM method"):
    cam.cam_from_gradients(a, a, "scorecam")
  with pytest.raises(ValueError, match="weights_gradient"):
    cam.cam_from_gradients(a, a, "gradcam", "half")


def test_vmap_over_groups_equals_separate_calls():
  model, variables, x = _setup("resnet18", batch=4)
  groups = x.reshape(2, 2, *x.shape[1:])
  targets = jnp.array([[1, 2], [3, 4]])
  fn = lambda xg, tg: cam.forward_with_cam(model, variables, xg, layer="layer4", targets=tg).cam
  batched = jax.vmap(fn)(groups, targets)
  for i in range(2):
    chex.assert_trees_all_close(batched[i], fn(groups[i], targets[i]), rtol=1e-5, atol=1e-7)


def test_train_mode_updates_batch_stats_through_cam():
  model, variables, x = _setup("resnet18")
  res = cam.forward_with_cam(model, variables, x, layer="layer4", targets=jnp.zeros(4, jnp.int32),
                             train=True, mutable=["batch_stats"])
  _, expected = model.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_trees_all_close(res.state["batch_stats"], expected["batch_stats"])


def test_normalize_and_all_zero_map():
  maps = jnp.stack([jnp.zeros((3, 3)), jnp.arange(9.0).reshape(3, 3)])
  out = cam.normalize(maps)
  np.testing.assert_array_equal(out[0], 0.0)
  np.testing.assert_allclose(out[1], np.arange(9.0).reshape(3, 3) / 8.0)
  grads = jax.grad(lambda m: cam.normalize(m).sum())(maps)
  assert np.all(np.isfinite(grads))


def test_upsample_matches_torch_bilinear_align_corners_false():
  # Hand-computed: for 2 -> 4, align_corners=False samples at source
  # coordinates (-0.25, 0.25, 0.75, 1.25), clamped at the border.
  src = jnp.array([[[0.0, 1.0], [2.0, 3.0]]])
  got = cam.upsample(src, (4, 4))
  row = np.array([0.0, 0.25, 0.75, 1.0])
  expected = row[None, :] + 2.0 * row[:, None]
  np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_weights_gradient_modes_same_value():
  model, variables, x = _setup("resnet18")
  t = jnp.array([0, 1, 2, 3])
  full = cam.forward_with_cam(model, variables, x, layer="layer3", targets=t, weights_gradient="full")
  stop = cam.forward_with_cam(model, variables, x, layer="layer3", targets=t, weights_gradient="stop")
  chex.assert_trees_all_close(full.cam, stop.cam)


def test_cam_inside_shard_map_equals_single_device():
  """Regression: a replicated zero perturbation made shard_map psum CAM gradients across devices."""
  from jax.sharding import PartitionSpec

  from ria_jax import parallel

  model, variables, x = _setup("resnet18", batch=8)
  t = jnp.arange(8) % 6
  single = cam.forward_with_cam(model, variables, x, layer="layer3", targets=t)
  mesh = parallel.make_mesh(jax.devices()[:8])
  fn = jax.jit(jax.shard_map(
      lambda v, x, t: cam.forward_with_cam(model, v, x, layer="layer3", targets=t).cam, mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec("data"), PartitionSpec("data")), out_specs=PartitionSpec("data")))
  chex.assert_trees_all_close(fn(variables, x, t), single.cam, rtol=1e-5, atol=1e-7)
