// Max pooling (with arg-max) and adaptive average pooling over [N, C, H, W].
// Backward kernels gather: one thread per input element adds the gradients
// of every window that covers it, so no two threads write one address and
// no atomics are needed.

// One thread per output. indices[o] is the flat position (ih * W + iw) of the
// window's maximum in its input plane: the first maximum in row-major window
// order wins, and NaN counts as maximal (PyTorch's rule).
// The scalar parameters of the max-pool kernels, passed by value as one
// argument; mirrored field for field by `PoolParams` in src/backend/cuda/pool.rs.
struct PoolParams {
  int planes, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, OH, OW;
};
#define POOL_PARAMS_LOCALS                                                                                  \
  const int planes = p.planes, H = p.H, W = p.W, KH = p.KH, KW = p.KW, stride_h = p.stride_h,            \
            stride_w = p.stride_w, pad_h = p.pad_h, pad_w = p.pad_w, dil_h = p.dil_h, dil_w = p.dil_w,    \
            OH = p.OH, OW = p.OW;                                                                       \
  (void)KH; (void)KW; (void)stride_h; (void)stride_w; (void)pad_h; (void)pad_w; (void)dil_h; (void)dil_w

// Adaptive average pooling's: `AdaptivePoolParams` in pool.rs.
struct AdaptivePoolParams {
  int planes, H, W, OH, OW;
};

extern "C" __global__ void max_pool2d_forward(const float* x, float* y, long long* indices, const PoolParams p) {
  POOL_PARAMS_LOCALS;
  const int total = planes * OH * OW;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += gridDim.x * blockDim.x) {
    const int plane = o / (OH * OW), rem = o - plane * (OH * OW);
    const int oh = rem / OW, ow = rem - (rem / OW) * OW;
    const int h0 = oh * stride_h - pad_h, w0 = ow * stride_w - pad_w;
    const float* xp = x + (long long)plane * H * W;
    float best = -FG_INFINITY;
    int best_at = -1;
    for (int kh = 0; kh < KH; ++kh) {
      const int ih = h0 + kh * dil_h;
      if (ih < 0 || ih >= H) continue;
      for (int kw = 0; kw < KW; ++kw) {
        const int iw = w0 + kw * dil_w;
        if (iw < 0 || iw >= W) continue;
        const float v = xp[ih * W + iw];
        if (best_at < 0 || v > best || v != v) {
          best = v;
          best_at = ih * W + iw;
        }
        if (best != best) break;  // NaN stays the maximum: keep the first one
      }
      if (best != best) break;
    }
    y[o] = best;
    indices[o] = best_at;
  }
}

// dx[plane, ih, iw] = sum of dy over the windows whose arg-max is (ih, iw).
extern "C" __global__ void max_pool2d_backward(const float* dy, const long long* indices, float* dx,
                                               const PoolParams p) {
  POOL_PARAMS_LOCALS;
  const int total = planes * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int plane = i / (H * W), at = i - plane * (H * W);
    const int ih = at / W, iw = at - (at / W) * W;
    const long long base = (long long)plane * OH * OW;
    float g = 0.0f;
    for (int kh = 0; kh < KH; ++kh) {
      const int th = ih + pad_h - kh * dil_h;
      if (th < 0 || th % stride_h != 0) continue;
      const int oh = th / stride_h;
      if (oh >= OH) continue;
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = iw + pad_w - kw * dil_w;
        if (tw < 0 || tw % stride_w != 0) continue;
        const int ow = tw / stride_w;
        if (ow >= OW) continue;
        const long long o = base + oh * OW + ow;
        if (indices[o] == at) g += dy[o];
      }
    }
    dx[i] = g;
  }
}

// Window of output cell i along an axis of length `in` pooled to `out`:
// [floor(i * in / out), ceil((i + 1) * in / out)).
__device__ __forceinline__ int window_start(int i, int in, int out) { return (i * in) / out; }
__device__ __forceinline__ int window_end(int i, int in, int out) { return ((i + 1) * in + out - 1) / out; }

extern "C" __global__ void adaptive_avg_pool2d_forward(const float* x, float* y, const AdaptivePoolParams p) {
  const int planes = p.planes, H = p.H, W = p.W, OH = p.OH, OW = p.OW;
  const int total = planes * OH * OW;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += gridDim.x * blockDim.x) {
    const int plane = o / (OH * OW), rem = o - plane * (OH * OW);
    const int oh = rem / OW, ow = rem - (rem / OW) * OW;
    const int h0 = window_start(oh, H, OH), h1 = window_end(oh, H, OH);
    const int w0 = window_start(ow, W, OW), w1 = window_end(ow, W, OW);
    const float* xp = x + (long long)plane * H * W;
    float s = 0.0f;
    for (int h = h0; h < h1; ++h)
      for (int w = w0; w < w1; ++w) s += xp[h * W + w];
    y[o] = s / (float)((h1 - h0) * (w1 - w0));
  }
}

// Input (h, w) lies in output rows [floor(h * OH / H), ceil((h + 1) * OH / H))
// (and likewise for columns): the inverse of the window formula above.
extern "C" __global__ void adaptive_avg_pool2d_backward(const float* dy, float* dx, const AdaptivePoolParams p) {
  const int planes = p.planes, H = p.H, W = p.W, OH = p.OH, OW = p.OW;
  const int total = planes * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int plane = i / (H * W), at = i - plane * (H * W);
    const int h = at / W, w = at - (at / W) * W;
    const int oh0 = (h * OH) / H, oh1 = ((h + 1) * OH + H - 1) / H;
    const int ow0 = (w * OW) / W, ow1 = ((w + 1) * OW + W - 1) / W;
    const float* g = dy + (long long)plane * OH * OW;
    float s = 0.0f;
    for (int oh = oh0; oh < oh1; ++oh) {
      const int rows = window_end(oh, H, OH) - window_start(oh, H, OH);
      for (int ow = ow0; ow < ow1; ++ow) {
        const int cols = window_end(ow, W, OW) - window_start(ow, W, OW);
        s += g[oh * OW + ow] / (float)(rows * cols);
      }
    }
    dx[i] = s;
  }
}
