#!/bin/bash
# On a GPU machine: Faster and Mask R-CNN (R18 presets, the demo's input sizes) trained on the easy level's
# train split (scored on its last 100 images, which it trained on: a smoke check, not a measure), for the CPU
# parity table (benchmarks/parity_cpu.py). A time limit keeps the call inside a device time budget: each run
# checkpoints every 250 iterations and the newest checkpoint comes back, as FP16 parts of 15 MiB (under the
# machine's 16 MiB transfer limit); benchmarks/experiments/join_weights.py rejoins them into an FP32
# model_final.pth. Run from the repository root there, with the pycocotools wheel in .whl/ and $OUT the folder
# that comes back:
#   bash benchmarks/experiments/train_rcnn_easy.sh [SECONDS]
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/pycocotools-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
limit=${1:-230}
python3 -m siefpn_deploy data synth --output /tmp/data/easy --level easy --num-val 0 || exit 1
python3 -c "from siefpn_deploy.data.coco import holdout_split; holdout_split('/tmp/data/easy/annotations/instances_train.json', 100)"
D=/tmp/data/easy
run() { name=$1; python3 -m siefpn_deploy train --config-file configs/synth_${name}_R18.yaml DATASETS.TRAIN_IMAGES $D/train DATASETS.TRAIN_ANNOTATIONS $D/annotations/instances_train.json DATASETS.TEST_IMAGES $D/train DATASETS.TEST_ANNOTATIONS $D/annotations/instances_train_holdout.json DATALOADER.NUM_WORKERS 5 LOG_PERIOD 100 SOLVER.CHECKPOINT_PERIOD 250 SOLVER.MAX_ITER 1000 OUTPUT_DIR /tmp/runs/$name INPUT.MIN_SIZE_TRAIN [160,176,192] INPUT.MAX_SIZE_TRAIN 320 INPUT.MIN_SIZE_TEST 192 INPUT.MAX_SIZE_TEST 320 > /tmp/runs/$name.log 2>&1; echo "$name exit $?"; }
mkdir -p /tmp/runs; t0=$(date +%s)
run faster_rcnn & run mask_rcnn &
while [ $(( $(date +%s) - t0 )) -lt $limit ] && [ -n "$(jobs -r)" ]; do sleep 2; done
pkill -f "siefpn_deploy train" ; wait
for name in faster_rcnn mask_rcnn; do
  grep -E "trained|iter" /tmp/runs/$name.log | tail -2
  ck=/tmp/runs/$name/$(cat /tmp/runs/$name/last_checkpoint); echo "$name: $ck"
  python3 -c "
import torch
s = torch.load('$ck', map_location='cpu', weights_only=True)
torch.save({'model': {k: (t.half() if t.is_floating_point() else t) for k, t in s['model'].items()},
            'classes': s['classes'], 'iteration': s.get('iteration')}, '/tmp/$name.half.pth')" || continue
  split -b 15M -d /tmp/$name.half.pth $OUT/$name.half.part
  cp /tmp/runs/$name.log $OUT/$name.log
done
ls -la $OUT
