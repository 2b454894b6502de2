#!/usr/bin/env bash
# The README's main command: set up (idempotent), make the bundled sample in the official
# release formats, build canonical records from it, and show what is in them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-out}
mkdir -p "$OUT"

echo "== 1/4 the bundled sample (ImageNet-AB and COCO-AB formats, simulated annotators)"
[ -f "$OUT/sample/sample.json" ] || luab-data sample --out "$OUT/sample" --quiet
[ -f "$OUT/coco/sample.json" ] || luab-data sample --out "$OUT/coco" --kind coco-ab --size small --quiet

echo "== 2/4 build canonical records (Parquet) from the official-format files"
luab-data build --src "$OUT/sample/imagenet_ab_v1_0.tar.gz" --images "$OUT/sample" \
  --out "$OUT/imagenet-ab.parquet" --overwrite --quiet
luab-data build --src "$OUT/coco/coco_ab_v1_0.json" --images "$OUT/coco" \
  --out "$OUT/coco-ab.parquet" --overwrite --quiet

echo "== 3/4 what the records hold"
luab-data inspect "$OUT/imagenet-ab.parquet" --quiet

echo "== 4/4 the interchange form"
luab-data export --src "$OUT/imagenet-ab.parquet" --out "$OUT/imagenet-ab.jsonl" --quiet
echo "done: outputs in $OUT/"
