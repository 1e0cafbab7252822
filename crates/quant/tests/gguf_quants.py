"""Independent oracle for tests/gguf_py.rs: run the `gguf` Python package's numpy
(de)quantizers over files the Rust test wrote.

Usage: python3 gguf_quants.py DIR
DIR/manifest.txt has one job per line, `OP NAME`:
  dequant: DIR/NAME.dq.in (raw blocks)   -> DIR/NAME.dq.out (little-endian f32)
  quant:   DIR/NAME.q.in (little-endian f32) -> DIR/NAME.q.out (raw blocks)
  probe:   appends `dequant NAME` / `quant NAME` to DIR/probe.out for each direction that the
           installed gguf implements for that type (tried on one zero block)
NAME is a GGMLQuantizationType name (F32, Q4_K, IQ4_XS, ...). Two names that gguf does not
implement are decoded here from their documented layouts instead, so the Rust side can still be
checked against something it did not write:
  Q8_1 (d f16, s f16, qs[32] i8): the s field is dropped and the rest decoded as gguf's Q8_0;
  Q8_K (d f32, qs[256] i8, bsums[16] i16): decoded directly as d * qs with numpy.
Any failure raises, so the process exits non-zero.
"""

import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants


def dequant(name: str, raw: np.ndarray) -> np.ndarray:
    if name == "Q8_1":
        blocks = raw.reshape(-1, 36)
        as_q8_0 = np.concatenate([blocks[:, 0:2], blocks[:, 4:36]], axis=1).reshape(-1)
        return quants.dequantize(np.ascontiguousarray(as_q8_0), T.Q8_0)
    if name == "Q8_K":
        blocks = raw.reshape(-1, 292)
        d = np.ascontiguousarray(blocks[:, 0:4]).view("<f4").astype(np.float32)
        qs = np.ascontiguousarray(blocks[:, 4:260]).view(np.int8).astype(np.float32)
        return (d * qs).reshape(-1)
    return quants.dequantize(raw, T[name])


def probe(root: Path, name: str) -> None:
    qtype = T[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    found = []
    try:
        quants.dequantize(np.zeros(size, dtype=np.uint8), qtype)
        found.append("dequant")
    except NotImplementedError:
        pass
    try:
        quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
        found.append("quant")
    except NotImplementedError:
        pass
    with open(root / "probe.out", "a") as f:
        for op in found:
            f.write(f"{op} {name}\n")


def main() -> None:
    root = Path(sys.argv[1])
    for line in (root / "manifest.txt").read_text().splitlines():
        if not line.strip():
            continue
        op, name = line.split()
        if op == "dequant":
            raw = np.fromfile(root / f"{name}.dq.in", dtype=np.uint8)
            out = np.asarray(dequant(name, raw), dtype=np.float32).reshape(-1)
            out.astype("<f4").tofile(root / f"{name}.dq.out")
        elif op == "quant":
            x = np.fromfile(root / f"{name}.q.in", dtype="<f4").reshape(1, -1)
            q = quants.quantize(x, T[name])
            np.ascontiguousarray(q).view(np.uint8).reshape(-1).tofile(root / f"{name}.q.out")
        elif op == "probe":
            probe(root, name)
        else:
            raise ValueError(f"unknown op {op!r}")
    version = getattr(gguf, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as v

            version = v("gguf")
        except Exception:  # noqa: BLE001 - version is informational only
            version = "?"
    print(f"gguf {version}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
