# Sourced by the `build` halves of scripts/gpu-test.sh and scripts/gpu-ab.sh: what they make here
# for a device call, in the form the call carries (scripts/device-unpack.py undoes it there).

# The kernels of the working tree as it is, compiled here for sm_90 into DIR/kcache (the device
# copies them into its kernel cache: scripts/device-env.sh). Modules already there are kept.
precompile_kernels() {
    (. scripts/device-env.sh && cargo run -q -p realizar-cuda --release --example precompile -- sm_90 "$1/kcache")
}

# DIR/kcache as DIR/kcache.tar.xz (the CUBINs shrink about 8x), and FILE... xz-compressed in
# place (a binary about 4x), so that a call's 64 MiB carries more.
pack_for_device() {
    local dir=$1 f
    shift
    for f in "$@"; do
        [ -f "$f" ] && xz -T0 -6 "$f"
    done
    tar -cJf "$dir/kcache.tar.xz" -C "$dir" kcache && rm -rf "$dir/kcache"
}
