#!/usr/bin/env bash
# Wheels of what benchmarks/gpu/run.sh needs and the GPU machine lacks, into .whl/ (~40 MB):
# Keras, Optuna, MLflow, pydantic and their own needs, for that machine's Python 3.12 on x86-64,
# minus every package its image already holds (the list in KEEP). Run where PyPI is reachable.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$TMP" \
  keras==3.15.1 optuna==5.1.0 mlflow==3.17.2 pydantic==2.14.4 typer==0.29.2
# Already on the GPU image (its Python packages, as this workplace lists them).
KEEP="absl-py anyio attrs certifi charset-normalizer click cloudpickle contourpy cycler filelock
fonttools fsspec grpcio h11 h5py httpcore httpx idna jinja2 joblib kiwisolver markdown-it-py
markupsafe matplotlib mdurl ml-dtypes numpy packaging pandas pillow protobuf psutil pyarrow
pygments pyparsing python-dateutil pyyaml requests rich scipy setuptools shellingham six
tqdm typer typing-extensions urllib3 werkzeug wheel zipp scikit-learn threadpoolctl aiohappyeyeballs
aiohttp aiosignal annotated-doc frozenlist multidict narwhals propcache yarl"
rm -rf "$REPO/.whl" && mkdir -p "$REPO/.whl"
for f in "$TMP"/*.whl; do
  name=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  case " $(echo $KEEP) " in *" $name "*) ;; *) cp "$f" "$REPO/.whl/" ;; esac
done
rm -rf "$TMP"
du -sh "$REPO/.whl"; ls "$REPO/.whl" | wc -l
