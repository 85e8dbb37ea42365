#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 CPU-only (OpenBLAS) into a virtual environment, for golden fixtures
# and parity/bench runs. Takes ~7 minutes on 2 cores. Usage: tools/build_minkowski.sh [VENV]
#
# Why not `pip install MinkowskiEngine`: its setup.py calls numpy.distutils at metadata time,
# which fails with current setuptools; `--blas=openblas` skips that path. The Python side then
# needs `collections.Sequence` -> `collections.abc.Sequence` (removed in Python 3.10).
set -euo pipefail
VENV=$(realpath -m "${1:-.venv-minkowski}")
URL=https://files.pythonhosted.org/packages/21/5c/c543c4bc5fbe73ac3e38465b3da4f24a61f7a4ac5baec867e582e94aa551/MinkowskiEngine-0.5.4.tar.gz
SHA256=b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94
BLAS_INC=/usr/include/x86_64-linux-gnu/openblas-pthread

if [ ! -f "$BLAS_INC/cblas.h" ]; then
  echo "OpenBLAS headers missing: apt-get install -y libopenblas-dev" >&2; exit 1
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0 numpy ninja wheel pyyaml safetensors scipy pytest hypothesis
if "$VENV/bin/python" -c "import MinkowskiEngine" 2>/dev/null; then
  echo "MinkowskiEngine already installed in $VENV"; exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
curl -sSfL -o "$WORK/me.tar.gz" "$URL"
echo "$SHA256  $WORK/me.tar.gz" | sha256sum -c -
tar xzf "$WORK/me.tar.gz" -C "$WORK"
(cd "$WORK/MinkowskiEngine-0.5.4" && MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py \
    bdist_wheel --cpu_only --blas=openblas --blas_include_dirs="$BLAS_INC" > "$WORK/build.log" 2>&1) \
  || { tail -40 "$WORK/build.log"; exit 1; }
"$VENV/bin/pip" install --quiet --no-deps "$WORK"/MinkowskiEngine-0.5.4/dist/*.whl
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/MinkowskiEngine
for f in MinkowskiCoordinateManager.py MinkowskiTensorField.py MinkowskiCommon.py utils/quantization.py; do
  sed -i 's/^from collections import Sequence$/from collections.abc import Sequence/' "$SITE/$f"
done
sed -i 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
  "$SITE/MinkowskiKernelGenerator.py"
"$VENV/bin/python" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'CPU-only build ready')"
