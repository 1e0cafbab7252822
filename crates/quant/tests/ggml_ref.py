"""Optional oracle for tests/ggml_ref.rs: run llama.cpp's own C reference quantizers
(`quantize_row_<type>_ref`; for IQ4_NL `quantize_iq4_nl`, what llama-quantize writes without an
importance matrix) and dequantizers (`dequantize_row_<type>`) from a built
libggml-base shared library through ctypes.

Usage: python3 ggml_ref.py LIB DIR
DIR/manifest.txt has lines `quant NAME` (DIR/NAME.q.in f32 -> DIR/NAME.q.out blocks),
`act NAME` (the run-time activation quantizer `quantize_row_<type>` of libggml-cpu, found
beside LIB: DIR/NAME.act.in f32 -> DIR/NAME.act.out blocks) and `dequant NAME`
(DIR/NAME.dq.in blocks -> DIR/NAME.dq.out f32). NAME is the GGML type name.
"""

import ctypes
import sys
from pathlib import Path

import numpy as np

# (elements per block, bytes per block) of the types this script handles.
SIZES = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q8_1": (32, 36), "Q2_K": (256, 84), "Q3_K": (256, 110),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "Q8_K": (256, 292),
    "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
}


def main() -> None:
    lib = ctypes.CDLL(sys.argv[1])
    root = Path(sys.argv[2])
    cpu = None
    for line in (root / "manifest.txt").read_text().splitlines():
        if not line.strip():
            continue
        op, name = line.split()
        block, size = SIZES[name]
        sym = name.lower().replace("_k", "_K")
        if op == "quant":
            x = np.ascontiguousarray(np.fromfile(root / f"{name}.q.in", dtype="<f4"))
            out = np.zeros(x.size // block * size, dtype=np.uint8)
            if name == "IQ4_NL":
                # quantize_row_iq4_nl_ref is a quick variant without the scale search;
                # llama-quantize (no imatrix) writes quantize_iq4_nl's output, which we follow.
                fn = lib.quantize_iq4_nl
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_void_p]
                fn.restype = ctypes.c_size_t
                fn(x.ctypes.data, out.ctypes.data, 1, x.size, None)
            else:
                fn = getattr(lib, f"quantize_row_{sym}_ref")
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
                fn.restype = None
                fn(x.ctypes.data, out.ctypes.data, x.size)
            out.tofile(root / f"{name}.q.out")
        elif op == "act":
            if cpu is None:
                cpu = ctypes.CDLL(str(Path(sys.argv[1]).with_name("libggml-cpu.so")))
                cpu.ggml_cpu_init.restype = None
                cpu.ggml_cpu_init()
            x = np.ascontiguousarray(np.fromfile(root / f"{name}.act.in", dtype="<f4"))
            out = np.zeros(x.size // block * size, dtype=np.uint8)
            fn = getattr(cpu, f"quantize_row_{sym}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
            fn(x.ctypes.data, out.ctypes.data, x.size)
            out.tofile(root / f"{name}.act.out")
        elif op == "dequant":
            raw = np.ascontiguousarray(np.fromfile(root / f"{name}.dq.in", dtype=np.uint8))
            n = raw.size // size * block
            out = np.zeros(n, dtype=np.float32)
            fn = getattr(lib, f"dequantize_row_{sym}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
            fn(raw.ctypes.data, out.ctypes.data, n)
            out.astype("<f4").tofile(root / f"{name}.dq.out")
        else:
            raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":
    main()
