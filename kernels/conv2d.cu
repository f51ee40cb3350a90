// 2-d convolution (groups = 1) as implicit GEMM: the im2col matrix is never
// materialised; each block gathers its TILE_K x TILE_N slice of it straight
// from the activation tensor into shared memory, with padding, stride and
// dilation folded into the gather (out-of-range taps read as zero).
//
// Shapes: x [N, C, H, W], w [O, C, KH, KW], y [N, O, OH, OW];
// "k" indexes (c, kh, kw) and "p" indexes (n, oh, ow) unless noted.
// Every kernel runs 16 x 16 threads per block.

#define CONV_GEOMETRY_PARAMS                                                                                    \
  int N, int C, int H, int W, int O, int KH, int KW, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, \
      int dil_w, int OH, int OW

// Forward: y[o, p] = sum_k w[o, k] * im2col(x)[k, p] (+ bias[o]).
// GEMM with M = O, N = batch * OH * OW, K = C * KH * KW.
// Grid: (ceil(P / TILE_N), ceil(O / TILE_M)).
extern "C" __global__ void conv2d_forward(const float* x, const float* w, const float* bias, int has_bias, float* y,
                                          CONV_GEOMETRY_PARAMS) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int khw_count = KH * KW, k_total = C * khw_count, ohw = OH * OW, p_total = N * ohw;

  // The im2col column this thread gathers never changes: decode it once.
  const int p_col = t % TILE_N, k_row0 = t / TILE_N;
  const int gp = n0 + p_col;
  const bool p_valid = gp < p_total;
  const int img = p_valid ? gp / ohw : 0;
  const int prem = p_valid ? gp - img * ohw : 0;
  const int oh = prem / OW, ow = prem - (prem / OW) * OW;
  const int ih0 = oh * stride_h - pad_h, iw0 = ow * stride_w - pad_w;
  const float* x_img = x + (long long)img * C * H * W;

  float acc[MICRO][MICRO];
  zero_acc(acc);
  for (int k0 = 0; k0 < k_total; k0 += TILE_K) {
    // Weight slice: rows are contiguous in k, so neighbouring threads read
    // neighbouring words.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = t / TILE_K + 16 * r, k = t % TILE_K;
      const int gm = m0 + m, gk = k0 + k;
      As[k * TILE_LD + m] = (gm < O && gk < k_total) ? w[(long long)gm * k_total + gk] : 0.0f;
    }
    // Virtual im2col slice: neighbouring threads take neighbouring output
    // positions, i.e. neighbouring input columns.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int k = k_row0 + 4 * r, gk = k0 + k;
      float v = 0.0f;
      if (p_valid && gk < k_total) {
        const int c = gk / khw_count, khw = gk - c * khw_count;
        const int kh = khw / KW, kw = khw - kh * KW;
        const int ih = ih0 + kh * dil_h, iw = iw0 + kw * dil_w;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x_img[((long long)c * H + ih) * W + iw];
      }
      Bs[k * TILE_LD + p_col] = v;
    }
    __syncthreads();
    tile_multiply(As, Bs, acc, ty, tx);
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < MICRO; ++j) {
    const int p = n0 + tx + 16 * j;
    if (p >= p_total) continue;
    const int n = p / ohw, rem = p - n * ohw;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
      const int o = m0 + ty + 16 * i;
      if (o >= O) continue;
      const float b = has_bias ? bias[o] : 0.0f;
      y[((long long)n * O + o) * ohw + rem] = acc[i][j] + b;
    }
  }
}

