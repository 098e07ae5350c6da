"""Weight import: numerical parity with torchvision (fixtures made by scripts/make_torch_fixtures.py).

The fixtures hold torchvision models' state_dicts (random weights, randomised
BatchNorm statistics), fixed inputs, and the torch logits and Grad-CAM layer
activations. No torch needed here.
"""

from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import base
from ria_jax import models, pretrained, step
from ria_jax.checkpoint import Checkpoints

FIXTURES = Path(__file__).parent / "fixtures"
ARCHS = ("vgg16", "vgg16_bn", "resnet18", "resnet50")


def _fixture(arch):
  with np.load(FIXTURES / f"torchvision_{arch}.npz") as f:
    data = {k: f[k] for k in f.files}
  state = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
  acts = {k[4:]: v for k, v in data.items() if k.startswith("act/")}
  return state, data["input_nchw"].transpose(0, 2, 3, 1), data["logits"], acts, float(data["width"])


def _model(arch, width, num_classes=10):
  return models.create(arch, num_classes=num_classes, width=width, input_norm=None)


def _init(model, side=64):
  return jax.device_get(model.init(jax.random.key(42), np.zeros((1, side, side, 3), np.float32)))


def _rel(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_cam_activations_match_torchvision(arch):
  state, x, logits, acts, width = _fixture(arch)
  model = _model(arch, width)
  variables = pretrained.load_into(_init(model), state, arch)
  with jax.default_matmul_precision("highest"):
    got, out = model.apply(variables, x)
  assert _rel(got, logits) < 1e-4
  for name, ref in acts.items():
    assert _rel(out[name], ref.transpose(0, 2, 3, 1)) < 1e-4, name
  # The comparison is not vacuous: random weights give different logits.
  assert _rel(model.apply(_init(model), x)[0], logits) > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_export_is_the_inverse_of_import(arch):
  state, _, _, _, width = _fixture(arch)
  variables = pretrained.load_into(_init(_model(arch, width)), state, arch)
  exported = pretrained.export_state_dict(variables, arch)
  expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert exported.keys() == expected.keys()
  for k, v in expected.items():
    np.testing.assert_array_equal(exported[k], v, err_msg=k)


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_config_path_with_file_formats(tmp_path, fmt):
  state, x, logits, _, width = _fixture("resnet18")
  path = tmp_path / f"weights.{fmt}"
  if fmt == "npz":
    np.savez(path, **state)
  else:
    save_file({f"module.{k}": np.ascontiguousarray(v) for k, v in state.items()}, str(path))  # DDP prefix
  model = _model("resnet18", width)
  variables = pretrained.initialize({"checkpoint": str(path), "format": "auto", "keep_head": False},
                                    _init(model), "resnet18")
  with jax.default_matmul_precision("highest"):
    assert _rel(model.apply(variables, x)[0], logits) < 1e-4


def test_timm_vgg_layout(tmp_path):
  """timm stores VGG's fc6/fc7 as convolutions (pre_logits.fc1/fc2) and fc8 as head.fc."""
  state, x, logits, _, width = _fixture("vgg16")
  timm = {k: v for k, v in state.items() if not k.startswith("classifier.")}
  w6 = state["classifier.0.weight"]
  channels = w6.shape[1] // 49
  timm["pre_logits.fc1.weight"] = w6.reshape(w6.shape[0], channels, 7, 7)  # torch flattens (C, 7, 7)
  timm["pre_logits.fc1.bias"] = state["classifier.0.bias"]
  timm["pre_logits.fc2.weight"] = state["classifier.3.weight"][:, :, None, None]
  timm["pre_logits.fc2.bias"] = state["classifier.3.bias"]
  timm["head.fc.weight"], timm["head.fc.bias"] = state["classifier.6.weight"], state["classifier.6.bias"]
  save_file(timm, str(tmp_path / "timm.safetensors"))
  model = _model("vgg16", width)
  variables = pretrained.initialize({"checkpoint": str(tmp_path / "timm.safetensors")}, _init(model), "vgg16")
  with jax.default_matmul_precision("highest"):
    assert _rel(model.apply(variables, x)[0], logits) < 1e-4


def test_new_head_for_other_num_classes_and_keep_head():
  state, _x, _, _, width = _fixture("resnet18")
  model = _model("resnet18", width, num_classes=4)
  fresh = _init(model)
  variables = pretrained.load_into(fresh, state, "resnet18")
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], fresh["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], state["bn1.running_var"])
  with pytest.raises(pretrained.WeightImportError, match=r"(?s)mis-shaped.*fc.weight"):
    pretrained.load_into(fresh, state, "resnet18", keep_head=True)


def test_missing_unexpected_and_misshaped_keys_are_named():
  state, _, _, _, width = _fixture("resnet18")
  broken = dict(state)
  del broken["layer2.1.bn2.running_mean"]
  broken["layer3.0.conv1.weight"] = broken["layer3.0.conv1.weight"][:, :-1]
  broken["extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(pretrained.WeightImportError) as info:
    pretrained.load_into(_init(_model("resnet18", width)), broken, "resnet18")
  message = str(info.value)
  assert "1 missing key(s):\n    layer2.1.bn2.running_mean (for batch_stats/layer2_1/bn2/mean" in message
  assert "1 mis-shaped key(s):\n    layer3.0.conv1.weight" in message
  assert "1 unexpected key(s):\n    extra.weight" in message
  # A full-width checkpoint on a narrow model: mis-shaped keys, not a crash.
  with pytest.raises(pretrained.WeightImportError, match="mis-shaped"):
    pretrained.load_into(_init(_model("resnet18", width * 2)), state, "resnet18")


def test_missing_file_and_unknown_format(tmp_path):
  with pytest.raises(FileNotFoundError, match="never downloaded"):
    pretrained.read_state_dict(tmp_path / "vgg16.pth")
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(pretrained.WeightImportError, match="init.format"):
    pretrained.detect_format(tmp_path / "w.h5")


def test_converter_cli_and_orbax_sources(tmp_path):
  state, x, logits, _, width = _fixture("resnet18")
  np.savez(tmp_path / "w.npz", **state)
  # The CLI converts at width 1 (real weights); at test width go through the same functions.
  model = _model("resnet18", width)
  converted = pretrained.load_into(_init(model), state, "resnet18")
  out = pretrained.save_variables(tmp_path / "converted", converted, {"arch": "resnet18"})
  restored = pretrained.initialize({"checkpoint": str(out), "format": "auto"}, _init(model), "resnet18")
  chex.assert_trees_all_equal(restored["params"], converted["params"])
  # A training workdir of ours (its latest TrainState) works through the same field.
  tx = step.step_kwargs_from_config(base.get_config(), model, 10)["tx"]
  ckpts = Checkpoints(tmp_path / "workdir", async_save=False)
  ckpts.save(3, step.create_train_state(converted, tx, 0), {"iterator": {}})
  ckpts.wait()
  ckpts.close()
  again = pretrained.initialize({"checkpoint": str(tmp_path / "workdir")}, _init(model), "resnet18")
  with jax.default_matmul_precision("highest"):
    assert _rel(model.apply(again, x)[0], logits) < 1e-4
  # The command line itself, on full-width random weights written in torchvision's names.
  np.savez(tmp_path / "full.npz", **pretrained.export_state_dict(_init(models.create("resnet18"), 224), "resnet18"))
  pretrained.main(["--src", str(tmp_path / "full.npz"), "--arch", "resnet18", "--out", str(tmp_path / "cli")])
  assert (tmp_path / "cli" / "meta.json").exists() and (tmp_path / "cli" / "variables").exists()


def test_torch_pth_when_torch_is_installed(tmp_path):
  torch = pytest.importorskip("torch")
  state, x, logits, _, width = _fixture("resnet18")
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "w.pth")
  model = _model("resnet18", width)
  variables = pretrained.initialize({"checkpoint": str(tmp_path / "w.pth")}, _init(model), "resnet18")
  with jax.default_matmul_precision("highest"):
    assert _rel(model.apply(variables, x)[0], logits) < 1e-4
