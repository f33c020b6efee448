#!/usr/bin/env bash
# The README's "Looking at a trained model" measurements: diagnostics of two runs, every restoration task on the
# whole MNIST test set, the report, and the report opened in headless Chromium (images, console, explorer against
# PyTorch, screenshot).
# Usage: bash experiments/look.sh RUN_NZ20 RUN_NZ200 OUT_DIR
#   RUN_NZ20:  aevb train --preset paper-mnist-20 --threads 1 --data-dir ../shared/data --out runs/paper20
#   RUN_NZ200: aevb train --latent-dim 200 --samples 2000000 --threads 1 --data-dir ../shared/data --out runs/nz200
set -euo pipefail
r20=$1; r200=$2; out=$3
mkdir -p "$out"
export OMP_NUM_THREADS=1
aevb eval "$r20" --diagnostics > "$out/diag-nz20.json"
aevb eval "$r200" --diagnostics > "$out/diag-nz200.json"
aevb restore "$r20" --task denoise --out "$out/denoise"
aevb restore "$r20" --task superres --factor 2 --out "$out/superres2"
aevb restore "$r20" --task superres --factor 4 --out "$out/superres4"
for mask in center half; do aevb restore "$r20" --task inpaint --mask $mask --out "$out/inpaint-$mask"; done
aevb restore "$r20" --task inpaint --mask random --missing 0.7 --out "$out/inpaint-random"
for s in 0.1 0.2 0.5; do aevb restore "$r20" --task denoise --noise $s --limit 1000 --out "$out/denoise-$s-1k"; done
aevb report "$r20" --out "$out/report.html" --include "$out/diag-nz20.json" --include "$out/inpaint-center/metrics.json"
python "$(dirname "$0")/browser_check.py" "$r20" "$out/report.html" "$out/report.png"
