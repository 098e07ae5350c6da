"""``--mode=eval``: evaluate a workdir's latest or best checkpoint with the run's own config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from absl import logging

from ria_jax import models, parallel, step
from ria_jax.checkpoint import Checkpoints
from ria_jax.data import pipeline, sources
from ria_jax.eval_loop import Evaluator


def restore_state(ckpts: Checkpoints, config: Any, model: Any, which: str = "latest",
                  mesh: Any = None, at_step: int | None = None) -> step.TrainState:
  """The train state of a checkpoint, replicated on ``mesh`` (default: all devices).

  The checkpoint may come from any topology (other device or process counts).
  """
  size = int(config.data.image_size)
  variables = jax.eval_shape(lambda k: model.init(k, jax.numpy.zeros((1, size, size, 3), "uint8")),
                             jax.random.key(0))
  tx = step.step_kwargs_from_config(config, model, 1)["tx"]
  template = jax.eval_shape(lambda v: step.create_train_state(v, tx, 0), variables)
  replicated = jax.sharding.NamedSharding(mesh or parallel.make_mesh(), jax.sharding.PartitionSpec())
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
  restored = ckpts.restore(template, which=which, step=at_step)
  if restored is None:
    raise FileNotFoundError(f"No {which} checkpoint in {ckpts.workdir}; train first "
                            f"(python launch.py --mode=train --workdir={ckpts.workdir} ...).")
  return restored[0]


def restore_variables(ckpts: Checkpoints, config: Any, model: Any, which: str = "latest",
                      at_step: int | None = None) -> dict[str, Any]:
  """Model variables (``params`` + ``batch_stats``) of a checkpoint (default the latest/best), on the host."""
  state = jax.device_get(restore_state(ckpts, config, model, which, at_step=at_step))
  return {"params": state.params, **state.model_state}


def evaluate_workdir(config: Any, workdir: str | Path, which: str = "latest") -> dict[str, Any]:
  """Evaluates a checkpoint on ``config.eval.splits``; writes ``results_eval_<which>.json``.

  Args:
    config: the run's config (``launch.py`` reads ``workdir/config.json``
      unless ``--config`` is given).
    workdir: the run's directory.
    which: ``'latest'`` or ``'best'``.

  Returns:
    The metrics per split.
  """
  workdir = Path(workdir).absolute()
  mesh = parallel.make_mesh()
  logging.info("Mesh: %s", parallel.describe(mesh))
  info = sources.info(config.data.name)
  model = models.from_config(config.model, info.num_classes, axis_name=parallel.AXIS)
  ckpts = Checkpoints(workdir, async_save=False)
  state = restore_state(ckpts, config, model, which, mesh=mesh)
  eval_sources = {s: sources.open_source(config.data, s) for s in config.eval.splits}
  evaluator = Evaluator(model, mesh, config, info.num_classes)
  results = evaluator.evaluate({"params": state.params, **state.model_state}, eval_sources,
                               overrides=pipeline.box_overrides(config.data, eval_sources),
                               show_progress=jax.process_index() == 0)
  out = {"step": int(jax.device_get(state.step)), "which": which, "eval": results}
  if jax.process_index() == 0:
    (workdir / f"results_eval_{which}.json").write_text(json.dumps(out, indent=2, allow_nan=True))
  ckpts.close()
  return out
