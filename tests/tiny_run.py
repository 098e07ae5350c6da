"""A demo run shrunk to seconds, for tests: its config, and launching it in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

from configs import demo

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data.image_size": 32, "data.synthetic.train_size": 256, "data.synthetic.test_size": 40,
    "model.width": 0.125, "train.global_batch": 32, "train.steps": 12, "train.log_every": 4,
    "train.checkpoint_every": 4, "train.eval_every": 12, "eval.global_batch": 16,
    "eval.splits": ("in_distribution", "mixed_same", "mixed_rand"), "eval.noise_splits": ("in_distribution",),
    "eval.noise_sigmas": (30, 120), "eval.figures": False, "loss.beta_warmup_steps": 0,
}


def tiny_config(data_dir, **overrides):
  config = demo.get_config()
  for key, value in {**TINY, "data.data_dir": str(data_dir), **overrides}.items():
    section, *rest = key.split(".")
    node = config[section]
    for part in rest[:-1]:
      node = node[part]
    node[rest[-1]] = value
  return config


def _flag(key, value):
  if isinstance(value, tuple):
    value = "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return f"--config.{key}={value}"


def launch_cmd(workdir, data_dir, **overrides):
  flags = [_flag(k, v) for k, v in {**TINY, "data.data_dir": str(data_dir), **overrides}.items()]
  return [sys.executable, str(ROOT / "launch.py"), "--config=" + str(ROOT / "configs/demo.py"),
          f"--workdir={workdir}", *flags]


def subprocess_env(devices=2):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)
  return env


def run_launch(workdir, data_dir, devices=2, timeout=600, **overrides):
  proc = subprocess.run(launch_cmd(workdir, data_dir, **overrides), env=subprocess_env(devices), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc
