"""VGG16 on RIVAL10 with RIA (the paper's headline setting: alpha=1, beta=0.5).

  python launch.py --config=configs/vgg16.py --workdir=runs/vgg16_ria \
      --config.data.manual_dir=/path/to/folder/with/rival10.zip \
      --config.init.checkpoint=/path/to/vgg16-397923af.pth

Baseline (cross-entropy only): add --config.loss.beta=0.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "vgg16"
  config.ria.layer = "conv5_3"
  config.data.name = "rival10"
  config.data.image_size = 224
  config.train.global_batch = 64
  config.train.num_epochs = 30
  config.optim.lr = 0.001
  config.eval.splits = ("test",)
  return config
