"""Which instruction set PyTorch's CPU kernels actually run, for the
side-by-side scripts' `--isa` option (imported by bench_pytorch.py and
compare_layers.py; standard library plus torch).

`--isa avx2` is a proxy for an AVX2-only machine on an AVX-512 one: our side
gets `FROSTGRAD_SIMD=avx2`, PyTorch gets `ATEN_CPU_CAPABILITY=avx2` (ATen's
vectorised kernels: batch norm, ReLU, pooling, adds) and
`ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN's convolutions). Both variables are read
once, when torch loads, so they must be in the environment before
`import torch`; `request()` puts them there. A wrong spelling is ignored
silently by both libraries, which is why `report()` reads back what took
effect rather than trusting the request: ATen's capability from
`torch.backends.cpu.get_cpu_capability()`, oneDNN's from its verbose log of
one small convolution run in a child process (the log goes to the C stdout,
which this process cannot capture).
"""

import os
import subprocess
import sys

# Environment per `--isa` value; "native" leaves both libraries alone.
ISA_ENV = {
    "native": {},
    "avx2": {
        "FROSTGRAD_SIMD": "avx2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
    "avx512": {
        "FROSTGRAD_SIMD": "avx512",
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
    },
}

_PROBE = """
import torch
x = torch.rand(2, 16, 8, 8)
w = torch.rand(16, 16, 3, 3)
torch.nn.functional.conv2d(x, w, None, 1, 1)
"""


def request(isa):
    """Sets the environment for `isa` in this process (before `import torch`)."""
    if isa not in ISA_ENV:
        sys.exit(f"error: --isa {isa!r}: choose from {', '.join(ISA_ENV)}")
    if "torch" in sys.modules and ISA_ENV[isa]:
        sys.exit("torch_isa.request: torch is already loaded; the ISA cannot change now")
    os.environ.update(ISA_ENV[isa])


def onednn_conv():
    """(oneDNN's ISA line, the implementation of a small f32 convolution),
    e.g. ("Intel AVX2", "jit:avx2"), from a child with ONEDNN_VERBOSE=1."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True
    ).stdout
    isa, impl = "?", "?"
    for line in out.splitlines():
        f = line.split(",")
        if len(f) > 4 and f[2] == "info" and f[4].startswith("isa:"):
            isa = f[4][4:]
        if len(f) > 6 and f[2] == "primitive" and f[3] == "exec" and f[5] == "convolution":
            impl = f[6]
    return isa, impl


def report():
    """What PyTorch runs: {"aten": ..., "onednn_isa": ..., "onednn_conv": ...}."""
    import torch

    isa, impl = onednn_conv()
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": isa,
        "onednn_conv": impl,
    }
