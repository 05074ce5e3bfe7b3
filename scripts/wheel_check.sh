#!/usr/bin/env bash
# What a pip user gets: build the wheel, install it into a fresh virtual environment outside the
# checkout, and from another directory run the commands the README shows by name (recipes, presets,
# a 2-iteration training of a packaged recipe on generated data, the quick demo).
# torch is reused from .venv (its installed files are copied, so nothing large is downloaded);
# every other dependency comes from the package index as `pip install semask-*.whl` resolves it.
# Usage: bash scripts/wheel_check.sh   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/semask-*.whl)
echo "wheel-check: built $(basename "$wheel") ($(unzip -l "$wheel" | grep -c 'semask/configs/.*\.yaml') recipe files inside)"

python3 -m venv "$work/venv"
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv/bin/python - "$site" <<'EOF'
import shutil, sys
from importlib.metadata import distribution
from pathlib import Path

dist, target = distribution("torch"), Path(sys.argv[1])
for file in dist.files or ():
    source = Path(dist.locate_file(file))
    if source.is_file() and not str(file).startswith(".."):  # scripts outside site-packages stay behind
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / file)
print(f"wheel-check: reused torch {dist.version} from .venv")
EOF
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel"
semask="$work/venv/bin/semask"

cd "$work"  # away from the checkout: only the installed wheel can answer
"$work/venv/bin/python" -c "import semask, sys; assert '$repo' not in semask.__file__, semask.__file__; print('wheel-check: semask from', semask.__file__)"
export OMP_NUM_THREADS=2
echo "wheel-check: semask config"; "$semask" config > config.txt; head -4 config.txt  # no pipe into head: pipefail
test "$(grep -c '_ade20k ' config.txt)" -ge 20
echo "wheel-check: semask config semask_swin_t_fpn_ade20k"; "$semask" config semask_swin_t_fpn_ade20k > recipe.yaml
grep -q "name: semask_swin_t_fpn" recipe.yaml && head -3 recipe.yaml
echo "wheel-check: semask list-models"; "$semask" list-models > models.txt; head -4 models.txt
grep -q "^semask_swin_l_mask2former  *222,632,383  *150  *ade20k" models.txt
"$work/venv/bin/python" -c "from semask.data import make_context_dataset; make_context_dataset('data', num_train=4, num_val=2, size=64, seed=0)"
echo "wheel-check: semask train semask_swin_t_fpn_ade20k (2 iterations on generated data)"
"$semask" train semask_swin_t_fpn_ade20k --work-dir run --no-progress \
  data.type=folder data.root=data data.train_split=train data.val_split=val data.crop_size=[64,64] \
  data.scale=[64,64] data.num_workers=0 eval.scale=[64,64] model.backbone_weights=null \
  'model.overrides={embed_dim: 16, depths: [1,1,1,1], num_heads: [1,1,1,1], window_size: 4, decoder_channels: 16}' \
  schedule.iters=2 schedule.warmup_iters=1 train.batch_size=2 train.eval_interval=2 train.ckpt_interval=2 \
  train.log_interval=1 2>&1 | tail -3
test -f run/model/model.safetensors
echo "wheel-check: semask train run/config.yaml --resume (the written config is accepted as it is)"
"$semask" train run/config.yaml --work-dir run --resume schedule.iters=3 --no-progress 2>&1 | tail -1
echo "wheel-check: semask demo --quick"; "$semask" demo --quick --out demo --no-progress | tail -4
test -f demo/REPORT.md
echo "wheel-check: passed"
