# Sourced by the device halves of scripts/gpu-test.sh and scripts/gpu-bench.sh: the CUDA
# toolkit's binaries and libraries, NVRTC (libnvrtc.so.13, from the toolkit or the
# nvidia-cuda-nvrtc wheel), and one kernel cache for every run of the session. Also by
# scripts/test.sh, for NVRTC: the kernel compile tests run without a GPU.
nvrtc_dirs=$(python3 -c 'import importlib.util as u, os
for m in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia"):
    try:
        s = u.find_spec(m)
    except Exception:
        s = None
    if s and s.submodule_search_locations:
        for p in s.submodule_search_locations:
            for r, d, f in os.walk(p):
                if any(x.startswith("libnvrtc.so") for x in f):
                    print(r)' 2>/dev/null | head -3 | paste -sd:)
export PATH="$PATH:/usr/local/cuda/bin"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${nvrtc_dirs:+:$nvrtc_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export REALIZAR_CUDA_CACHE="${REALIZAR_CUDA_CACHE:-/tmp/realizar-kernel-cache}"
# Kernel CUBINs compiled beforehand for sm_90 (the `build` halves of gpu-test.sh and gpu-ab.sh,
# crates/cuda/examples/precompile.rs), where the call carried them: loaded instead of compiled
# (about a minute a fresh machine); the backend compiles any the driver refuses.
for kc in .device/kcache .device/ab/kcache; do
    if [ -d "$kc" ] && mkdir -p "$REALIZAR_CUDA_CACHE"; then
        cp -n "$kc"/*.cubin "$REALIZAR_CUDA_CACHE"/ 2>/dev/null || true
    fi
done
unset kc
unset nvrtc_dirs
