// 2-d convolution (groups = 1) as implicit GEMM: the im2col matrix is never
// materialised; each block gathers its TILE_K x TILE_N slice of it straight
// from the activation tensor into shared memory (through gemm_mainloop in
// common.cuh), with padding, stride and dilation folded into the gather
// (out-of-range taps read as zero).
//
// Shapes: x [N, C, H, W], w [O, C, KH, KW], y [N, O, OH, OW];
// "k" indexes (c, kh, kw) and "p" indexes (n, oh, ow) unless noted.
// Every kernel runs 16 x 16 threads per block.
//
// Vector loads: the `*_vec` flags (chosen by the host from the shapes and
// the buffers' alignment) switch an operand to float4 loads. They apply to
// the weight rows of the forward (C*KH*KW a multiple of 4), to dy rows of the
// weight gradient (OH*OW a multiple of 4) and, for "pointwise" convolutions
// (1x1 kernel, stride 1, no padding: the im2col matrix is the input itself),
// to the activation operands (H*W a multiple of 4). The `_pointwise` entry
// points exist because there the contiguous axis of an operand differs from
// the general case's (see each kernel).

struct ConvGeometry {
  int N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, OH, OW;
};

// Every conv kernel's scalar parameters, passed by value as one argument
// after the buffers. Mirrored field for field by `ConvParams` in
// src/backend/cuda/conv.rs (#[repr(C)], all ints, no padding). The flags a
// kernel does not use are 0.
struct ConvParams {
  ConvGeometry g;
  int has_bias;  // forward: add bias[o]
  int a_vec;     // float4 loads of the A operand (weight rows / dy rows)
  int b_vec;     // float4 loads of the B operand (activations / dy planes)
  int chunk;     // weight gradient: positions per split-K chunk
};

// im2col(x)[k, p] for k < C*KH*KW, p < N*OH*OW (0 on padding taps).
__device__ __forceinline__ float im2col_at(const ConvGeometry& g, const float* x, int k, int p) {
  const int khw_count = g.KH * g.KW, ohw = g.OH * g.OW;
  const int c = k / khw_count, khw = k - c * khw_count;
  const int kh = khw / g.KW, kw = khw - kh * g.KW;
  const int n = p / ohw, rem = p - n * ohw;
  const int oh = rem / g.OW, ow = rem - oh * g.OW;
  const int ih = oh * g.stride_h - g.pad_h + kh * g.dil_h, iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.0f;
  return x[(((long long)n * g.C + c) * g.H + ih) * g.W + iw];
}

// The input gradient's B operand: dy[o, q'] for k = (o, kh, kw) and
// q = (n, h, w), where q' is the output position whose (kh, kw) tap lands on
// (h, w), or 0 if there is none.
__device__ __forceinline__ float output_grad_at(const ConvGeometry& g, const float* dy, int k, int q) {
  const int khw_count = g.KH * g.KW, hw = g.H * g.W;
  const int o = k / khw_count, khw = k - o * khw_count;
  const int kh = khw / g.KW, kw = khw - kh * g.KW;
  const int n = q / hw, rem = q - n * hw;
  const int h = rem / g.W, w = rem - h * g.W;
  const int yh = h + g.pad_h - kh * g.dil_h, yw = w + g.pad_w - kw * g.dil_w;
  if (yh < 0 || yw < 0 || yh % g.stride_h != 0 || yw % g.stride_w != 0) return 0.0f;
  const int oh = yh / g.stride_h, ow = yw / g.stride_w;
  if (oh >= g.OH || ow >= g.OW) return 0.0f;
  return dy[(((long long)n * g.O + o) * g.OH + oh) * g.OW + ow];
}

// Offset of element (n, c, plane position rem) in an [N, C, plane] tensor.
__device__ __forceinline__ long long plane_offset(int n, int c, int channels, int plane, int rem) {
  return ((long long)n * channels + c) * plane + rem;
}

// Forward B operand, im2col(x)[k, p] with p on the tile's n axis:
// neighbouring threads take neighbouring output positions, i.e. (mostly)
// neighbouring input columns. load4 is for pointwise convolutions only,
// where element (k = c, p = (n, hw)) is x[n, c, hw] and H*W % 4 == 0.
struct ForwardInputOperand {
  static const bool MN_FAST = true;
  ConvGeometry g;
  const float* x;
  int k_total, p_total;
  __device__ __forceinline__ float load(int p, int k) const {
    return (p < p_total && k < k_total) ? im2col_at(g, x, k, p) : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int p, int k) const {
    if (p >= p_total || k >= k_total) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const int hw = g.H * g.W, n = p / hw;
    return *reinterpret_cast<const float4*>(x + plane_offset(n, k, g.C, hw, p - n * hw));
  }
};

