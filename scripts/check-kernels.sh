#!/usr/bin/env bash
# Compiles every kernels/*.cu with the real NVRTC 13.0, exactly as the CUDA
# backend does at run time (kernels/common.cuh prepended, no headers, no fast
# math), for a virtual architecture (compute_80 -> PTX) and a real one
# (sm_90 -> cubin), with the layout checks of each file's parameter structs
# against their Rust mirrors appended (kernels/layout_checks.cuh, as the
# module cache does). Prints registers, shared memory and spills per kernel from
# ptxas' verbose report (cubin targets) and the PTX-level .reg/.shared
# declarations (PTX targets, which have no register allocation yet).
# Fails on any compile error. No GPU and no driver are needed.
#
# NVRTC comes from the pinned PyPI wheels, installed into a cache folder on
# first use: $FROSTGRAD_NVRTC_CACHE (default ~/.cache/frostgrad/nvrtc-13.0).
# Set FROSTGRAD_NVRTC_LIB to a folder holding libnvrtc.so.13 to skip pip.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=${ARCHS:-"compute_80 sm_90"}
CACHE=${FROSTGRAD_NVRTC_CACHE:-$HOME/.cache/frostgrad/nvrtc-13.0}
LIB=${FROSTGRAD_NVRTC_LIB:-}
if [[ -z "$LIB" ]]; then
  LIB=$(find "$CACHE" -name 'libnvrtc.so.13' -printf '%h\n' 2>/dev/null | head -n1 || true)
  if [[ -z "$LIB" ]]; then
    echo "check-kernels: installing NVRTC 13.0 wheels into $CACHE" >&2
    mkdir -p "$CACHE"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE" \
      nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
    LIB=$(find "$CACHE" -name 'libnvrtc.so.13' -printf '%h\n' | head -n1)
  fi
fi
if [[ -z "$LIB" || ! -e "$LIB/libnvrtc.so.13" ]]; then
  echo "check-kernels: libnvrtc.so.13 not found" >&2
  exit 2
fi

LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec python3 - "$LIB" $ARCHS <<'PY'
import ctypes, glob, os, re, sys

lib_dir, archs = sys.argv[1], sys.argv[2:]
nvrtc = ctypes.CDLL(os.path.join(lib_dir, "libnvrtc.so.13"))
nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
major, minor = ctypes.c_int(), ctypes.c_int()
nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
print(f"NVRTC {major.value}.{minor.value} from {lib_dir}")
if (major.value, minor.value) != (13, 0):
    print("check-kernels: expected NVRTC 13.0", file=sys.stderr)
    sys.exit(2)

def check(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {nvrtc.nvrtcGetErrorString(status).decode()}")

def compile_program(name, source, arch):
    """Returns (ok, log, ptx text). Same options as src/backend/cuda/module_cache.rs."""
    prog = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None), "create")
    opts = [f"--gpu-architecture={arch}"]
    if arch.startswith("sm_"):
        opts.append("--ptxas-options=-v")
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    ptx = ""
    if status == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        pbuf = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetPTX(prog, pbuf), "get ptx")
        ptx = pbuf.value.decode()
        if arch.startswith("sm_"):
            nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            if size.value == 0:
                status = -1
                log += "\nno cubin produced"
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return status == 0, log, ptx

def ptx_summary(ptx):
    """Per .entry: the sum of .reg declarations and of .shared bytes."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\n\}", ptx, re.S):
        body = m.group(2)
        regs = sum(int(n) for n in re.findall(r"\.reg\s+\.\w+\s+%\w+<(\d+)>;", body))
        shared = 0
        for align_n, elem, count in re.findall(r"\.shared\s+\.align\s+(\d+)\s+\.(\w+)\s+\w+\[(\d+)\]", body):
            shared += int(count) * {"b8": 1, "b16": 2, "b32": 4, "b64": 8, "f32": 4, "f64": 8}.get(elem, 1)
        out[m.group(1)] = (regs, shared)
    return out

common = open("kernels/common.cuh").read()
# Generated from the Rust structs (src/backend/cuda/params.rs); each file's
# section is enabled by FG_KERNEL_FILE_<stem>.
layout_checks = open("kernels/layout_checks.cuh").read()
failures = 0
sources = sorted(glob.glob("kernels/*.cu"))
if not sources:
    print("check-kernels: no kernels/*.cu found", file=sys.stderr)
    sys.exit(2)
for arch in archs:
    print(f"\n== {arch}")
    for path in sources:
        name = os.path.basename(path)
        stem = name[: -len(".cu")]
        program = f"{common}\n{open(path).read()}\n#define FG_KERNEL_FILE_{stem}\n{layout_checks}"
        ok, log, ptx = compile_program(name, program, arch)
        if not ok:
            failures += 1
            print(f"FAIL {name}\n{log}")
            continue
        if arch.startswith("sm_"):
            # ptxas -v: "Compiling entry function 'k' for 'sm_90'" then
            # "Function properties ... N bytes stack frame, N bytes spill stores, N bytes spill loads"
            # then "Used N registers, ... N bytes smem ...".
            entries = re.split(r"ptxas info\s*: Compiling entry function '", log)[1:]
            for e in entries:
                kname = e.split("'", 1)[0]
                regs = re.search(r"Used (\d+) registers", e)
                smem = re.search(r"(\d+) bytes smem", e)
                stores = re.search(r"(\d+) bytes spill stores", e)
                loads = re.search(r"(\d+) bytes spill loads", e)
                print(f"  {name:18} {kname:32} regs {regs.group(1) if regs else '?':>4}  "
                      f"smem {smem.group(1) if smem else '0':>6} B  "
                      f"spill st/ld {stores.group(1) if stores else '0'}/{loads.group(1) if loads else '0'} B")
            if not entries:
                print(f"  {name}: compiled (ptxas printed no per-kernel report)\n{log}")
        else:
            for kname, (regs, shared) in ptx_summary(ptx).items():
                print(f"  {name:18} {kname:32} ptx .reg {regs:>4} (virtual, before allocation)  .shared {shared:>6} B")
        warnings = [l for l in log.splitlines() if "warning" in l]
        for w in warnings:
            print(f"  warning: {w}")
print()
if failures:
    print(f"check-kernels: {failures} compile failure(s)")
    sys.exit(1)
print(f"check-kernels: all {len(sources)} kernel files compile for {' '.join(archs)}")
PY
