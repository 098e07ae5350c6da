"""ResNet50 on RIVAL10 with RIA at layer4.

  python launch.py --config=configs/resnet50.py --workdir=runs/resnet50_ria \
      --config.data.manual_dir=/path/to/folder/with/rival10.zip \
      --config.init.checkpoint=/path/to/resnet50-11ad3fa6.pth
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.name = "resnet50"
  config.ria.layer = "layer4"
  config.data.name = "rival10"
  config.train.global_batch = 128
  config.optim.lr = 0.01
  return config
