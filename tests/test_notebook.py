"""The notebook runs top to bottom against a checkpoint trained here."""

import os
import sys
from pathlib import Path

import nbformat
import pytest

from tiny_run import ROOT, run_launch

sys.path.insert(0, str(ROOT / "scripts"))
import build_notebook


def test_committed_notebook_is_the_built_one():
  committed = nbformat.read(build_notebook.PATH, as_version=4)
  assert [c.source for c in committed.cells] == [c.source for c in build_notebook.build().cells]


@pytest.mark.slow
def test_notebook_executes_against_a_tiny_checkpoint(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  run_launch(workdir, tmp_path / "tfds")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = build_notebook.execute(nbformat.read(build_notebook.PATH, as_version=4), str(workdir), timeout=600)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "RFS per sigma" in text and "BG-gap" in text and "hirescam" in text
  assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
  assert Path(workdir / "figures" / "notebook_heatmaps.png").exists()
  assert os.environ.get("RIA_JAX_WORKDIR") != str(workdir)  # restored
