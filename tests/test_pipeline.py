"""Input pipeline: exact resume, per-process sharding, exact-once evaluation, boxes files."""

import numpy as np
import pytest

from ria_jax.data import boxes_file, pipeline, sources


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  return {"name": "synthetic", "data_dir": str(tmp_path_factory.mktemp("tfds")), "image_size": 32,
          "boxes": "mask", "augment": True, "synthetic": {"train_size": 120, "test_size": 37, "seed": 2}}


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_exactly_the_uninterrupted_batches(data_cfg, workers):
  src = sources.open_source(data_cfg, "train")
  ds = pipeline.train_dataset(src, data_cfg, global_batch=16, seed=7)
  reference = [ds[i] for i in range(12)]  # indexable: batch i is a pure function of (seed, i)
  it = pipeline.make_iterator(ds, workers=workers)
  first = [next(it) for _ in range(5)]
  state = it.get_state()
  del it  # the "crash"
  resumed = pipeline.make_iterator(ds, workers=workers)
  resumed.set_state(state)
  rest = [next(resumed) for _ in range(7)]
  for got, want in zip(first + rest, reference, strict=True):
    _assert_batches_equal(got, want)
  # Epochs are reshuffled (120 examples = 7.5 batches of 16) and augmentation is random per epoch.
  epoch0 = np.concatenate([b["index"] for b in reference[:7]])
  assert len(set(epoch0.tolist())) == len(epoch0)
  assert not np.array_equal(reference[0]["index"], np.sort(reference[0]["index"]))


def test_processes_get_disjoint_shards_of_train(data_cfg):
  src = sources.open_source(data_cfg, "train")
  seen = []
  for p in range(3):
    ds = pipeline.train_dataset(src, data_cfg, global_batch=12, seed=0, process_index=p, process_count=3)
    assert ds[0]["image"].shape[0] == 4
    seen.append(set(np.concatenate([ds[i]["index"] for i in range(10)]).tolist()))
  assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
  assert set().union(*seen) == set(range(120))


def test_processes_together_see_the_single_process_global_batch(data_cfg):
  src = sources.open_source(data_cfg, "train")
  single = pipeline.train_dataset(src, data_cfg, global_batch=12, seed=3, process_index=0, process_count=1)
  parts = [pipeline.train_dataset(src, data_cfg, global_batch=12, seed=3, process_index=p, process_count=3)
           for p in range(3)]
  for step in (0, 5, 11):  # 11: past the first epoch
    joined = {k: np.concatenate([part[step][k] for part in parts]) for k in single[step]}
    _assert_batches_equal(joined, single[step])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_exactly_once(data_cfg, process_count):
  src = sources.open_source(data_cfg, "mixed_rand")  # 37 examples: a partial last batch
  global_batch = 8
  counts = np.zeros(len(src), int)
  n_batches = set()
  for p in range(process_count):
    ds = pipeline.eval_dataset(src, data_cfg, global_batch=global_batch, process_index=p,
                               process_count=process_count)
    batches = list(pipeline.iterate(ds))
    n_batches.add(len(batches))
    for b in batches:
      assert b["image"].shape[0] == global_batch // process_count
      real = b["weight"] > 0
      np.add.at(counts, b["index"][real], 1)
      # No augmentation in evaluation: images are the stored ones.
      for i in np.flatnonzero(real):
        np.testing.assert_array_equal(b["image"][i], src[int(b["index"][i])]["image"])
  assert len(n_batches) == 1  # every process runs the same number of collective steps
  np.testing.assert_array_equal(counts, 1)


def test_boxes_file_join_counts_missing_ids(data_cfg, tmp_path):
  src = sources.open_source(data_cfg, "mixed_rand")
  ids = src.ids()
  records = [boxes_file.BoxRecord(ids[i], (8, 4, 24, 20), "pixels", 32, 32) for i in range(0, len(ids), 2)]
  records.append(boxes_file.BoxRecord("not-in-dataset", (0, 0, 1, 1)))
  path = tmp_path / "boxes.jsonl"
  boxes_file.write(path, records)
  override = pipeline.BoxOverride.from_file(str(path), src)
  assert override.missing == len(ids) // 2
  np.testing.assert_array_equal(override.valid, [i % 2 == 0 for i in range(len(ids))])
  np.testing.assert_allclose(override.boxes[0], [0.25, 0.125, 0.75, 0.625])
  # Through the eval pipeline (no augmentation), the file's boxes replace the masks' boxes.
  ds = pipeline.eval_dataset(src, data_cfg, global_batch=8, override=override)
  b = ds[0]
  for j, index in enumerate(b["index"]):
    assert b["box_valid"][j] == (index % 2 == 0)
    if index % 2 == 0:
      np.testing.assert_allclose(b["box"][j], [0.25, 0.125, 0.75, 0.625], atol=1e-6)


def test_batch_must_divide_processes(data_cfg):
  src = sources.open_source(data_cfg, "train")
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_dataset(src, data_cfg, global_batch=10, seed=0, process_index=0, process_count=3)
