#!/usr/bin/env python3
"""Unpacks, on the device machine, what the `build` halves of scripts/gpu-test.sh and
scripts/gpu-ab.sh xz-compressed to fit a call's 64 MiB carry: every `NAME.xz` under the given
folders becomes NAME (executable), and `kcache.tar.xz` becomes the `kcache` folder beside it.
Python's lzma, since the device need not have xz. Idempotent: a second run finds nothing.

    python3 scripts/device-unpack.py .device/ab
"""

import lzma
import os
import shutil
import sys
import tarfile


def unpack(top):
    for root, _, files in os.walk(top):
        for name in files:
            src = os.path.join(root, name)
            if name == "kcache.tar.xz":
                with tarfile.open(src, "r:xz") as t:
                    try:
                        t.extractall(root, filter="data")
                    except TypeError:  # python before 3.12
                        t.extractall(root)
            elif name.endswith(".xz"):
                with lzma.open(src) as i, open(src[:-3], "wb") as o:
                    shutil.copyfileobj(i, o)
                os.chmod(src[:-3], 0o755)
            else:
                continue
            os.remove(src)


if __name__ == "__main__":
    for d in sys.argv[1:]:
        if os.path.isdir(d):
            unpack(d)