// Input gradient: dx[c, q] = sum_{o, kh, kw} w[o, c, kh, kw] * dy[o, q'] where
// q = (n, h, w) and q' the output position whose (kh, kw) tap lands on
// (h, w), if any. GEMM with M = C, N = batch * H * W, K = O * KH * KW; the
// B operand is dy gathered through the inverse of the forward's index map.
// Grid: (ceil(batch * H * W / TILE_N), ceil(C / TILE_M)).
extern "C" __global__ void conv2d_input_grad(const float* dy, const float* w, float* dx, CONV_GEOMETRY_PARAMS) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int khw_count = KH * KW, k_total = O * khw_count, hw = H * W, q_total = N * hw, ohw = OH * OW;

  const int q_col = t % TILE_N, k_row0 = t / TILE_N;
  const int gq = n0 + q_col;
  const bool q_valid = gq < q_total;
  const int img = q_valid ? gq / hw : 0;
  const int qrem = q_valid ? gq - img * hw : 0;
  const int h = qrem / W, wcol = qrem - (qrem / W) * W;
  const int th = h + pad_h, tw = wcol + pad_w;
  const float* dy_img = dy + (long long)img * O * ohw;

  float acc[MICRO][MICRO];
  zero_acc(acc);
  for (int k0 = 0; k0 < k_total; k0 += TILE_K) {
    // A[c, (o, kh, kw)] = w[o, c, kh, kw]: contiguous along (kh, kw).
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = t / TILE_K + 16 * r, k = t % TILE_K;
      const int gm = m0 + m, gk = k0 + k;
      float v = 0.0f;
      if (gm < C && gk < k_total) {
        const int o = gk / khw_count, khw = gk - o * khw_count;
        v = w[((long long)o * C + gm) * khw_count + khw];
      }
      As[k * TILE_LD + m] = v;
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int k = k_row0 + 4 * r, gk = k0 + k;
      float v = 0.0f;
      if (q_valid && gk < k_total) {
        const int o = gk / khw_count, khw = gk - o * khw_count;
        const int kh = khw / KW, kw = khw - kh * KW;
        const int yh = th - kh * dil_h, yw = tw - kw * dil_w;
        if (yh >= 0 && yw >= 0 && yh % stride_h == 0 && yw % stride_w == 0) {
          const int oh = yh / stride_h, ow = yw / stride_w;
          if (oh < OH && ow < OW) v = dy_img[((long long)o * OH + oh) * OW + ow];
        }
      }
      Bs[k * TILE_LD + q_col] = v;
    }
    __syncthreads();
    tile_multiply(As, Bs, acc, ty, tx);
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < MICRO; ++j) {
    const int q = n0 + tx + 16 * j;
    if (q >= q_total) continue;
    const int n = q / hw, rem = q - n * hw;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
      const int c = m0 + ty + 16 * i;
      if (c < C) dx[((long long)n * C + c) * hw + rem] = acc[i][j];
    }
  }
}

// Weight gradient: dw[o, k] = sum_p dy[o, p] * im2col(x)[k, p]. GEMM with
// M = O, N = C * KH * KW and the long reduction K = batch * OH * OW split
// into gridDim.z chunks of `chunk` positions (a multiple of TILE_K). Chunk z
// writes its partial product to partial[z, O, C*KH*KW]; conv2d_sum_splits
// adds the chunks in a fixed order, so the result is reproducible run to
// run (no float atomics).
// Grid: (ceil(C*KH*KW / TILE_N), ceil(O / TILE_M), splits).
extern "C" __global__ void conv2d_weight_grad(const float* dy, const float* x, float* partial, int chunk,
                                              CONV_GEOMETRY_PARAMS) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const int khw_count = KH * KW, k_total = C * khw_count, ohw = OH * OW, p_total = N * ohw;
  const int p_begin = blockIdx.z * chunk;
  const int p_end = min(p_total, p_begin + chunk);

  // The (c, kh, kw) column of im2col this thread gathers: decode once.
  const int k_col = t % TILE_N, p_row0 = t / TILE_N;
  const int gk = n0 + k_col;
  const bool k_valid = gk < k_total;
  const int c = k_valid ? gk / khw_count : 0;
  const int khw = k_valid ? gk - c * khw_count : 0;
  const int kh = khw / KW, kw = khw - (khw / KW) * KW;
  const int tap_h = kh * dil_h - pad_h, tap_w = kw * dil_w - pad_w;
  const long long chw = (long long)C * H * W;
  const float* x_channel = x + (long long)c * H * W;

  float acc[MICRO][MICRO];
  zero_acc(acc);
  for (int p0 = p_begin; p0 < p_end; p0 += TILE_K) {
    // A[o, p] = dy[n, o, oh, ow]: contiguous along p within an image.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = t / TILE_K + 16 * r, kk = t % TILE_K;
      const int gm = m0 + m, gp = p0 + kk;
      float v = 0.0f;
      if (gm < O && gp < p_end) {
        const int n = gp / ohw, rem = gp - n * ohw;
        v = dy[((long long)n * O + gm) * ohw + rem];
      }
      As[kk * TILE_LD + m] = v;
    }
    // B[p, k] = im2col(x)[k, p].
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int kk = p_row0 + 4 * r, gp = p0 + kk;
      float v = 0.0f;
      if (k_valid && gp < p_end) {
        const int n = gp / ohw, rem = gp - n * ohw;
        const int oh = rem / OW, ow = rem - oh * OW;
        const int ih = oh * stride_h + tap_h, iw = ow * stride_w + tap_w;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x_channel[n * chw + (long long)ih * W + iw];
      }
      Bs[kk * TILE_LD + k_col] = v;
    }
    __syncthreads();
    tile_multiply(As, Bs, acc, ty, tx);
    __syncthreads();
  }

  float* out = partial + (long long)blockIdx.z * O * k_total;
#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
    const int o = m0 + ty + 16 * i;
    if (o >= O) continue;
#pragma unroll
    for (int j = 0; j < MICRO; ++j) {
      const int k = n0 + tx + 16 * j;
      if (k < k_total) out[(long long)o * k_total + k] = acc[i][j];
    }
  }
}

// out[i] = sum over z of partial[z, i], z ascending. 1-d grid, any block size.
extern "C" __global__ void conv2d_sum_splits(const float* partial, float* out, int n, int splits) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[(long long)z * n + i];
    out[i] = s;
  }
}
