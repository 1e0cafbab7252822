// Rotary embedding in place. One thread per (row, head, pair); the rotation is rope_pair
// (common.cuh).
extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ positions,
                                int rows, int cols, int head_dim, int rope_dim, float theta,
                                float scale, int layout) {
    pdl_entry();
    int half = rope_dim / 2;
    int heads = cols / head_dim;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)rows * heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    int h = (int)((idx / half) % heads);
    int t = (int)(idx / ((long long)half * heads));
    rope_pair(x + (size_t)t * cols + (size_t)h * head_dim, i, positions[t], rope_dim, theta, scale,
              layout);
}
