"""The study: VAE pretraining vs ImageNet transfer, identical classifier, same everything else.

  python -m derm_jax.main --config=configs/compare.py --workdir=DIR [--config.seeds="(0,1,2)"]
Pretrains the VAE (or reuses `vae_workdir`), trains the classifier once per arm and seed
(the arms' configs differ only in `init.*`), then writes DIR/report.md.
Presets: default (EfficientNet-Lite0 in both arms, frozen, embedded subset, minutes on a
CPU); `:recipe` (full DermaMNIST, 64 px, both arms fine-tuned, < 1 hour on a 2-core CPU);
`:honest` (`:recipe` with arms imagenet, vae, imagenet_simclr, micle, 6 classifier epochs and
the ISIC 2018 test images of tests/data as the outside set; add --config.data.split=lesion
for the lesion-grouped split); `:ham224` (full-resolution HAM10000 with lesion-grouped splits, 224 px, EfficientNet-Lite0
in both arms, fine-tuned; sized for one GPU; `--config.data.manual_dir=/path/HAM10000`);
`:paper` (the same data with ConvNeXt-Tiny in both arms, frozen; bring converted ImageNet
weights with `--config.classifier.init.imagenet_dir=...`).
Shared settings (data, image size, augmentation, backbone) live at the top level and are
copied into both stages.
"""

import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(__file__))
import classify as classify_config
import dino as dino_config
import simclr as simclr_config
import vae as vae_config

from derm_jax import config_lib


