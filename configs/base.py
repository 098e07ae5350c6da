"""Shared base config: every field the system reads, with its default.

Variants import this and override (see vgg16.py, demo.py). Any field can be
overridden on the command line, e.g.

  python launch.py --config=configs/vgg16.py --workdir=/tmp/run \
      --config.loss.beta=0 --config.train.global_batch=128

The config is locked: a misspelled field is an error, not a new field.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The base config (a RIVAL10-sized VGG16 run)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model ------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = "vgg16"          # vgg16 | vgg16_bn | resnet18 | resnet34 | resnet50 | resnet101
  config.model.width = 1.0             # channel multiplier (1.0 = torchvision)
  config.model.dtype = "float32"       # compute dtype: float32 | bfloat16 (params stay float32)
  config.model.input_norm = "imagenet"  # none | imagenet | half (what the weights expect)
  config.model.sync_bn = True          # BatchNorm statistics over the global batch
  config.model.pool_size = 7           # VGG: adaptive pool before fc6 (torchvision: 7)
  config.model.dropout = 0.5           # VGG classifier dropout
  config.model.stem = "imagenet"       # ResNet: imagenet (7x7/2 + pool) | cifar (3x3/1)

  # Initialisation (pretrained weights, see README) -----------------------
  config.init = ml_collections.ConfigDict()
  config.init.checkpoint = ""          # .pth / .safetensors / .npz / an orbax checkpoint dir; "" = random
  config.init.format = "auto"          # auto | torch | safetensors | npz | orbax
  config.init.keep_head = False        # keep the checkpoint's classifier (needs matching num_classes)

  # Data ---------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.name = "rival10"         # synthetic | rival10
  config.data.data_dir = ""            # TFDS data dir; "" = ~/tensorflow_datasets
  config.data.manual_dir = ""          # RIVAL10: folder holding rival10.zip or RIVAL10/
  config.data.image_size = 224         # model input side
  config.data.boxes = "mask"           # object boxes: "mask" (ground truth) or a boxes file path
  config.data.augment = True           # random resized crop + flip in training
  config.data.crop_scale = (0.8, 1.0)  # RIVAL10's official augmentation
  config.data.crop_ratio = (0.75, 1.25)
  config.data.hflip = True
  config.data.workers = 0              # grain worker processes for training batches (0 = in-process)
  config.data.threads = 8              # grain read threads
  config.data.synthetic = ml_collections.ConfigDict(dict(
      rho=0.9, seed=0, train_size=10_000, test_size=2_000, min_object=1 / 3, max_object=1 / 2, noise=0.02))
  config.data.rival10 = ml_collections.ConfigDict(dict(mask_threshold=128, max_bad_fraction=0.01))

  # RIA loss (DESIGN.md section 4; every constant is ours, see README) ----
  config.ria = ml_collections.ConfigDict()
  config.ria.layer = "conv5_3"         # Grad-CAM layer: conv5_3 | pool5 (VGG), layer3 | layer4 (ResNet)
  config.ria.method = "gradcam"        # gradcam | gradcam++ | hirescam
  config.ria.weights_gradient = "stop"  # stop | full (second order through the channel weights)
  config.ria.upsample = 1              # bilinear upsampling of the CAM before boxing
  config.ria.tau = 0.5                 # soft-threshold level on the [0, 1] CAM
  config.ria.temperature = 0.05        # soft-threshold temperature
  config.ria.box = "extremes"          # soft box: extremes | moments
  config.ria.iou = "iou"               # iou | diou | giou
  config.ria.lambda_diag = 0.1         # weight of the squared-diagonal penalty

  # Objective: alpha * CE + beta * RIA -------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.0
  config.loss.beta = 0.5               # 0 = plain cross-entropy baseline (no CAM computed)
  config.loss.beta_delay_steps = 0     # RIA off for this many steps
  config.loss.beta_warmup_steps = 0    # then ramped linearly to beta
  config.loss.label_smoothing = 0.0

  # Optimiser ------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"            # sgd | adamw
  config.optim.lr = 0.01
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 5e-4     # skips biases and BatchNorm parameters
  config.optim.schedule = "cosine"     # cosine | step | constant
  config.optim.warmup_steps = 0
  config.optim.final_lr_ratio = 0.0
  config.optim.step_boundaries = (0.5, 0.75)  # step schedule: fractions of training
  config.optim.step_decay = 0.1
  config.optim.grad_clip = 0.0         # global-norm clipping (0 = off)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  # Training loop ------------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.global_batch = 64       # over all devices and processes
  config.train.num_epochs = 30
  config.train.steps = -1              # > 0 overrides num_epochs
  config.train.log_every = 50          # steps between host syncs for metrics
  config.train.eval_every = 1000       # steps between evaluations (and a final one)
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.preemption_check_every = 10  # multi-process: steps between SIGTERM agreement

  # Evaluation (DESIGN.md section 7) -----------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.global_batch = 128
  config.eval.splits = ("test",)       # evaluated periodically and at the end
  config.eval.best_split = "test"      # accuracy on this split selects the best checkpoint
  config.eval.cam_method = "gradcam"
  config.eval.cam_threshold = 0.5      # hard CAM box: cam01 > threshold
  config.eval.pointing_tolerance = 15  # pixels, as TorchRay
  config.eval.noise_sigmas = (30, 60, 90, 120, 150, 180, 210)  # /255; RIVAL10 noise sensitivity
  config.eval.noise_splits = ("test",)  # splits with object masks to run the noise test on
  config.eval.noise_seed = 0
  config.eval.figures = True
  config.eval.figure_examples = 8
  return config
