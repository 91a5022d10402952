#!/usr/bin/env bash
# GPU check for the PyTorch training target (issue 6), about 5 minutes on one H100/H200.
#
# Runs perfpilot's knob search (no LLM) on a copy of this example, twice:
#   1. objective energy.gpu0 (NVML's energy counter), knobs amp and activation_checkpointing,
#      guard: final loss within +2%;
#   2. objective gpu_memory (NVML peak), knobs offload_optimizer and activation_checkpointing,
#      guard: time per step at most +15%.
# and prints every candidate's verdicts. Reports land in $OUT (or ./gpu-check-out).
#
# Needs: an NVIDIA GPU, a python3 whose torch has CUDA, and perfpilot's dependencies
# (nothing is downloaded). Run from the repository root:  bash examples/torch_training/gpu_check.sh
# Never run here yet: the session that wrote it had no GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF'
import importlib, sys, torch
assert torch.cuda.is_available(), "torch sees no CUDA GPU"
print("torch", torch.__version__, torch.cuda.get_device_name(0))
missing = [m for m in ("pynvml", "psutil", "pluggy", "click", "rich", "numpy", "scipy", "tomlkit", "yaml")
           if importlib.util.find_spec(m) is None]
sys.exit(f"missing Python packages (carry them as wheels): {missing}" if missing else 0)
EOF
"$PY" -c "import perfpilot" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT"
PERFPILOT=("$PY" -m perfpilot)

WORK=$(mktemp -d)
cp "$ROOT/examples/torch_training/train.py" "$WORK/"
# 12 blocks of width 1024 (100M parameters: 0.4 GB weights, 0.8 GB AdamW moments) and a
# 1024-sample batch (~0.5 GB of saved activations): both kinds of memory matter.
cat > "$WORK/train.toml" <<'EOF'
[model]
width = 1024
depth = 12
[train]
effective_batch = 1024
[data]
samples = 8192
eval_samples = 1024
EOF

search() {  # name, objective, steps, knobs (TOML lines), extra optimize args...
    local name=$1 objective=$2 steps=$3 knobs=$4; shift 4
    mkdir -p "$WORK/$name"
    cp "$WORK/train.py" "$WORK/train.toml" "$WORK/$name/"
    printf '[tool.perfpilot]\nrun = "%s train.py --steps %s"\nobjective = "%s"\nruns = 4\nmin_runs = 4\nmax_failures = 10\nstacks = false\n[tool.perfpilot.knobs]\n%s\n' \
        "$PY" "$steps" "$objective" "$knobs" > "$WORK/$name/pyproject.toml"
    (cd "$WORK/$name" && timeout 170 "${PERFPILOT[@]}" optimize --budget 2 --output-dir "$OUT/$name" "$@") \
        || echo "$name: perfpilot optimize exited $?"
}

search energy energy.gpu0 200 \
    'amp = { env = "TRAIN_AMP", values = ["off", "bf16"], default = "off" }
activation_checkpointing = { env = "TRAIN_ACTIVATION_CHECKPOINTING", values = ["0", "1"], default = "0" }' \
    --guard reported.final_loss=+2%

search memory gpu_memory 20 \
    'offload_optimizer = { env = "TRAIN_OFFLOAD_OPTIMIZER", values = ["0", "1"], default = "0" }
activation_checkpointing = { env = "TRAIN_ACTIVATION_CHECKPOINTING", values = ["0", "1"], default = "0" }' \
    --guard reported.step_time_s=+15%

"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
for report in sorted(pathlib.Path(sys.argv[1]).glob("*/optimize-report.json")):
    data = json.loads(report.read_text())
    print(f"== {report.parent.name}: objective {data.get('objective')}")
    for p in data["proposals"]:
        print(f"  {p['title']}: {p['status']} ({p['reason']})")
        for metric, v in p["verdicts"].items():
            print(f"    {metric}: {v['verdict']} ratio {v['ratio']:.3f} CI {v['ci_low']:.3f}-{v['ci_high']:.3f} "
                  f"p={v['p_value']:.2g} runs {v['runs_a']}+{v['runs_b']} source {v.get('source')}")
EOF
