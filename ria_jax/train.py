"""``train_and_evaluate(config, workdir)``: the training loop around the jitted data-parallel step.

The loop resumes automatically from the latest checkpoint in ``workdir``
(train state *and* input-pipeline position, so an interrupted run continues
exactly), saves on SIGTERM/SIGINT before exiting (preemption), stops with the
step and the term named when a loss goes NaN/inf, and syncs with the host
only every ``train.log_every`` steps.

Outputs in ``workdir``: ``config.json``, ``checkpoints/`` (last N),
``best/`` (best validation accuracy), ``tensorboard/``, ``metrics.jsonl``,
``results.json`` and ``figures/``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from ria_jax import models, parallel, step
from ria_jax.data import pipeline, sources
from ria_jax.eval_loop import Evaluator
from ria_jax.metric_writer import MetricWriter

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
  """A loss term or the gradient became NaN/inf."""


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag that the loop polls (a second signal is left to Python)."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True
    for sig, handler in self._previous.items():  # a second Ctrl-C kills as usual
      signal.signal(sig, handler)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self, step_index: int, every: int) -> bool:
    """Whether any process was signalled (checked collectively every ``every`` steps when multi-process)."""
    if jax.process_count() == 1:
      return self.requested
    if step_index % max(every, 1):
      return False
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    return bool(np.any(flags))


def _prepare_data(config: Any) -> None:
  """Process 0 builds the dataset files; the others wait for it."""
  if jax.process_index() == 0:
    sources.prepare(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ria_jax:data_prepared")


def total_steps(config: Any, train_size: int) -> int:
  """``train.steps`` if set, else ``num_epochs`` passes over the training split."""
  if int(config.train.steps) > 0:
    return int(config.train.steps)
  return max(1, int(config.train.num_epochs) * (train_size // int(config.train.global_batch)))


def init_variables(config: Any, model: Any) -> dict[str, Any]:
  """Random (or pretrained, per ``config.init``) model variables on the host."""
  size = int(config.data.image_size)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3), jnp.uint8)))(
      jax.random.key(int(config.seed)))
  if config.init.checkpoint:
    from ria_jax import pretrained  # only when asked for

    variables = pretrained.initialize(config.init, variables, config.model.name)
  return jax.device_get(variables)


def _variables(state: step.TrainState) -> dict[str, Any]:
  return {"params": state.params, **state.model_state}


def _flush(pending: list[tuple[int, Any]]) -> list[tuple[int, dict[str, float]]]:
  """Fetches pending step metrics (the loop's only host sync) and checks them."""
  fetched = jax.device_get([m for _, m in pending])
  rows = [(s, {k: float(v) for k, v in m.items()}) for (s, _), m in zip(pending, fetched, strict=True)]
  for s, m in rows:
    if m["nonfinite"]:
      term = step.NONFINITE_TERMS[int(m["nonfinite"])]
      raise NonFiniteLossError(
          f"Non-finite {term} at step {s} (ce={m['ce_term']:.6g}, ria={m['ria_term']:.6g}, "
          f"grad_norm={m['grad_norm']:.6g}, lr={m['lr']:.3g}, beta={m['beta']:.3g}). The update of that "
          f"step was not applied; the last checkpoint precedes it. Lower optim.lr, enable "
          f"optim.grad_clip or check the inputs.")
  return rows


def _mean_metrics(rows: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
  keys = [k for k in rows[0][1] if k != "nonfinite"]
  return {k: float(np.mean([m[k] for _, m in rows])) for k in keys}


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
  """Trains, evaluates periodically and at the end, and writes ``results.json``.

  Args:
    config: an ``ml_collections.ConfigDict`` shaped like ``configs/base.py``.
    workdir: where checkpoints, logs and results go; a run in a workdir that
      has checkpoints resumes from the latest one.

  Returns:
    The content of ``results.json``.
  """
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  mesh = parallel.make_mesh()
  logging.info("Mesh: %s", parallel.describe(mesh))
  if int(config.train.global_batch) % mesh.devices.size:
    raise ValueError(f"train.global_batch={config.train.global_batch} is not divisible by the "
                     f"{mesh.devices.size} devices.")

  # Data.
  _prepare_data(config)
  info = sources.info(config.data.name)
  train_source = sources.open_source(config.data, info.train_split)
  eval_sources = {s: sources.open_source(config.data, s) for s in config.eval.splits}
  overrides = pipeline.box_overrides(config.data, {info.train_split: train_source, **eval_sources})
  n_steps = total_steps(config, len(train_source))
  train_ds = pipeline.train_dataset(train_source, config.data, global_batch=int(config.train.global_batch),
                                    seed=int(config.seed), override=overrides.get(info.train_split))
  iterator = pipeline.make_iterator(train_ds, workers=int(config.data.workers),
                                    threads=int(config.data.threads))

  # Model and state.
  model = models.from_config(config.model, info.num_classes, axis_name=parallel.AXIS)
  step_kwargs = step.step_kwargs_from_config(config, model, n_steps)
  state = step.create_train_state(init_variables(config, model), step_kwargs["tx"], int(config.seed))
  state = parallel.replicate(state, mesh)
  from ria_jax.checkpoint import Checkpoints  # orbax import is slow; keep it here

  ckpts = Checkpoints(workdir, keep=int(config.train.keep_checkpoints))
  best = {"accuracy": -1.0, "step": None}
  restored = ckpts.restore(state)
  if restored is not None:
    state, data_state, start = restored
    iterator.set_state(data_state["iterator"])
    best = data_state.get("best", best)
    logging.info("Resuming from step %d of %d.", start, n_steps)
  else:
    start = 0
  train_fn = step.make_train_step(mesh, **step_kwargs)
  evaluator = Evaluator(model, mesh, config, info.num_classes)
  writer = MetricWriter(workdir, enabled=is_main)

  def data_state() -> dict[str, Any]:
    return {"iterator": iterator.get_state(), "best": best, "format": CHECKPOINT_FORMAT}

  def run_eval(at_step: int) -> dict[str, Any]:
    # The noise test is the costly part; periodic evaluations skip it, the final one runs it.
    results = evaluator.evaluate(_variables(state), eval_sources, overrides=overrides, show_progress=is_main,
                                 noise=at_step >= n_steps)
    for split, metrics in results.items():
      writer.write(at_step, metrics if isinstance(metrics, dict) else {"value": metrics}, f"eval/{split}")
    best_split = config.eval.best_split if config.eval.best_split in results else next(iter(eval_sources))
    accuracy = results[best_split]["accuracy"]
    if accuracy > best["accuracy"]:
      best.update(accuracy=accuracy, step=at_step, split=best_split)
      ckpts.save_best(at_step, state, data_state(), {"accuracy": accuracy})
    logging.info("Step %d eval: %s", at_step, {s: round(r["accuracy"], 4) for s, r in results.items()
                                                if isinstance(r, dict)})
    return results

  results: dict[str, Any] = {}
  last_train: dict[str, float] = {}
  pending: list[tuple[int, Any]] = []
  progress = tqdm(total=n_steps, initial=start, desc="train", disable=not is_main, dynamic_ncols=True)
  t_log, n_log = time.perf_counter(), 0
  stopped_early = False
  with _Preemption() as preemption:
    for i in range(start, n_steps):
      batch = pipeline.to_device(next(iterator), mesh)
      state, metrics = train_fn(state, batch)
      pending.append((i, metrics))
      done = i + 1
      preempted = preemption.agreed(done, int(config.train.preemption_check_every))
      if done % int(config.train.log_every) == 0 or done == n_steps or preempted:
        rows = _flush(pending)
        pending = []
        elapsed = time.perf_counter() - t_log
        last_train = _mean_metrics(rows)
        last_train["images_per_second"] = (done - start - n_log) * int(config.train.global_batch) / elapsed \
            if elapsed > 0 else float("nan")
        t_log, n_log = time.perf_counter(), done - start
        writer.write(done, last_train, "train")
        progress.set_postfix(loss=f"{last_train['loss']:.3f}", acc=f"{last_train['accuracy']:.3f}",
                             img_s=f"{last_train['images_per_second']:.0f}")
        progress.update(len(rows))
      if done % int(config.train.checkpoint_every) == 0 or done == n_steps or preempted:
        ckpts.save(done, state, data_state())
      if done % int(config.train.eval_every) == 0 or done == n_steps:
        results = run_eval(done)
      if preempted:
        logging.warning("Stopped by a signal at step %d; relaunch the same command to resume.", done)
        stopped_early = True
        break
  progress.close()
  if not stopped_early and not results:  # resumed at the end: evaluate the final state again
    results = run_eval(int(jax.device_get(state.step)))
  ckpts.wait()
  summary = {"final_step": int(jax.device_get(state.step)), "total_steps": n_steps,
             "completed": not stopped_early, "train": last_train, "eval": results, "best": best}
  if is_main and not stopped_early:
    (workdir / "results.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
  if is_main and not stopped_early and bool(config.eval.figures):
    from ria_jax import figures  # matplotlib only when figures are wanted

    figures.write_run_figures(workdir, model, _variables(jax.device_get(state)), config, eval_sources, results)
  writer.close()
  ckpts.close()
  return summary
