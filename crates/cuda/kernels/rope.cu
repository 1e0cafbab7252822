// Rotary embedding in place. One thread per (row, head, pair); angles in double precision like
// the CPU reference (positions reach the thousands, where f32 angles lose ~1e-4 rad).
// layout 0 = normal (pairs 2i, 2i+1), 1 = NEOX (pairs i, i + rope_dim/2).
extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ positions,
                                int rows, int cols, int head_dim, int rope_dim, float theta,
                                float scale, int layout) {
    int half = rope_dim / 2;
    int heads = cols / head_dim;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)rows * heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    int h = (int)((idx / half) % heads);
    int t = (int)(idx / ((long long)half * heads));
    double inv_freq = pow((double)theta, -2.0 * (double)i / (double)rope_dim);
    double ang = ((double)positions[t] / (double)scale) * inv_freq;
    float c = (float)cos(ang), s = (float)sin(ang);
    float* hp = x + (size_t)t * cols + (size_t)h * head_dim;
    int a = layout == 0 ? 2 * i : i;
    int b = layout == 0 ? 2 * i + 1 : i + half;
    float x0 = hp[a], x1 = hp[b];
    hp[a] = x0 * c - x1 * s;
    hp[b] = x0 * s + x1 * c;
}
