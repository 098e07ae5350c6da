"""The one place that talks to orbax: train-state checkpoints with the data iterator's position.

A checkpoint is a composite of ``state`` (the replicated ``TrainState``,
``StandardSave``) and ``data`` (the grain iterator state and bookkeeping,
JSON). Writes are atomic (orbax renames a temporary directory when a save is
complete), so a process killed mid-save leaves the previous checkpoint as the
latest one. Two managers live in a workdir: ``checkpoints/`` keeps the last
N steps, ``best/`` keeps the one with the best validation metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
  """Latest-N and best-by-metric checkpoints of one workdir.

  Args:
    workdir: the experiment directory.
    keep: how many recent checkpoints to keep.
    best_metric: key of the metrics dict passed to :meth:`save_best` that
      decides which checkpoint is best (higher is better).
    async_save: write in a background thread (the train loop goes on).
  """

  def __init__(self, workdir: str | Path, keep: int = 2, best_metric: str = "accuracy",
               async_save: bool = True):
    self.workdir = Path(workdir).absolute()
    self.best_metric = best_metric
    self._latest = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "data"))
    self._best = ocp.CheckpointManager(
        self.workdir / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                                             best_mode="max", enable_async_checkpointing=async_save),
        item_names=("state", "data"))

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in ("latest", "best"):
      raise ValueError(f"Checkpoint kind must be 'latest' or 'best', got {which!r}.")
    return self._latest if which == "latest" else self._best

  def latest_step(self, which: str = "latest") -> int | None:
    return self._manager(which).latest_step() if which == "latest" else self._best.best_step()

  def save(self, step: int, state: Any, data: Mapping[str, Any], force: bool = False) -> bool:
    """Saves ``state`` and the JSON-able ``data`` at ``step`` (skipped if it exists)."""
    if step in self._latest.all_steps():
      return False
    return self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data))), force=force)

  def save_best(self, step: int, state: Any, data: Mapping[str, Any], metrics: Mapping[str, float]) -> bool:
    """Offers ``state`` to the best-checkpoint manager (kept only if it is the best so far)."""
    if step in self._best.all_steps():
      return False
    metrics = {k: float(v) for k, v in metrics.items()}
    return self._best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data))), metrics=metrics)

  def restore(self, template: Any, which: str = "latest", step: int | None = None
              ) -> tuple[Any, dict[str, Any], int] | None:
    """Restores onto ``template``'s structure, shardings and dtypes.

    Args:
      template: a state with the target structure (concrete or abstract).
      which: ``'latest'`` or ``'best'``.
      step: a specific step; default the latest (or best).

    Returns:
      ``(state, data, step)`` or ``None`` when there is no checkpoint.
    """
    manager = self._manager(which)
    if step is None:
      step = manager.latest_step() if which == "latest" else manager.best_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    logging.info("Restored %s checkpoint of step %d from %s", which, step, manager.directory)
    return restored["state"], dict(restored["data"] or {}), step

  def wait(self) -> None:
    """Blocks until background saves are written."""
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()
