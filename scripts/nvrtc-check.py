#!/usr/bin/env python3
"""Compiles every CUDA kernel file with NVRTC, as crates/cuda/src/compile.rs does, without a GPU.

Usage: scripts/nvrtc-check.py [sm_90 [sm_80 ...]] [--verbose]

Finds libnvrtc.so.13 in the nvidia-cuda-nvrtc wheel (python3 -m pip install nvidia-cuda-nvrtc)
or on the loader path, prepends common.cuh and the headers compile.rs names, and prints
NVRTC's messages; with --verbose, ptxas's register and spill report for each kernel. Exit status 1
when any file fails. A development check before spending device time; CI does not run it.
"""
import ctypes
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "cuda")


def load_nvrtc():
    names = ["libnvrtc.so.13", "libnvrtc.so"]
    try:
        import nvidia

        for base in nvidia.__path__:
            for r, _, files in os.walk(base):
                if "libnvrtc.so.13" in files:
                    names.insert(0, os.path.join(r, "libnvrtc.so.13"))
    except ImportError:
        pass
    for n in names:
        try:
            return ctypes.CDLL(n)
        except OSError:
            continue
    sys.exit("libnvrtc.so.13 not found (python3 -m pip install nvidia-cuda-nvrtc)")


def sources():
    """(file, [headers]) of each source! in compile.rs."""
    rs = open(os.path.join(ROOT, "src", "compile.rs")).read()
    for name, headers in re.findall(r'source!\("([^"]+)",\s*\[([^\]]*)\]\)', rs):
        yield name, re.findall(r'"([^"]+)"', headers)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    verbose = "--verbose" in sys.argv
    archs = args or ["sm_90"]
    lib = load_nvrtc()
    k = os.path.join(ROOT, "kernels")
    common = open(os.path.join(k, "common.cuh")).read()
    failed = False
    for arch in archs:
        for name, headers in sources():
            text = common + "\n"
            for h in headers:
                text += open(os.path.join(k, h)).read() + "\n"
            text += f'#line 1 "{name}"\n' + open(os.path.join(k, name)).read()
            prog = ctypes.c_void_p()
            rc = lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None)
            assert rc == 0, rc
            opts = [f"--gpu-architecture={arch}", "--std=c++17", "-default-device"]
            if verbose:
                opts.append("--ptxas-options=-v")
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            msg = log.value.decode(errors="replace").strip()
            status = "ok" if rc == 0 else "FAILED"
            print(f"{arch} {name}: {status}")
            if msg and (rc != 0 or verbose or "warning" in msg):
                print(msg)
            failed |= rc != 0
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
