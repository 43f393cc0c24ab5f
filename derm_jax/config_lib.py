"""Config building blocks shared by the files in configs/ (data, augmentation, optimiser, input).

Each experiment file in configs/ starts from these defaults and sets what is specific to
it; every field can be overridden on the command line (`--config.aug.flip=False`).
"""

from __future__ import annotations

from ml_collections import ConfigDict


def data() -> ConfigDict:
  c = ConfigDict()
  c.name = "dermamnist"  # a dataset of derm_jax.data.registry.available()
  c.source = "embedded"  # dermamnist: 'embedded' (packaged subset) | 'npz' | 'download'
  c.npz_path = ""        # for source='npz': an official MedMNIST dermamnist*.npz
  c.size = 28            # MedMNIST resolution to download: 28, 64, 128 or 224
  c.data_dir = ""        # where TFDS prepares ArrayRecords; '' = ~/tensorflow_datasets
  # dermamnist: 'official' (MedMNIST's per-image split: a third of the test images have a
  # lesion seen in training) | 'lesion' (all images re-split by lesion, class-stratified,
  # seeded by split_seed, with the official split sizes; no lesion in two splits)
  c.split = "official"
  # Full-resolution datasets that users bring (ham10000, isic2019):
  c.manual_dir = ""      # the folder holding the official download layout
  c.stored_size = 256    # images are stored as centred square crops of this side (JPEG)
  c.split_seed = 0       # seed of the lesion-grouped, class-stratified split (and of split='lesion')
  c.val_fraction = 0.1
  c.test_fraction = 0.2
  # Your own images (name='folder', derm_jax/data/folder.py):
  c.path = ""            # DIR: DIR/labels.csv (image,label[,group,split]) or DIR/<class>/*.jpg
  c.classes = ()         # class names in label order; () = the data's classes, sorted
  # Any dataset: folders of unlabelled images (searched recursively) for the VAE/pretraining
  # stage; near-duplicates of val/test images are dropped (derm_jax/data/unlabeled.py).
  c.unlabeled = ()
  return c


def augmentation() -> ConfigDict:
  """Dermoscopy augmentation (see derm_jax/data/augment.py)."""
  c = ConfigDict()
  c.on_device = True     # augment (and resize) inside the jitted train step; False: on the
                         # host, per image in Grain workers (derm_jax/data/augment.py)
  c.flip = True
  c.rot90 = True
  c.color_jitter = 0.1
  c.random_resized_crop = False
  c.crop_scale = (0.7, 1.0)
  c.crop_ratio = (0.75, 1.333)
  return c


def optimizer(lr: float, weight_decay: float) -> ConfigDict:
  """AdamW + linear warm-up + cosine decay + gradient clipping (derm_jax/train/optim.py)."""
  c = ConfigDict()
  c.lr = lr
  c.weight_decay = weight_decay
  c.b1 = 0.9
  c.b2 = 0.999
  c.warmup_steps = 0       # > 0 overrides warmup_epochs
  c.warmup_epochs = 1.0
  c.grad_clip = 1.0        # global-norm clipping; 0 disables
  c.end_lr_factor = 0.01   # final learning rate = lr * end_lr_factor
  return c


def input_options() -> ConfigDict:
  c = ConfigDict()
  c.num_threads = 2        # Grain reader threads
  c.prefetch = 4           # batches prefetched on the host
  c.num_workers = 0        # Grain worker processes (decoding full-resolution JPEGs); 0 = none
  # Hold the decoded training split in host memory (per process) when it takes at most this
  # many MB; batches are then array gathers. 0, or num_workers > 0, decodes every epoch.
  c.cache_mb = 2048
  # Hold the training split in accelerator memory (per device) when it takes at most this
  # many MB: each step then gathers its batch there, with no host work per step
  # (derm_jax/data/device_data.py). 0 streams batches through Grain.
  c.device_data_mb = 2048
  return c


def apply_smoke_steps(config) -> ConfigDict:
  """A single run's `smoke_steps` > 0 (`--config.smoke_steps=N`, accepted by derm_jax.main
  for every config): the run stops after N steps, as each stage of a study does
  (derm_jax/study/arms.py): total_steps = N and a log line at least every N steps. A study's
  config (task 'compare') is returned as it is: its stages apply the field."""
  smoke = int(config.get("smoke_steps", 0) or 0)
  if smoke <= 0 or config.get("task") == "compare":
    return config
  with config.unlocked():
    config.total_steps = smoke
    config.log_every_steps = min(int(config.get("log_every_steps", smoke) or smoke), smoke)
  return config


# Renamed fields: an older run's config names where its backbone started with a field of
# its pretraining method; today every pretraining run is init.source='pretrained' with
# init.pretrained_workdir.
_LEGACY_INIT = {"vae": "init.vae_workdir", "simclr": "init.simclr_workdir"}


def upgrade_flat(flat: dict) -> dict:
  """A flattened config ('a.b' -> value) with renamed fields under their current names, so
  that a run started before a rename resumes and compares equal to today's config."""
  out = dict(flat)
  source = out.get("init.source")
  old = [out.pop(f, "") for f in _LEGACY_INIT.values()]
  if source in _LEGACY_INIT:
    out["init.source"] = "pretrained"
    out["init.pretrained_workdir"] = flat.get(_LEGACY_INIT[source], "") or ""
  elif any(old) or "init.source" in out:
    out.setdefault("init.pretrained_workdir", "")
  return out