def get_config(arg: str | None = None) -> ConfigDict:
  c = ConfigDict()
  c.task = "compare"
  c.seeds = (0,)
  # Arms (rows of the arm table, derm_jax/arms.py): vae, imagenet (the paper's two, the
  # default), scratch, the contrastive ones: simclr (SimCLR from scratch on the training
  # images), imagenet_simclr (ImageNet weights, then SimCLR), micle (as imagenet_simclr, with
  # two images of one lesion as a positive pair where the data have lesion groups), and the
  # self-distillation ones: dino (DINO from scratch), imagenet_dino (ImageNet, then DINO).
  c.arms = ("vae", "imagenet")
  c.vae_workdir = ""                 # reuse one pretrained VAE (for every seed) instead of training
  c.vae_per_seed = True              # one VAE per seed (vae/seed_<s>): the VAE arm's spread over
                                     # seeds includes the pretraining's; False: one VAE for all
  # Each stage trains its members (the VAEs of all seeds; every arm x seed classifier) as ONE
  # vmapped program; population_size > 0 caps the members per program (1: one at a time);
  # 0: all on an accelerator, one at a time on a CPU (where vmapped convolutions are slow).
  c.population_size = 0
  # Evaluation protocols: every arm's identical classifier (config.classifier, arms/), and
  # with linear_probe also a linear probe (frozen backbone, linear head on its pooled
  # features: probes/<arm>/seed_<s>).
  c.linear_probe = False
  # Label efficiency: each fraction < 1 also trains every arm's classifier (and probe) on a
  # class-stratified, seeded subset of the training labels (fractions/<f>/...), for the same
  # number of steps; pretraining still sees every training image, never val or test.
  c.label_fractions = (1.0,)
  # Closed-form probes (python -m derm_jax.probes; seconds per arm): after the classifiers,
  # every arm's frozen starting features cached once, then a ridge probe and a k-NN at each
  # of these label fractions (3 label subsets each), beside the SGD probe where there is one
  # (report section "Closed-form probes"). () = off.
  c.closed_form_fractions = (0.01, 0.1, 0.25, 1.0)
  # > 0: every stage (each pretraining, every classifier, probe and fraction) stops after
  # this many steps: the whole study in minutes on a CPU (a first look, tests, CI).
  c.smoke_steps = 0
  # Outside evaluation sets, each "name=IMAGES_DIR,GROUND_TRUTH.csv" (ISIC 2018 or 2019
  # layout): after training, every arm and seed is scored on each (report section
  # "In distribution vs shifted").
  c.external = ()
  # The arms compile the same programs: keep compiled steps in WORKDIR/compilation_cache
  # so later arms, seeds and reruns load them instead of compiling again.
  c.compilation_cache = True
  c.data = config_lib.data()
  c.image_size = 64
  c.aug = config_lib.augmentation()
  c.backbone = "efficientnet_lite0"  # the same encoder architecture in both arms
  c.backbone_kwargs = ConfigDict()

  c.vae = vae_config.get_config()
  c.vae.num_epochs = 10
  c.classifier = classify_config.get_config()
  c.classifier.num_epochs = 10
  c.simclr = simclr_config.get_config()  # contrastive pretraining (simclr, imagenet_simclr, micle)
  c.dino = dino_config.get_config()      # self-distillation (dino, imagenet_dino)

  if arg in ("ham224", "paper"):
    # Full-resolution HAM10000 (bring it: --config.data.manual_dir=/path/HAM10000), stored
    # as 256 px centred squares, lesion-grouped stratified splits, trained at 224 px.
    c.data.name = "ham10000"
    c.data.stored_size = 256
    c.image_size = 224
    c.aug.random_resized_crop = True
    c.aug.crop_scale = (0.5, 1.0)
    c.vae.model.latent_dim = 256
    c.vae.model.decoder_widths = (256, 128, 64, 32, 16)  # 7 px -> 224 px
    c.vae.batch_size = 64
    c.vae.num_epochs = 30
    c.vae.loss.kl_warmup_steps = 1000
    c.vae.log_every_steps = 50
    c.classifier.batch_size = 64
    c.classifier.num_epochs = 20
    c.classifier.log_every_steps = 50
    c.classifier.freeze_backbone = False
    c.classifier.optimizer.lr = 1e-3
    c.classifier.optimizer.backbone_lr = 3e-4
    if arg == "paper":  # the paper's encoder in both arms, frozen, as it reports
      c.backbone = "convnext_tiny"
      c.vae = vae_config.get_config("paper")
      c.vae.num_epochs = 30
      c.classifier.batch_size = 32
      c.classifier.num_epochs = 30
      c.classifier.freeze_backbone = True
  elif arg in ("recipe", "honest"):
    # Full DermaMNIST on a 2-core CPU in under an hour: 64 px, both arms fine-tuned.
    c.data.source = "download"   # or: --config.data.source=npz --config.data.npz_path=...
    c.data.size = 28
    c.image_size = 64
    c.aug.random_resized_crop = True
    c.aug.crop_scale = (0.75, 1.0)
    c.vae.num_epochs = 6
    c.vae.log_every_steps = 20
    c.classifier.freeze_backbone = False
    c.classifier.num_epochs = 12
    c.classifier.optimizer.lr = 1e-3
    c.classifier.optimizer.backbone_lr = 3e-4
    c.simclr.num_epochs = 6
    c.simclr.log_every_steps = 20
    c.dino.num_epochs = 6
    c.dino.log_every_steps = 20
    # DINO keeps the paper's settings here (configs/dino.py). At 324 steps they collapse
    # towards a uniform teacher (docs/methods.md: the entropy gap, and what was tried).
    if arg == "honest":
      # The study measured honestly: the arms that matter, scored on the unseen-lesion test
      # images (report section "Seen vs unseen lesions") and on ISIC 2018 *test* images (an
      # outside set, not HAM10000). Run it on both splits: --config.data.split=official|lesion.
      c.arms = ("imagenet", "vae", "imagenet_simclr", "micle")
      c.classifier.num_epochs = 6
      dev = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                         "isic2018_test_dev")
      c.external = (f"isic2018_test={os.path.normpath(dev)}/ISIC2018_Task3_Test_Input,"
                    f"{os.path.normpath(dev)}/ISIC2018_Task3_Test_GroundTruth.csv",)
  elif arg not in (None, ""):
    raise ValueError(f"Unknown configs/compare.py preset {arg!r}; use '', 'recipe', 'honest', "
                     "'ham224' or 'paper'.")
  # The shared settings exist once, at the top level (an override of a copy inside a stage
  # would be silently ignored): derm_jax/study/plan.py puts them into each stage.
  # The contrastive and self-distillation stages keep their own (stronger) augmentation,
  # `simclr.aug` and `dino.aug` (its global views).
  for stage, shared in ((c.vae, ("data", "image_size", "aug")),
                        (c.classifier, ("data", "image_size", "aug")),
                        (c.simclr, ("data", "image_size")),
                        (c.dino, ("data", "image_size"))):
    for field in shared:
      del stage[field]
    del stage.model["backbone"]
    del stage.model["backbone_kwargs"]
  for stage in (c.classifier, c.simclr, c.dino):
    del stage["seed"]  # one per member, from `seeds`
  return c