// Forward: y[o, p] = sum_k w[o, k] * im2col(x)[k, p] (+ bias[o]).
// GEMM with M = O, N = batch * OH * OW, K = C * KH * KW. The weight is a
// row-major [O, K] matrix (contiguous along k).
// Grid: (ceil(P / TILE_N), ceil(O / TILE_M)).
extern "C" __global__ void conv2d_forward(const float* x, const float* w, const float* bias, float* y,
                                          const ConvParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  const ConvGeometry& g = p.g;
  const int O = g.O, has_bias = p.has_bias;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int k_total = g.C * g.KH * g.KW, ohw = g.OH * g.OW, p_total = g.N * ohw;
  const MatrixOperand<false> a = {w, O, k_total};
  const ForwardInputOperand b = {g, x, k_total, p_total};

  float acc[MICRO][MICRO];
  zero_acc(acc);
  gemm_mainloop(a, b, p.a_vec != 0, p.b_vec != 0, m0, n0, 0, k_total, smem, acc);

#pragma unroll
  for (int j = 0; j < MICRO; ++j) {
    const int pos = n0 + tx + 16 * j;
    if (pos >= p_total) continue;
    const int n = pos / ohw, rem = pos - n * ohw;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
      const int o = m0 + ty + 16 * i;
      if (o >= O) continue;
      const float b = has_bias ? bias[o] : 0.0f;
      y[((long long)n * O + o) * ohw + rem] = acc[i][j] + b;
    }
  }
}

// Input gradient, general case. A[c, k = (o, kh, kw)] = w[o, c, kh, kw]:
// contiguous along (kh, kw), so along the tile's k axis in runs of KH*KW.
struct TransposedWeightOperand {
  static const bool MN_FAST = false;
  const float* w;
  int C, khw_count, k_total;
  __device__ __forceinline__ float load(int c, int k) const {
    if (c >= C || k >= k_total) return 0.0f;
    const int o = k / khw_count, khw = k - o * khw_count;
    return w[((long long)o * C + c) * khw_count + khw];
  }
  __device__ __forceinline__ float4 load4(int c, int k) const { return scalar_load4(*this, c, k); }
};

// Input gradient's B operand, dy gathered through the inverse of the
// forward's index map; q on the tile's n axis. load4 is for pointwise
// convolutions only: element (q = (n, hw), k = o) is dy[n, o, hw].
struct InputGradDyOperand {
  static const bool MN_FAST = true;
  ConvGeometry g;
  const float* dy;
  int k_total, q_total;
  __device__ __forceinline__ float load(int q, int k) const {
    return (q < q_total && k < k_total) ? output_grad_at(g, dy, k, q) : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int q, int k) const {
    if (q >= q_total || k >= k_total) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const int hw = g.H * g.W, n = q / hw;
    return *reinterpret_cast<const float4*>(dy + plane_offset(n, k, g.O, hw, q - n * hw));
  }
};

// Input gradient: dx[c, q] = sum_{o, kh, kw} w[o, c, kh, kw] * dy[o, q'] where
// q = (n, h, w) and q' the output position whose (kh, kw) tap lands on
// (h, w), if any. GEMM with M = C, N = batch * H * W, K = O * KH * KW.
// Pointwise: A[c, o] = w[o, c] is a [K, M] matrix, contiguous along c.
// Grid: (ceil(batch * H * W / TILE_N), ceil(C / TILE_M)).
template <bool POINTWISE>
__device__ __forceinline__ void conv2d_input_grad_tile(const float* dy, const float* w, float* dx, bool w_vec,
                                                       bool dy_vec, const ConvGeometry& g, float* smem) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int khw_count = g.KH * g.KW, k_total = g.O * khw_count, hw = g.H * g.W, q_total = g.N * hw;
  const InputGradDyOperand b = {g, dy, k_total, q_total};

  float acc[MICRO][MICRO];
  zero_acc(acc);
  if (POINTWISE) {
    const MatrixOperand<true> a = {w, g.C, g.O};
    gemm_mainloop(a, b, w_vec, dy_vec, m0, n0, 0, k_total, smem, acc);
  } else {
    const TransposedWeightOperand a = {w, g.C, khw_count, k_total};
    gemm_mainloop(a, b, false, false, m0, n0, 0, k_total, smem, acc);
  }

#pragma unroll
  for (int j = 0; j < MICRO; ++j) {
    const int q = n0 + tx + 16 * j;
    if (q >= q_total) continue;
    const int n = q / hw, rem = q - n * hw;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
      const int c = m0 + ty + 16 * i;
      if (c < g.C) dx[((long long)n * g.C + c) * hw + rem] = acc[i][j];
    }
  }
}

extern "C" __global__ void conv2d_input_grad(const float* dy, const float* w, float* dx, const ConvParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  conv2d_input_grad_tile<false>(dy, w, dx, false, false, p.g, smem);
}

// a_vec: the weight read as [O, C] along C; b_vec: dy planes.
extern "C" __global__ void conv2d_input_grad_pointwise(const float* dy, const float* w, float* dx, const ConvParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  conv2d_input_grad_tile<true>(dy, w, dx, p.a_vec != 0, p.b_vec != 0, p.g, smem);
}

