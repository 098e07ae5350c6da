"""Demo: a small ResNet18 on the embedded background-bias dataset, minutes on a laptop CPU.

  python launch.py --config=configs/demo.py --workdir=runs/demo

No download: the dataset is generated on first use (about 20 s). Compare
with the cross-entropy baseline: --config.loss.beta=0.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "resnet18"
  config.model.width = 0.25
  config.model.stem = "small"
  config.model.input_norm = "none"
  config.ria.layer = "layer3"
  config.data.name = "synthetic"
  config.data.image_size = 64
  config.data.synthetic.train_size = 10_000
  config.data.synthetic.test_size = 1_000
  config.loss.beta = 0.5
  config.loss.beta_warmup_steps = 200
  config.optim.name = "adamw"
  config.optim.lr = 2e-3
  config.optim.weight_decay = 0.05
  config.optim.warmup_steps = 100
  config.train.global_batch = 64
  config.train.num_epochs = 3
  config.train.log_every = 20
  config.train.eval_every = 500
  config.train.checkpoint_every = 200
  config.eval.global_batch = 250
  config.eval.splits = ("in_distribution", "mixed_same", "mixed_rand", "only_fg", "only_bg")
  config.eval.best_split = "in_distribution"
  config.eval.noise_splits = ("in_distribution",)
  config.eval.pointing_tolerance = 4  # TorchRay's 15 px at 224 px, scaled to 64 px
  return config
