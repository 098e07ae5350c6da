"""Boxes files: both formats round-trip, pixel units normalise, malformed lines are named."""

import numpy as np
import pytest

from ria_jax.data import boxes_file


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_and_normalisation(tmp_path, suffix):
  path = tmp_path / f"b{suffix}"
  records = [boxes_file.BoxRecord("a", (10, 20, 110, 70), "pixels", 200, 100),
             boxes_file.BoxRecord("b", (0.1, 0.2, 0.3, 0.4)),
             boxes_file.BoxRecord("c", (0.0, 0.0, 1.0, 1.0), valid=False)]
  boxes_file.write(path, records[:2])
  boxes_file.write(path, records[2:], append=True)
  table = boxes_file.BoxTable.from_file(path)
  assert len(table) == 3
  box, valid = table.lookup("a")
  np.testing.assert_allclose(box, [0.05, 0.2, 0.55, 0.7])
  assert valid
  np.testing.assert_allclose(table.lookup("b")[0], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  assert not table.lookup("c")[1]
  box, valid = table.lookup("zzz")
  assert not valid and table.missing == {"zzz"}


def test_degenerate_box_is_invalid(tmp_path):
  path = tmp_path / "b.jsonl"
  boxes_file.write(path, [boxes_file.BoxRecord("a", (0.5, 0.5, 0.5, 0.9))])
  assert not boxes_file.BoxTable.from_file(path).lookup("a")[1]


@pytest.mark.parametrize("line,message", [
    ('{"id": "a", "box": [1, 2, 3]}', "needs 4 numbers"),
    ('{"id": "a", "box": [1, 2, 3, 4], "units": "px"}', "units must be"),
    ('{"id": "a", "box": [1, 2, 3, 4], "units": "pixels"}', "width"),
    ('{"box": [1, 2, 3, 4]}', "malformed"),
    ("{not json", "not valid JSON"),
])
def test_malformed_lines_are_reported_with_line_number(tmp_path, line, message):
  path = tmp_path / "b.jsonl"
  path.write_text('{"id": "ok", "box": [0, 0, 1, 1]}\n\n' + line + "\n")
  with pytest.raises(ValueError, match=rf"b.jsonl:3: .*{message}"):
    boxes_file.read(path)


def test_missing_file_says_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="ria_jax.lost"):
    boxes_file.read(tmp_path / "none.jsonl")