// Weight gradient's A operand: A[o, p] = dy[n, o, oh, ow], contiguous along
// p within an image; p is bounded by the block's chunk end. load4 needs
// OH*OW % 4 == 0 (chunks start at multiples of TILE_K).
struct WeightGradDyOperand {
  static const bool MN_FAST = false;
  const float* dy;
  int O, ohw, p_end;
  __device__ __forceinline__ long long offset(int o, int p) const {
    const int n = p / ohw;
    return plane_offset(n, o, O, ohw, p - n * ohw);
  }
  __device__ __forceinline__ float load(int o, int p) const {
    return (o < O && p < p_end) ? dy[offset(o, p)] : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int o, int p) const {
    if (o >= O || p >= p_end) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    return *reinterpret_cast<const float4*>(dy + offset(o, p));
  }
};

// Weight gradient's B operand, general case: B[p, k] = im2col(x)[k, p] with
// k on the tile's n axis (neighbouring threads take neighbouring taps).
struct WeightGradInputOperand {
  static const bool MN_FAST = true;
  ConvGeometry g;
  const float* x;
  int k_total, p_end;
  __device__ __forceinline__ float load(int k, int p) const {
    return (k < k_total && p < p_end) ? im2col_at(g, x, k, p) : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int k, int p) const { return scalar_load4(*this, k, p); }
};

// Pointwise: B[p, c] = x[n, c, hw], contiguous along p (the tile's k axis).
// load4 needs H*W % 4 == 0.
struct WeightGradPointwiseInputOperand {
  static const bool MN_FAST = false;
  const float* x;
  int C, hw, p_end;
  __device__ __forceinline__ long long offset(int c, int p) const {
    const int n = p / hw;
    return plane_offset(n, c, C, hw, p - n * hw);
  }
  __device__ __forceinline__ float load(int c, int p) const {
    return (c < C && p < p_end) ? x[offset(c, p)] : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int c, int p) const {
    if (c >= C || p >= p_end) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    return *reinterpret_cast<const float4*>(x + offset(c, p));
  }
};

// Weight gradient: dw[o, k] = sum_p dy[o, p] * im2col(x)[k, p]. GEMM with
// M = O, N = C * KH * KW and the long reduction K = batch * OH * OW split
// into gridDim.z chunks of `chunk` positions (a multiple of TILE_K). Chunk z
// writes its partial product to partial[z, O, C*KH*KW]; conv2d_sum_splits
// adds the chunks in a fixed order, so the result is reproducible run to
// run (no float atomics).
// Grid: (ceil(C*KH*KW / TILE_N), ceil(O / TILE_M), splits).
template <bool POINTWISE>
__device__ __forceinline__ void conv2d_weight_grad_tile(const float* dy, const float* x, float* partial, int chunk,
                                                        bool dy_vec, bool x_vec, const ConvGeometry& g,
                                                        float* smem) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int k_total = g.C * g.KH * g.KW, ohw = g.OH * g.OW, p_total = g.N * ohw;
  const int p_begin = blockIdx.z * chunk;
  const int p_end = min(p_total, p_begin + chunk);
  const WeightGradDyOperand a = {dy, g.O, ohw, p_end};

  float acc[MICRO][MICRO];
  zero_acc(acc);
  if (POINTWISE) {
    const WeightGradPointwiseInputOperand b = {x, g.C, g.H * g.W, p_end};
    gemm_mainloop(a, b, dy_vec, x_vec, m0, n0, p_begin, p_end, smem, acc);
  } else {
    const WeightGradInputOperand b = {g, x, k_total, p_end};
    gemm_mainloop(a, b, dy_vec, false, m0, n0, p_begin, p_end, smem, acc);
  }

  float* out = partial + (long long)blockIdx.z * g.O * k_total;
#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
    const int o = m0 + ty + 16 * i;
    if (o >= g.O) continue;
#pragma unroll
    for (int j = 0; j < MICRO; ++j) {
      const int k = n0 + tx + 16 * j;
      if (k < k_total) out[(long long)o * k_total + k] = acc[i][j];
    }
  }
}

// a_vec: dy rows; b_vec (pointwise only): x planes.
extern "C" __global__ void conv2d_weight_grad(const float* dy, const float* x, float* partial, const ConvParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  conv2d_weight_grad_tile<false>(dy, x, partial, p.chunk, p.a_vec != 0, false, p.g, smem);
}

extern "C" __global__ void conv2d_weight_grad_pointwise(const float* dy, const float* x, float* partial,
                                                        const ConvParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  conv2d_weight_grad_tile<true>(dy, x, partial, p.chunk, p.a_vec != 0, p.b_vec != 0, p.g, smem);
}

// out[i] = sum over z of partial[z, i], z ascending, in double (one
// rounding however many chunks). 1-d grid, any block size. Parameters:
// `SumSplitsParams` in src/backend/cuda/conv.rs.
struct SumSplitsParams {
  int n, splits;
};
extern "C" __global__ void conv2d_sum_splits(const float* partial, float* out, const SumSplitsParams p) {
  const int n = p.n, splits = p.splits;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    double s = 0.0;
    for (int z = 0; z < splits; ++z) s += (double)partial[(long long)z * n + i];
    out[i] = (float)s;
  }
}
