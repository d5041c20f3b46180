#!/usr/bin/env bash
# The H100 comparison, as run on the lent GPU machine (see bench/RESULTS.md).
# That machine reaches no registry: the mlx-cuda-13 wheel (about 90 MB) travels
# in two pieces in the git-ignored .whl/ (a/ then b/, one per call, back to
# back so the machine stays warm), with the cp312 mlx wheel, mlx-lm and a
# stripped `cider` built here against mlx-cpu's identical headers.
#
#   bench/gpu.sh stash                 # call 1 (carry .whl/a): keep piece a in /tmp
#   bench/gpu.sh install               # call 2 (carry .whl/b): join, install
#   bench/gpu.sh models NAME...        # make models under /tmp/models (NAME = shape:dtype[:bits])
#   bench/gpu.sh compare ARGS...       # bench/compare.py with the carried cider
set -u
PY=${PY:-python3}
W=.whl
case "${1:-}" in
stash)
    # (and any other file carried in a/, e.g. an older cider to compare against)
    cp $W/a/* /tmp/ && ls -la /tmp/cuda.part.aa
    ;;
install)
    shift
    whl=/tmp/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
    cat /tmp/cuda.part.aa $W/b/cuda.part.ab > $whl || exit 1
    $PY -m pip install -q --no-deps --no-index --no-compile $whl $W/b/mlx-0.32.4-*.whl $W/b/mlx_lm-*.whl || exit 1
    $PY -c 'import mlx.core as mx, mlx_lm; print("mlx", mx.__version__, "mlx-lm", mlx_lm.__version__, "gpu", mx.is_available(mx.gpu), mx.default_device())'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    ;;
models)
    shift
    mkdir -p /tmp/models
    for spec in "$@"; do
        IFS=: read -r shape dtype bits <<<"$spec"
        name=$shape-$dtype${bits:+-q$bits}
        [ -e /tmp/models/$name/config.json ] && continue
        $PY bench/make_model.py /tmp/models/$name --shape $shape --dtype $dtype ${bits:+--bits $bits} || exit 1
    done
    ;;
compare)
    shift
    libdir=$($PY -c 'import mlx; print(list(mlx.__path__)[0])')/lib
    export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    PYTHONUNBUFFERED=1 $PY bench/compare.py --cider $W/b/cider "$@"
    ;;
*)
    echo "usage: bench/gpu.sh stash|install|models|compare" >&2
    exit 2
    ;;
esac
