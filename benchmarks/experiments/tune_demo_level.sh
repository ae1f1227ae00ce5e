#!/bin/bash
# On a GPU machine: which synthetic scene level a short training budget can learn. Four RetinaNet R18 runs in
# parallel on one GPU (3 loader workers each), scored on the last 200 train images, held out (never val).
# Results: benchmarks/results/demo_level_h100.md. Run from the repository root there, with the pycocotools
# wheel in .whl/ and $OUT the folder that comes back:
#   bash benchmarks/experiments/tune_demo_level.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/pycocotools-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 - <<'PY'
from dataclasses import replace
from siefpn_deploy.data.coco import holdout_split
from siefpn_deploy.data.synth import BENCHMARK, EASY, generate
levels = {"bench": BENCHMARK, "easy": EASY, "easy8": replace(EASY, name="easy8", max_objects=8)}
for name, level in levels.items():
    summary = generate(f"/tmp/data/{name}", num_train=1400, num_val=0, level=level, progress=False)
    holdout_split(f"/tmp/data/{name}/annotations/instances_train.json", 200)  # _fit.json / _holdout.json
    print(name, summary["splits"]["train"]["annotations"], flush=True)
PY
lowres='INPUT.MIN_SIZE_TRAIN [160,176,192] INPUT.MAX_SIZE_TRAIN 320 INPUT.MIN_SIZE_TEST 192 INPUT.MAX_SIZE_TEST 320'
run() { name=$1; D=/tmp/data/$2; shift 2; python3 -m siefpn_deploy train --config-file configs/synth_retinanet_R18.yaml DATASETS.TRAIN_IMAGES $D/train DATASETS.TRAIN_ANNOTATIONS $D/annotations/instances_train_fit.json DATASETS.TEST_IMAGES $D/train DATASETS.TEST_ANNOTATIONS $D/annotations/instances_train_holdout.json DATALOADER.NUM_WORKERS 3 LOG_PERIOD 100 SOLVER.CHECKPOINT_PERIOD 100000 OUTPUT_DIR /tmp/runs/$name $lowres "$@" > /tmp/runs/$name.log 2>&1; echo "$name exit $?"; }
mkdir -p /tmp/runs; t0=$(date +%s)
run bench900 bench SOLVER.MAX_ITER 900 &
run easy900 easy SOLVER.MAX_ITER 900 &
run easy8_900 easy8 SOLVER.MAX_ITER 900 &
run easy1300 easy SOLVER.MAX_ITER 1300 &
wait; echo "all done in $(( $(date +%s) - t0 )) s"
for f in /tmp/runs/*.log; do echo "== $f"; grep -E "trained|Error|error|Traceback" $f | head -5; done
python3 - <<'PY'
import json, glob, os
out = {m.split("/")[3]: json.load(open(m)) for m in sorted(glob.glob("/tmp/runs/*/metrics.json"))}
json.dump(out, open(os.environ["OUT"] + "/tune2.json", "w"), indent=1)
for k, v in out.items():
    b = v["bbox"]; print(k, {x: round(b[x], 3) for x in ("AP", "AP50", "AP75", "APs", "APm", "APl") if x in b})
PY
