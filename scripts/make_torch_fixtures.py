"""Writes tests/fixtures/torchvision_*.npz: torchvision models' weights and outputs, for parity tests.

Run once, with torch and torchvision installed (the tests do NOT need torch):

  python scripts/make_torch_fixtures.py            # small fixtures, committed
  python scripts/make_torch_fixtures.py --full     # also: full-size parity numbers (nothing saved)

To keep the fixtures small (< 1 MB each), the models are torchvision's own
classes and building blocks (``VGG`` + ``make_layers``, ``ResNet._make_layer``
with ``BasicBlock``/``Bottleneck``) at reduced width, which is exactly what
our ``width`` multiplier computes. ``--full`` instead builds the real
full-size ``torchvision.models.*`` with random weights, converts them through
``ria_jax.pretrained`` in memory and prints the max relative differences.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures"
NUM_CLASSES = 10

# arch -> (width, input side, Grad-CAM layers)
SMALL = {
    "vgg16": (1 / 32, 64, ("conv5_3", "pool5")),
    "vgg16_bn": (1 / 32, 64, ("conv5_3", "pool5")),
    "resnet18": (1 / 8, 64, ("layer3", "layer4")),
    "resnet50": (1 / 16, 64, ("layer3", "layer4")),
}


def scaled(c, width):
  return max(1, round(c * width))


def small_vgg(batch_norm: bool, width: float) -> nn.Module:
  cfg = [v if v == "M" else scaled(v, width) for v in tv_vgg.cfgs["D"]]
  model = tv_vgg.VGG(tv_vgg.make_layers(cfg, batch_norm=batch_norm), num_classes=NUM_CLASSES, init_weights=True)
  hidden, channels = scaled(4096, width), cfg[-2]
  # Same classifier structure as torchvision's VGG, narrower; same init as VGG._initialize_weights.
  model.classifier = nn.Sequential(nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(hidden, NUM_CLASSES))
  for m in model.classifier:
    if isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.constant_(m.bias, 0)
  return model


def small_resnet(arch: str, width: float) -> nn.Module:
  block, layers = {"resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
                   "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3])}[arch]
  model = tv_resnet.ResNet(block, layers, num_classes=NUM_CLASSES)
  w = scaled(64, width)
  # Rebuild the stages narrower with torchvision's own _make_layer, as ResNet.__init__ does.
  model.inplanes = w
  model.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
  model.bn1 = nn.BatchNorm2d(w)
  model.layer1 = model._make_layer(block, w, layers[0])
  model.layer2 = model._make_layer(block, 2 * w, layers[1], stride=2)
  model.layer3 = model._make_layer(block, 4 * w, layers[2], stride=2)
  model.layer4 = model._make_layer(block, 8 * w, layers[3], stride=2)
  model.fc = nn.Linear(8 * w * block.expansion, NUM_CLASSES)
  for m in model.modules():  # ResNet.__init__'s initialisation
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.constant_(m.weight, 1)
      nn.init.constant_(m.bias, 0)
  return model


def randomize_bn_stats(model: nn.Module, generator: torch.Generator) -> None:
  """Non-trivial running statistics and affine parameters, so BN import is really tested."""
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
      m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
      m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=generator))
      m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def cam_layer_modules(model: nn.Module, arch: str) -> dict[str, nn.Module]:
  if arch.startswith("vgg"):
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    relu_after_last_conv = next(i for i in range(convs[-1], len(model.features))
                                if isinstance(model.features[i], nn.ReLU))
    return {"conv5_3": model.features[relu_after_last_conv], "pool5": model.features[-1]}
  return {"layer3": model.layer3, "layer4": model.layer4}


def run(model: nn.Module, arch: str, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  acts = {}
  hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: acts.__setitem__(name, o.detach().numpy().copy()))
           for name, m in cam_layer_modules(model, arch).items()]
  with torch.no_grad():
    logits = model(x).numpy()
  for h in hooks:
    h.remove()
  return logits, acts


def make_small(arch: str, seed: int = 0) -> Path:
  width, side, _ = SMALL[arch]
  torch.manual_seed(seed)
  model = small_vgg(arch.endswith("_bn"), width) if arch.startswith("vgg") else small_resnet(arch, width)
  randomize_bn_stats(model, torch.Generator().manual_seed(seed + 1))
  model.eval()
  x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(seed + 2))
  logits, acts = run(model, arch, x)
  arrays = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
  arrays.update({"input_nchw": x.numpy(), "logits": logits, "width": np.float64(width)})
  arrays.update({f"act/{k}": v for k, v in acts.items()})
  OUT.mkdir(parents=True, exist_ok=True)
  path = OUT / f"torchvision_{arch}.npz"
  np.savez_compressed(path, **arrays)
  print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}")
  return path


def full_size_parity() -> None:
  """Real torchvision architectures at full size, random weights, 224 px: max relative error."""
  sys.path.insert(0, str(ROOT))
  import jax

  from ria_jax import models, pretrained

  for arch in SMALL:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    randomize_bn_stats(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    logits, acts = run(model, arch, x)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = models.create(arch, num_classes=1000)
    init = jax.jit(lambda k, ours=ours: ours.init(k, np.zeros((1, 224, 224, 3), np.float32)))(jax.random.key(0))
    variables = pretrained.load_into(jax.device_get(init), state, arch, keep_head=True)
    with jax.default_matmul_precision("highest"):
      got, out = ours.apply(variables, np.transpose(x.numpy(), (0, 2, 3, 1)))
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
    parts = [f"logits {rel(np.asarray(got), logits):.1e}"]
    parts += [f"{k} {rel(np.asarray(out[k]), v.transpose(0, 2, 3, 1)):.1e}" for k, v in acts.items()]
    print(f"{arch} (full size, 224 px): max |diff| / max |ref|: " + ", ".join(parts))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--full", action="store_true", help="also check full-size parity (slow, nothing saved)")
  args = parser.parse_args()
  for arch in SMALL:
    make_small(arch)
  if args.full:
    full_size_parity()


if __name__ == "__main__":
  main()
