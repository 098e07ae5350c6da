"""Entry point: train or evaluate RIA models.

  python launch.py --config=configs/demo.py --workdir=runs/demo
  python launch.py --config=configs/vgg16.py --workdir=runs/vgg16 --config.loss.beta=0
  python launch.py --mode=eval --workdir=runs/demo --checkpoint=best

Multi-process (multi-host GPU/TPU, or several processes on one machine):
`jax.distributed.initialize()` is called when a cluster environment is
detected (SLURM, Open MPI, TPU pods, ...) or when --coordinator_address is
given together with --num_processes and --process_id.
"""

import difflib
import json
import os
import runpy
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming if possible) or evaluate.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint --mode=eval uses.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
_LOCAL_DEVICES = flags.DEFINE_string("local_device_ids", None, "Comma-separated local device ids to use.")


def _cluster_detected() -> bool:
  markers = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
             "JAX_COORDINATOR_ADDRESS")
  return any(m in os.environ for m in markers)


def _config_typos(argv: list[str]) -> list[str]:
  """Messages for ``--config.a.b=...`` overrides naming fields the config file does not have."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None:
    return []
  config = runpy.run_path(path.split(":")[0])["get_config"]()
  problems = []
  for arg in argv:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    node, walked = config, []
    for part in arg[len("--config."):].split("=", 1)[0].split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = ".".join(walked) or "the config"
        close = difflib.get_close_matches(part, keys, n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join('config.' + '.'.join([*walked, c]) for c in close)}?" if close else ""
        problems.append(f"{arg.split('=', 1)[0]}: {where} has no field {part!r}.{hint} "
                        f"Its fields: {', '.join(sorted(keys))}.")
        break
      node, walked = node[part], [*walked, part]
  return problems


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config typos explained instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except Exception:
    problems = _config_typos(argv)
    if problems:
      sys.stderr.write("Config error (the config is locked; fields cannot be added):\n  "
                       + "\n  ".join(problems) + "\n")
      sys.exit(2)
    raise


class _QuietLibraries(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # after flags, so --help is fast

  if _COORDINATOR.value is not None or _cluster_detected():
    # CPU processes exchange collectives over gloo (GPUs/TPUs use their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if _COORDINATOR.value is not None:
    local = [int(i) for i in _LOCAL_DEVICES.value.split(",")] if _LOCAL_DEVICES.value else None
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               local_device_ids=local)
  elif _cluster_detected():
    jax.distributed.initialize()
  logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices())

  config = _CONFIG.value
  workdir = Path(_WORKDIR.value)
  if _MODE.value == "train":
    if config is None:
      raise app.UsageError("--config is required to train.")
    from ria_jax import train

    train.train_and_evaluate(config, workdir)
  else:
    if config is None:  # the run's own config
      saved = workdir / "config.json"
      if not saved.exists():
        raise app.UsageError(f"--mode=eval needs --config or {saved}.")
      config = ConfigDict(json.loads(saved.read_text()))
    from ria_jax import eval_main

    eval_main.evaluate_workdir(config, workdir, _CHECKPOINT.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
