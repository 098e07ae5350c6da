"""Losses: hand-built values, NaN safety, finite differences, and the one-forward FLOP bound."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from ria_jax import boxes, cam, losses, models, objective


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=5)
  shifted = logits - logits.max(-1, keepdims=True)
  expected = -(shifted[np.arange(5), labels] - np.log(np.exp(shifted).sum(-1)))
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected,
                             rtol=1e-5)


def test_ria_loss_hand_built():
  cfg = losses.RiaConfig(lambda_diag=0.1)
  gc = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
  od = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]])
  loss, overlap = losses.ria_per_example(gc, od, cfg)
  np.testing.assert_allclose(overlap, [1.0, 0.0, 0.25], atol=1e-7)
  np.testing.assert_allclose(loss, [0.1 * 0.25, 1.0 + 0.1 * 0.25, 1.0 - 0.25 + 0.1 * 1.0], rtol=1e-6)
  diou, _ = losses.ria_per_example(gc, od, losses.RiaConfig(lambda_diag=0.0, iou="diou"))
  np.testing.assert_allclose(diou[1], 1.0 + 0.5 / 2.0, rtol=1e-6)  # centres 0.25 -> 0.75, hull = image
  giou, _ = losses.ria_per_example(gc, od, losses.RiaConfig(lambda_diag=0.0, iou="giou"))
  np.testing.assert_allclose(giou[1], 1.0 + (1.0 - 0.5) / 1.0, rtol=1e-6)


def test_config_rejects_unknown_values():
  with pytest.raises(ValueError, match="ria.box"):
    losses.RiaConfig(box="hull")
  with pytest.raises(ValueError, match="temperature"):
    losses.RiaConfig(temperature=0.0)
  cfg = losses.RiaConfig.from_config({"tau": 0.3, "alpha": 1.0})  # non-loss keys ignored
  assert cfg.tau == 0.3


def test_invalid_boxes_contribute_nothing_and_never_nan():
  cam = jnp.stack([jnp.zeros((5, 5)), jnp.eye(5), jnp.ones((5, 5)), jnp.eye(5)])
  od = jnp.array([[0.0, 0.0, 0.5, 0.5], [jnp.nan, 0.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.8],
                  [0.2, 0.2, 0.6, 0.6]])
  flags = jnp.array([True, True, True, False])
  cfg = losses.RiaConfig()

  def mean_loss(c):
    t = losses.ria_terms(c, od, flags, cfg)
    return losses.weighted_mean(t["loss"], t["valid"]), t

  (value, terms), grads = jax.value_and_grad(mean_loss, has_aux=True)(cam)
  np.testing.assert_array_equal(terms["valid"], [1, 0, 0, 0])  # NaN, zero-width, flagged off
  np.testing.assert_array_equal(terms["all_zero"], [1, 0, 0, 0])
  assert np.isfinite(value) and np.all(np.isfinite(grads))
  np.testing.assert_allclose(value, terms["loss"][0])
  # No valid box at all: loss 0, gradient 0, no NaN.
  t = losses.ria_terms(cam, od, jnp.zeros(4, bool), cfg)
  assert float(losses.weighted_mean(t["loss"], t["valid"])) == 0.0


def test_weighted_mean_with_global_total():
  v = jnp.array([1.0, 3.0, jnp.inf])
  w = jnp.array([1.0, 1.0, 0.0])
  np.testing.assert_allclose(losses.weighted_mean(v, w), 2.0)
  np.testing.assert_allclose(losses.weighted_mean(v, w, total_weight=jnp.array(4.0)), 1.0)


# ------------------------------------------------------- finite differences


def _tiny_problem():
  model = models.create("resnet18", num_classes=3, width=1 / 16, stem="cifar", dtype=jnp.float64)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(3, 12, 12, 3)))
  variables = model.init(jax.random.key(0), images)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  batch = {"image": images, "label": jnp.array([0, 2, 1]),
           "box": jnp.array([[0.1, 0.2, 0.6, 0.7], [0.4, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5]]),
           "box_valid": jnp.array([True, True, True])}
  return model, variables, batch


def _frozen_weights_loss(model, state, batch, cfg, grads0):
  """The 'stop' objective written out by hand: the channel weights are the
  constants ``mean(grads0)`` measured at the expansion point, so finite
  differences of this function are what the stop-gradient gradient must equal."""

  def loss(params):
    logits, out = model.apply({"params": params, **state}, batch["image"], train=False)
    a = out[cfg.layer]
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, grads0.mean(axis=(1, 2))))
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam01 = cam / jnp.where(peak > 0, peak, 1.0)
    box = boxes.soft_box(cam01, cfg.tau, cfg.temperature, cfg.box)
    ria = 1.0 - boxes.iou(box, batch["box"]) + cfg.lambda_diag * boxes.squared_diagonal(box)
    ce = -jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), batch["label"]]
    return ce.mean() + 0.5 * ria.mean()

  return loss


def _directional_check(grad_fn, loss_fn, params, n_dirs=4, eps=1e-6, rtol=1e-5):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  gflat = jax.flatten_util.ravel_pytree(grad_fn(params))[0]
  rng = np.random.default_rng(1)
  directions = [rng.normal(size=flat.shape) for _ in range(n_dirs)] + [np.asarray(gflat)]
  for d in directions:
    d = d / np.linalg.norm(d)
    fd = (loss_fn(unravel(flat + eps * d)) - loss_fn(unravel(flat - eps * d))) / (2 * eps)
    np.testing.assert_allclose(float(gflat @ d), float(fd), rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("weights_gradient", ["full", "stop"])
def test_total_loss_gradient_matches_finite_differences(weights_gradient):
  with jax.enable_x64(True):
    model, variables, batch = _tiny_problem()
    cfg = losses.RiaConfig(layer="layer3", weights_gradient=weights_gradient, temperature=0.2)
    state = {"batch_stats": variables["batch_stats"]}
    params = variables["params"]

    @jax.jit
    def loss(p):
      return objective.objective(model, p, state, batch, ria_cfg=cfg, alpha=1.0, beta=0.5,
                                 use_ria=True, train=False)[0]

    if weights_gradient == "full":
      reference = loss
    else:
      grads0 = cam.forward_with_cam(model, variables, batch["image"], layer=cfg.layer,
                                    targets=batch["label"]).gradients
      reference = jax.jit(_frozen_weights_loss(model, state, batch, cfg, grads0))
      np.testing.assert_allclose(reference(params), loss(params), rtol=1e-10)
    _directional_check(jax.grad(loss), reference, params)


def test_second_order_path_is_real():
  with jax.enable_x64(True):
    model, variables, batch = _tiny_problem()
    state = {"batch_stats": variables["batch_stats"]}

    def grads(mode):
      cfg = losses.RiaConfig(layer="layer3", weights_gradient=mode, temperature=0.2)
      fn = lambda p: objective.objective(model, p, state, batch, ria_cfg=cfg, alpha=0.0, beta=1.0,
                                         use_ria=True, train=False)[0]
      return jax.flatten_util.ravel_pytree(jax.grad(fn)(variables["params"]))[0]

    full, stop = grads("full"), grads("stop")
    rel = np.linalg.norm(full - stop) / np.linalg.norm(full)
    assert rel > 1e-2, rel
    # The head (fc and layer4) only receives RIA gradient through the channel
    # weights: zero in 'stop' mode, non-zero in 'full' mode.
    cfg = losses.RiaConfig(layer="layer3", weights_gradient="stop", temperature=0.2)
    fn = lambda p: objective.objective(model, p, state, batch, ria_cfg=cfg, alpha=0.0, beta=1.0,
                                       use_ria=True, train=False)[0]
    g = jax.grad(fn)(variables["params"])
    assert float(jnp.abs(g["fc"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["layer3_0"]["conv1"]["kernel"]).max()) > 0.0


# ------------------------------------------------------------ FLOP bound


def _flops(name, layer, use_ria, weights_gradient="full", naive=False):
  model = models.create(name, num_classes=10)
  b = 2
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  batch = {"image": jax.ShapeDtypeStruct((b, 224, 224, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32),
           "box": jax.ShapeDtypeStruct((b, 4), jnp.float32),
           "box_valid": jax.ShapeDtypeStruct((b,), jnp.bool_)}
  cfg = losses.RiaConfig(layer=layer, weights_gradient=weights_gradient)

  def loss(p, s, bt):
    total, (_, _, _) = objective.objective(model, p, s, bt, ria_cfg=cfg, alpha=1.0, beta=0.5,
                                           use_ria=use_ria, train=True,
                                           rngs={"dropout": jax.random.key(0)})
    if naive:  # a second trunk forward, as a CAM computed outside the step would cost
      logits, _ = model.apply({"params": p, **s}, bt["image"], train=False)
      total = total + 0.0 * logits.sum()
    return total

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, state, batch).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return analysis["flops"]


@pytest.mark.slow
@pytest.mark.parametrize("name,layer", [("vgg16", "conv5_3"), ("resnet50", "layer4")])
def test_ria_costs_at_most_5_percent_more_flops_than_ce(name, layer):
  ce = _flops(name, layer, use_ria=False)
  for mode in ("full", "stop"):
    ratio = _flops(name, layer, use_ria=True, weights_gradient=mode) / ce
    assert 1.0 <= ratio <= 1.05, (mode, ratio)
  # The measurement can see a second forward pass (a control, not a target).
  assert _flops(name, layer, use_ria=True, naive=True) / ce > 1.2
