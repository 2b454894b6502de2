#!/usr/bin/env bash
# The README's main command: set up (idempotent), make the bundled sample in the official
# release formats, build records and an FFCV .beton from it, look at them, train baseline vs
# LUAB for a few minutes on the CPU, and measure every stage against its baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-out}
mkdir -p "$OUT"

echo "== 1/6 the bundled sample (ImageNet-AB and COCO-AB formats, simulated annotators)"
[ -f "$OUT/sample/sample.json" ] || luab-data sample --out "$OUT/sample" --quiet
[ -f "$OUT/coco/sample.json" ] || luab-data sample --out "$OUT/coco" --kind coco-ab --size small --quiet

echo "== 2/6 canonical records (Parquet) from the official-format files"
luab-data build --src "$OUT/sample/imagenet_ab_v1_0.tar.gz" --images "$OUT/sample" \
  --out "$OUT/imagenet-ab.parquet" --overwrite --quiet
luab-data build --src "$OUT/coco/coco_ab_v1_0.json" --images "$OUT/coco" \
  --out "$OUT/coco-ab.parquet" --overwrite --quiet
luab-data inspect "$OUT/imagenet-ab.parquet" --quiet

echo "== 3/6 images + attention maps + points in one FFCV .beton, checked against the source"
luab-data build --src "$OUT/sample/imagenet_ab_v1_0.tar.gz" --images "$OUT/sample" \
  --out "$OUT/sample.beton" --recipe sample --overwrite --quiet
luab-data verify "$OUT/sample.beton" --src "$OUT/sample/imagenet_ab_v1_0.tar.gz" --images "$OUT/sample"
luab-data show "$OUT/sample.beton" --out "$OUT/sample-grid.png"

echo "== 4/6 the interchange form"
luab-data export --src "$OUT/imagenet-ab.parquet" --out "$OUT/imagenet-ab.jsonl" --quiet

echo "== 5/6 baseline vs LUAB on the shortcut sample (1 seed, a few minutes on 2 cores)"
python benchmarks/train_sample.py --quick --work "$OUT/train"

echo "== 6/6 every stage against its baseline (luab-data bench --quick)"
luab-data bench --quick --data "$OUT/bench-data" --out "$OUT/bench-quick.json"
echo "done: outputs in $OUT/ (sample-grid.png shows augmented crops with their maps and points)"
