#!/usr/bin/env bash
# Build the folder that the GPU check carries to a bare GPU machine (default .gpu/, ignored).
# That machine has Python 3.12 with its own torch, numpy, numba, opencv-headless, pyarrow,
# pillow, click, tqdm, psutil, setuptools and pytest (not isal, not ijson), but no network and
# no apt; so here:
#   .gpu/site/           FFCV 1.0.2 built for cp312 against this machine's OpenCV and
#                        libturbojpeg, and the lock's isal and ijson, unpacked (PYTHONPATH),
#                        and a sitecustomize that brings setuptools' distutils, which FFCV
#                        imports and Python 3.12 dropped
#   .gpu/lib/            the shared libraries _libffcv needs (ldd), less the C/C++ runtime
#                        (LD_LIBRARY_PATH)
#   .gpu/fashion-mnist/  the sample generator's objects, trimmed to 12,000 training items
# scripts/gpu_check.sh sets the three variables when the folder is there. DALI (~0.9 GB) does
# not fit the 64 MiB a run may carry: its steps report "not run" there.
# Needs: pyenv's python3.12 (PY312=... to choose another), apt libopencv-dev libturbojpeg0-dev
# pkg-config, the Fashion-MNIST files (apt dataset-fashion-mnist), a package index for
# setuptools and the FFCV sdist. Takes a few minutes (the C++ extension).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-.gpu}
py312=${PY312:-}
if [ -z "$py312" ]; then
  py312=$(ls -d "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.12*/bin/python3.12 \
          2>/dev/null | tail -1 || true)
fi
[ -x "$py312" ] || { echo "no python3.12 (set PY312)" >&2; exit 1; }
fashion=${LUAB_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

echo "== FFCV cp312 wheel with $py312"
"$py312" -m venv "$build/venv"
"$build/venv/bin/pip" install -q setuptools wheel
"$build/venv/bin/pip" download -q --no-deps --no-binary :all: ffcv==1.0.2 -d "$build"
"$build/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$build/wheels" \
  "$build"/ffcv-1.0.2.tar.gz

echo "== cp312 wheels of the lock's run-time packages that machine lacks (isal, ijson)"
for name in isal ijson; do
  "$build/venv/bin/pip" download -q --no-deps --only-binary :all: \
    "$(grep -E "^$name==" requirements.lock)" -d "$build/wheels"
done

rm -rf "$out/site" "$out/lib" "$out/fashion-mnist"
mkdir -p "$out/site" "$out/lib" "$out/fashion-mnist"
for wheel in "$build"/wheels/*.whl; do
  "$build/venv/bin/python" -m zipfile -e "$wheel" "$out/site"
done
cat > "$out/site/sitecustomize.py" <<'PY'
# Python 3.12 has no distutils; FFCV imports distutils.log. setuptools carries a copy.
try:
    import distutils.log  # noqa: F401
except ImportError:
    try:
        import setuptools  # noqa: F401  (installs setuptools._distutils as distutils)
    except ImportError:
        pass
PY

echo "== shared libraries of _libffcv"
so=$(ls "$out"/site/ffcv/_libffcv.cpython-312-*.so)
# the C and C++ runtime and zlib stay the GPU machine's own (newer, and shared with torch)
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libz\.)'
ldd "$so" | awk '/=> \//{print $1, $3}' | while read -r name path; do
  if ! [[ $name =~ $skip ]]; then cp -L "$path" "$out/lib/$name"; fi
done
LD_LIBRARY_PATH="$out/lib" ldd "$so" | grep -q "not found" && { echo "unresolved" >&2; exit 1; }

echo "== Fashion-MNIST, trimmed"
"$py312" - "$fashion" "$out/fashion-mnist" <<'PY'
import gzip, shutil, sys
from pathlib import Path

src, dst, keep = Path(sys.argv[1]), Path(sys.argv[2]), 12_000
for kind, item in (("images-idx3", 28 * 28), ("labels-idx1", 1)):
    raw = gzip.open(src / f"train-{kind}-ubyte.gz").read()
    head = 16 if item > 1 else 8  # IDX header: magic, count[, rows, cols]
    body = raw[head : head + keep * item]
    header = raw[:4] + keep.to_bytes(4, "big") + raw[8:head]
    with gzip.open(dst / f"train-{kind}-ubyte.gz", "wb", compresslevel=9) as fh:
        fh.write(header + body)
    shutil.copy(src / f"t10k-{kind}-ubyte.gz", dst)
PY

du -sh "$out"/* | sed 's/^/  /'
du -sh "$out"
