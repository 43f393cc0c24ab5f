"""Unit tests: the TFDS -> Grain input pipeline, the VAE's shapes, and the ELBO pieces."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from derm_jax import config_lib
from derm_jax.data import dermamnist, input_pipeline, memory_source
from derm_jax.data.errors import DataError
from derm_jax.models import vae as vae_lib
from derm_jax.tasks import losses


@pytest.fixture(scope="module")
def train_source(data_dir):
  cfg = config_lib.data()
  cfg.data_dir = data_dir
  return dermamnist.get_data_source(cfg, "train")


def _host_aug():
  aug = config_lib.augmentation()
  aug.on_device = False  # augmented and resized here, on the host
  return aug


def _batches(source, n, seed=0, start=0, **kw):
  ds = input_pipeline.train_dataset(source, global_batch_size=32, image_size=48,
                                    aug=_host_aug(), seed=seed, **kw)
  it = input_pipeline.train_iterator(input_pipeline.from_step(ds, start))
  return it, [next(it) for _ in range(n)]


def test_train_batches_from_tfds_are_augmented_normalised_and_deterministic(train_source):
  _, a = _batches(train_source, 3)
  _, b = _batches(train_source, 3)
  _, c = _batches(train_source, 3, seed=1)
  x = a[0]["image"]
  assert x.shape == (32, 48, 48, 3) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
  assert a[0]["label"].shape == (32,) and set(a[0]["label"]) <= set(range(7))
  for u, v in zip(a, b, strict=True):
    np.testing.assert_array_equal(u["image"], v["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_stream_started_at_a_step_continues_the_uninterrupted_stream(train_source):
  """A resumed run starts the stream at its step (no iterator state): batch s of a stream
  started at 0 is batch 0 of one started at s."""
  _, full = _batches(train_source, 7)
  _, resumed = _batches(train_source, 2, start=5)
  for a, b in zip(full[5:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("on_device", [True, False])
def test_processes_split_each_global_batch_the_same_for_any_process_count(train_source,
                                                                          on_device):
  """With 2 processes each takes half of every global batch, and together they see exactly
  the 1-process batches (host augmentation included): training does not depend on the
  number of processes."""
  aug = config_lib.augmentation() if on_device else _host_aug()

  def stream(index, count, n):
    ds = input_pipeline.train_dataset(train_source, global_batch_size=32, image_size=32,
                                      aug=aug, seed=0, process_index=index,
                                      process_count=count)
    return [ds[i] for i in range(n)]

  one = stream(0, 1, 4)
  halves = [stream(p, 2, 4) for p in range(2)]
  for b in range(4):
    for k in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][b][k], halves[1][b][k]]), one[b][k])
  with pytest.raises(ValueError, match="not divisible"):
    input_pipeline.train_dataset(train_source, global_batch_size=33, image_size=32,
                                 aug=config_lib.augmentation(), seed=0, process_index=0,
                                 process_count=2)


def test_split_held_in_memory_gives_the_same_examples_and_training_stream(train_source):
  """The decoded in-memory split (input.cache_mb) is the TFDS split, example for example,
  and every training stream read from it (shuffled or class-balanced, device or host
  augmentation) is batch for batch the stream read from TFDS."""
  held = memory_source.InMemorySource.load(train_source, max_mb=64, num_threads=3, chunk=100)
  assert isinstance(held, memory_source.InMemorySource) and len(held) == len(train_source)
  for i in range(len(train_source)):
    a, b = train_source[i], held[i]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (a["label"], a["id"]) == (b["label"], b["id"])
  labels = held.labels
  for aug, balanced in [(config_lib.augmentation(), False), (config_lib.augmentation(), True),
                        (_host_aug(), False)]:
    streams = [input_pipeline.train_dataset(src, global_batch_size=32, image_size=32,
                                            aug=aug, seed=3, labels=labels,
                                            balanced=balanced, process_index=0,
                                            process_count=1)
               for src in (train_source, held)]
    for step in (0, 1, 60, 61):  # 60 * 32 > 1700: the second epoch, reshuffled
      a, b = streams[0][step], streams[1][step]
      assert a["image"].dtype == b["image"].dtype and a["label"].dtype == np.int32
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_split_held_in_memory_only_when_it_fits_and_has_one_image_shape(train_source):
  assert memory_source.InMemorySource.load(train_source, max_mb=0) is None
  assert memory_source.InMemorySource.load(train_source, max_mb=1) is None  # needs ~4 MB
  mixed = [{"image": np.zeros((8, 8, 3), np.uint8), "label": 0, "id": 0},
           {"image": np.zeros((9, 9, 3), np.uint8), "label": 1, "id": 1}]
  with pytest.raises(DataError, match=r"(?s)example 1 .* shape \(9, 9, 3\).*cache_mb=0"):
    memory_source.InMemorySource.load(mixed, max_mb=1)


def test_eval_batches_are_padded_and_masked(train_source):
  batches = list(input_pipeline.eval_batches(train_source, global_batch_size=512,
                                             image_size=32))
  assert len(batches) == math.ceil(len(train_source) / 512)
  assert sum(b["mask"].sum() for b in batches) == len(train_source)
  assert all(b["image"].shape == (512, 32, 32, 3) for b in batches)


def _tiny_model_config():
  c = ConfigDict()
  c.backbone = "convnext_nano_cpu"
  c.backbone_kwargs = ConfigDict({"dims": (8, 16, 16, 32), "depths": (1, 1, 1, 1)})
  c.latent_dim = 12
  c.decoder_widths = (16, 8)
  return c


def test_vae_shapes_and_encoder_parameters():
  model = vae_lib.create_vae(_tiny_model_config(), 64)
  rng = jax.random.key(0)
  x = jax.random.uniform(rng, (3, 64, 64, 3))
  variables = jax.jit(lambda r: model.init({"params": r}, x, r, train=False))(rng)
  x_hat, mean, logvar = jax.jit(lambda v: model.apply(v, x, rng, train=False))(variables)
  assert x_hat.shape == x.shape and mean.shape == logvar.shape == (3, 12)
  assert float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1
  assert "backbone_net" in variables["params"]["encoder"]


@pytest.mark.parametrize("size,message", [(48, "multiple of the backbone's total stride 32"),
                                          (16, "positive multiple"),
                                          (96, None)])
def test_vae_rejects_image_sizes_it_cannot_take(size, message):
  cfg = _tiny_model_config()
  if message is None:
    cfg.decoder_widths = (16, 8, 8, 8, 8, 8)  # 96 is not divisible by 2**6
    message = "not divisible by 2**len(decoder_widths)=64"
  with pytest.raises(ValueError, match=re.escape(message)):
    vae_lib.create_vae(cfg, size)


def test_elbo_pieces_match_closed_forms():
  x = jnp.full((2, 4, 4, 3), 0.5)
  x_hat = x + 0.1
  d = 4 * 4 * 3
  nll = losses.reconstruction_nll(x, x_hat, "gaussian", sigma=0.1)
  np.testing.assert_allclose(nll, d * (0.5 + math.log(0.1 * math.sqrt(2 * math.pi))),
                             rtol=1e-5)
  nll1 = losses.reconstruction_nll(x, x_hat, "l1", l1_scale=0.1)
  np.testing.assert_allclose(nll1, d * (1.0 + math.log(0.2)), rtol=1e-5)
  zero = losses.kl_per_dim(jnp.zeros((2, 5)), jnp.zeros((2, 5)))
  np.testing.assert_allclose(zero, 0.0)
  kl = losses.kl_per_dim(jnp.ones((1, 1)), jnp.log(jnp.full((1, 1), 2.0)))
  np.testing.assert_allclose(kl, 0.5 * (1 + 2 - 1 - math.log(2)), rtol=1e-6)
  cfg = ConfigDict(dict(recon="gaussian", sigma=0.1, l1_scale=0.1, beta=1.0,
                        kl_warmup_steps=10, free_bits=0.5))
  mean, logvar = jnp.zeros((2, 5)), jnp.zeros((2, 5))
  loss, per = losses.vae_loss(x, x_hat, mean, logvar, jnp.asarray(5), cfg)
  # Free bits floor each dimension's KL at 0.5 nats; warm-up halves beta at step 5 of 10.
  np.testing.assert_allclose(loss, nll[0] + 0.5 * 5 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(per["elbo"], -nll, rtol=1e-5)  # ELBO has no free bits / beta
  with pytest.raises(ValueError, match="config.loss.recon='bce'"):
    losses.reconstruction_nll(x, x_hat, "bce")


def test_worker_processes_give_the_same_batches_and_resume(data_dir):
  """config.input.num_workers > 0 (Grain worker processes) changes nothing in the stream,
  and its iterator state restores to the same next batch."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  c = config_lib.data()
  c.data_dir = data_dir
  source = dermamnist.get_data_source(c, "train")
  aug = config_lib.augmentation()
  ds = input_pipeline.train_dataset(source, global_batch_size=8, image_size=32, aug=aug,
                                    seed=0, process_index=0, process_count=1)
  threads = input_pipeline.train_iterator(ds)
  workers = input_pipeline.train_iterator(ds, num_workers=2)
  for _ in range(3):
    a, b = next(threads), next(workers)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  expected = next(workers)  # batch 3
  resumed = input_pipeline.train_iterator(input_pipeline.from_step(ds, 3), num_workers=2)
  np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
