# Sourced by the device plans: fair-esm from the carried wheel, and this tree importable
# with its pytest plugin registered, without pip building anything (no network there, and
# the system Python is externally managed). Trees named by throughput.py --trees come first
# on PYTHONPATH, so the same entry point loads their esmfuzz.plugin.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/fair_esm-*.whl || { echo "fair-esm wheel did not install" >&2; exit 1; }
info=/tmp/site/esmfuzz_tree-0.dist-info; mkdir -p "$info"
printf 'Metadata-Version: 2.1\nName: esmfuzz-tree\nVersion: 0\n' > "$info/METADATA"
printf '[pytest11]\nesmfuzz = esmfuzz.plugin\n' > "$info/entry_points.txt"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import esm, esmfuzz.plugin" || { echo "esmfuzz or fair-esm not importable" >&2; exit 1; }
