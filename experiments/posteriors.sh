#!/usr/bin/env bash
# Test ELBO on MNIST grey levels, Nz = 20, for four posterior families with matching priors, same budget.
# Usage: bash experiments/posteriors.sh DATA_DIR OUT_DIR [SAMPLES]
set -euo pipefail
data=$1; out=$2; samples=${3:-1e6}
for post in normal laplace logistic student_t; do
  aevb train --posterior "$post" --samples "$samples" --data-dir "$data" --out "$out/$post" --no-progress
done
echo "| posterior (and prior) | estimator | test ELBO | train ELBO |"
echo "|---|---|---|---|"
for post in normal laplace logistic student_t; do
  python - "$out/$post" <<'PY'
import json, sys
run = sys.argv[1]
cfg = json.load(open(f"{run}/config.json"))
last = [json.loads(l) for l in open(f"{run}/metrics.jsonl")][-1]
print(f"| {cfg['model']['posterior']} | {cfg['train']['estimator']} | {last['test_elbo']:.2f} | {last['train_elbo']:.2f} |")
PY
done
