#!/usr/bin/env bash
# The study's wall time for one seed and for three (one VAE per seed, every stage one
# program), each from an empty workdir and compilation cache: the tiny `:recipe` study
# (`--config.smoke_steps=3`: every stage stops after 3 steps), on the full DermaMNIST npz.
#   RECIPE_NPZ=path/to/dermamnist.npz bash benchmarks/study_seeds.sh
# Environment: OUT (default /tmp/derm_jax_study_seeds), SMOKE (steps per stage, default 3),
# EXTRA (more --config overrides for both runs). Prints each run's `Study wall time` line
# (every stage's share) and the ratio of the two wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
NPZ="${RECIPE_NPZ:?set RECIPE_NPZ to a full dermamnist.npz}"
OUT="${OUT:-/tmp/derm_jax_study_seeds}"
rm -rf "$OUT" && mkdir -p "$OUT"
DATA="--config.data.source=npz --config.data.npz_path=$NPZ --config.data.data_dir=$OUT/tfds"
# The data are prepared once, before either run is timed.
python -c "
import sys; sys.path.insert(0, 'configs')
import compare
from derm_jax.data import registry
c = compare.get_config('recipe').data
c.source, c.npz_path, c.data_dir = 'npz', '$NPZ', '$OUT/tfds'
print(registry.get(c).describe())"
declare -A WALL
for seeds in "(0,)" "(0,1,2)"; do
  name="seeds_$(echo "$seeds" | tr -dc '0-9')"
  t0=$(date +%s.%N)
  python -m derm_jax.main --config=configs/compare.py:recipe --workdir="$OUT/$name" $DATA \
      --config.smoke_steps="${SMOKE:-3}" --config.seeds="$seeds" ${EXTRA:-} \
      > "$OUT/$name.log" 2>&1
  WALL[$name]=$(python -c "import time; print(round(time.time() - $t0, 1))")
  echo "seeds $seeds: ${WALL[$name]} s wall; $(grep -o 'Study wall time.*' "$OUT/$name.log")"
done
python -c "print('three seeds / one seed: %.2fx' % (${WALL[seeds_012]} / ${WALL[seeds_0]}))"
