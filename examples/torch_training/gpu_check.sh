#!/usr/bin/env bash
# GPU check for the PyTorch training target (issues 6 and 16): about 6 minutes on one H100/H200, 8 at most.
#
# Profiles one run and compares NVML's energy counter with its integrated power (issue 16 asks for
# agreement within 1%); profiles a torchrun job (NCCL, one rank per GPU, at most 2) and prints the
# per-rank view; then runs perfpilot's knob search (no LLM) on a copy of this example, twice:
#   1. objective energy.gpu0 (NVML's energy counter), knobs amp and activation_checkpointing,
#      guard: final loss within +2%;
#   2. objective gpu_memory (NVML peak), knobs offload_optimizer and activation_checkpointing,
#      guard: time per step at most +15%.
# and prints every candidate's verdicts. Reports land in $OUT (or ./gpu-check-out).
#
# Needs: an NVIDIA GPU, a python3 whose torch has CUDA, and perfpilot's dependencies
# (nothing is downloaded). Run from the repository root:  bash examples/torch_training/gpu_check.sh
# Not yet run on a GPU (the session that wrote it had none). GPU_CHECK_CPU_DRY_RUN=1 checks
# the plumbing on a CPU with a tiny model and perfpilot's fake NVML (its figures mean nothing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_CPU_DRY_RUN:-0}
WIDTH=1024 DEPTH=12 BATCH=1024 STEPS_ENERGY=100 STEPS_MEMORY=20
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
    WIDTH=64 DEPTH=2 BATCH=64 STEPS_ENERGY=2 STEPS_MEMORY=2
    echo '{"gpus": [{"name": "fake", "readings": [{"t": 0, "power_w": 100.0, "utilization_pct": 50,
      "memory_used_bytes": 1073741824, "processes": [{"pid": "child", "memory_bytes": 1073741824}]}]}]}' \
        > "$OUT/fake_nvml.json"
    export PERFPILOT_FAKE_NVML="$OUT/fake_nvml.json" TRAIN_THREADS=1
fi

DRY=$DRY "$PY" - <<'EOF'
import importlib, os, sys, torch
assert torch.cuda.is_available() or os.environ["DRY"] == "1", "torch sees no CUDA GPU"
print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: dry run")
missing = [m for m in ("pynvml", "psutil", "pluggy", "click", "rich", "numpy", "scipy", "tomlkit", "yaml")
           if importlib.util.find_spec(m) is None]
sys.exit(f"missing Python packages (carry them as wheels): {missing}" if missing else 0)
EOF
"$PY" -c "import perfpilot" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT"
PERFPILOT=("$PY" -m perfpilot)

WORK=$(mktemp -d)
cp "$ROOT/examples/torch_training/train.py" "$ROOT/examples/torch_training/ddp.py" "$WORK/"
# 12 blocks of width 1024 (100M parameters: 0.4 GB weights, 0.8 GB AdamW moments) and a
# 1024-sample batch (~0.5 GB of saved activations): both kinds of memory matter.
printf '[model]\nwidth = %s\ndepth = %s\n[train]\neffective_batch = %s\n[data]\nsamples = 8192\neval_samples = 1024\n' \
    "$WIDTH" "$DEPTH" "$BATCH" > "$WORK/train.toml"

search() {  # name, objective, steps, knobs (TOML lines), extra optimize args...
    local name=$1 objective=$2 steps=$3 knobs=$4; shift 4
    mkdir -p "$WORK/$name"
    cp "$WORK/train.py" "$WORK/ddp.py" "$WORK/train.toml" "$WORK/$name/"
    printf '[tool.perfpilot]\nrun = "%s train.py --steps %s"\nobjective = "%s"\nruns = 4\nmin_runs = 4\nmax_failures = 10\nstacks = false\n[tool.perfpilot.knobs]\n%s\n' \
        "$PY" "$steps" "$objective" "$knobs" > "$WORK/$name/pyproject.toml"
    (cd "$WORK/$name" && timeout 200 "${PERFPILOT[@]}" optimize --budget 2 --output-dir "$OUT/$name" "$@") \
        || echo "$name: perfpilot optimize exited $?"
}

# 1. NVML's energy counter against the integral of its power samples over one profiled run (within 1%).
(cd "$WORK" && "${PERFPILOT[@]}" profile --no-stacks --interval 50ms -o "$OUT/energy.json" -- \
    "$PY" train.py --steps "$STEPS_ENERGY") > "$OUT/energy.log" 2>&1 || echo "energy profile exited $?"
"$PY" - "$OUT/energy.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
entry = p["summary"].get("energy", {}).get("gpu0") or {}
t, values = p["series"]["t"], p["series"]["values"]
watts = values.get("gpu0.power_w") or []
pairs = [(a, b) for a, b in zip(t, watts) if b is not None]
integral = sum((t2 - t1) * (w1 + w2) / 2 for (t1, w1), (t2, w2) in zip(pairs, pairs[1:]))
joules = entry.get("joules", float("nan"))
print(f"== energy: counter {joules:.1f} J ({entry.get('source')}), integrated power {integral:.1f} J over "
      f"{len(pairs)} samples, ratio {joules / integral if integral else float('nan'):.4f}; per step "
      f"{p['summary'].get('reported.energy_per_step_j', float('nan')):.3f} J (train.py's own NVML reading)")
EOF

# 2. Distributed: torchrun with NCCL (one rank per GPU, at most 2; gloo on the CPU dry run), the per-rank view.
NPROC=$("$PY" -c "import torch; print(min(2, torch.cuda.device_count()) or 2)")
(cd "$WORK" && "${PERFPILOT[@]}" profile -o "$OUT/ddp.json" -- "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node "$NPROC" train.py --steps 20 --checkpoint-every 0) > "$OUT/ddp.log" 2>&1 || echo "ddp profile exited $?"
sed -n '/^ranks/,/^$/p' "$OUT/ddp.log"

# 3. The knob search on the GPU.
search energy energy.gpu0 "$STEPS_ENERGY" \
    'amp = { env = "TRAIN_AMP", values = ["off", "bf16"], default = "off" }
activation_checkpointing = { env = "TRAIN_ACTIVATION_CHECKPOINTING", values = ["0", "1"], default = "0" }' \
    --guard reported.final_loss=+2%

search memory gpu_memory "$STEPS_MEMORY" \
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
