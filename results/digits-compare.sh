#!/usr/bin/env bash
# The README's comparison table: every method on digits at four sparsities, three seeds each,
# then the table. Usage (from the repository root, after the README's setup):
#   bash results/digits-compare.sh            # ~15 min on 2 cores, writes results/digits-compare/
# Env: NP (ranks, default 3), SEEDS, SPARSITIES, OUT (folder), VENV (default .venv).
set -euo pipefail
NP=${NP:-3}
SEEDS=${SEEDS:-"0 1 2"}
SPARSITIES=${SPARSITIES:-"0.5 0.8 0.9 0.95"}
OUT=${OUT:-results/digits-compare}
VENV=${VENV:-.venv}
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one result file per (name, seed, sparsity); existing complete ones are kept
    local name=$1; shift
    local file="$OUT/$name.h5"
    [[ -f $file ]] && "$VENV/bin/python" -c "import h5py,sys; sys.exit(h5py.File(sys.argv[1],'r').attrs['status']!='complete')" "$file" 2>/dev/null && return
    MPIEXEC_TIMEOUT=600 "$VENV/bin/mpiexec" -n "$NP" "$VENV/bin/python" -m ssfl_mpi run --preset digits-compare \
        "$@" --out "$file" --overwrite > "$OUT/$name.log" 2>&1 || { echo "FAILED: $name (see $OUT/$name.log)"; return 1; }
    echo "$name: $(tail -n 2 "$OUT/$name.log" | head -n 1)"
}
for seed in $SEEDS; do
    run "fedavg_seed$seed" --method fedavg --seed "$seed"
    for s in $SPARSITIES; do
        tag="s${s}_seed$seed"
        run "ssfl_$tag" --method ssfl --sparsity "$s" --seed "$seed"
        run "ssfl-uniform_$tag" --method ssfl --saliency-weighting uniform --sparsity "$s" --seed "$seed"
        run "ssfl-q5_$tag" --method ssfl --saliency-batches 5 --sparsity "$s" --seed "$seed"
        run "ssfl-q20_$tag" --method ssfl --saliency-batches 20 --sparsity "$s" --seed "$seed"
        run "snip-single_$tag" --method snip-single --sparsity "$s" --seed "$seed"
        run "magnitude_$tag" --method magnitude --sparsity "$s" --seed "$seed"
        for dist in uniform layerwise erk; do
            run "random-${dist}_$tag" --method random --mask-distribution "$dist" --sparsity "$s" --seed "$seed"
        done
        run "random-clientwise_$tag" --method random-clientwise --sparsity "$s" --seed "$seed"
        run "feddst_$tag" --method feddst --sparsity "$s" --seed "$seed"
        run "feddst-erk_$tag" --method feddst --mask-distribution erk --sparsity "$s" --seed "$seed"
        run "prunefl_$tag" --method prunefl --sparsity "$s" --seed "$seed"
    done
done
"$VENV/bin/python" -m ssfl_mpi table "$OUT"/*.h5 --out "$OUT/table.md"
"$VENV/bin/python" -m ssfl_mpi table "$OUT"/*.h5 --metric personal --out "$OUT/table_personal.md"
