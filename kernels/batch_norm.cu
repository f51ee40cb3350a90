// Batch normalisation over [N, C, S] (S = H * W). Statistics are per channel:
// one block reduces one channel (deterministic block reduction, no atomics),
// then an elementwise kernel normalises. Blocks of BN_THREADS threads.
#define BN_THREADS 512

// Every batch-norm kernel's scalar parameters, passed by value as one
// argument after the buffers; mirrored by `BnParams` in
// src/backend/cuda/batch_norm.rs (layout checked at compile time). The
// fields a kernel does not use are 0.
struct BnParams {
  int N, C, S, planes;  // [N, C, S], planes = N * C
  float eps;            // added to the variance
  float inv_count;      // 1 / (N * S): training-mode backward
  float momentum;       // running statistics' update
  float unbias;         // count / (count - 1): the running variance is unbiased
  int has_weight, has_bias;
  int fuse_relu;  // forward: clamp the output at 0 (a fused ReLU)
  int mask;       // backward: dy masked by the fused ReLU's output y > 0
  int with_xhat;  // backward reduction: also sum dy * xhat
};
#define BN_PARAMS_LOCALS                                                         \
  const int N = p.N, C = p.C, S = p.S, planes = p.planes;                        \
  (void)N; (void)C; (void)S; (void)planes

// Channel c's values are N runs of S contiguous floats: walk them flattened so
// that every thread stays busy even for small S.
#define FOR_CHANNEL_VALUES(i, n, s)                                                              \
  for (int i = threadIdx.x, n = i / S, s = i - n * S; i < N * S;                                 \
       i += blockDim.x, n = i / S, s = i - n * S)

// Training statistics: mean, biased variance (two passes) and
// 1 / sqrt(var + eps), accumulated and formed in double like the CPU
// backend's: a float sum over N*H*W values (up to millions) loses digits
// that every normalised value, and through the backward every gradient,
// inherits. Grid: (C).
extern "C" __global__ void bn_batch_stats(const float* x, float* mean, float* var, float* invstd, const BnParams p) {
  BN_PARAMS_LOCALS;
  __shared__ double scratch[32];
  const int c = blockIdx.x;
  const double count = (double)N * (double)S;
  double sum = 0.0;
  FOR_CHANNEL_VALUES(i, n, s) { sum += (double)x[((long long)n * C + c) * S + s]; }
  const double mu = block_sum_f64(sum, scratch) / count;
  double sq = 0.0;
  FOR_CHANNEL_VALUES(i, n, s) {
    const double d = (double)x[((long long)n * C + c) * S + s] - mu;
    sq += d * d;
  }
  const double v = block_sum_f64(sq, scratch) / count;
  if (threadIdx.x == 0) {
    mean[c] = (float)mu;
    var[c] = (float)v;
    invstd[c] = (float)(1.0 / sqrt(v + (double)p.eps));
  }
}

// The elementwise kernels walk [N * C] planes of S values: blockIdx.y (and
// then gridDim.y strides) picks the plane, so the channel needs no division
// per element; blockIdx.x / threadIdx.x walk the plane.
#define FOR_PLANES(plane, c)                                                     \
  for (int plane = blockIdx.y, c = plane % C; plane < planes;                   \
       plane += gridDim.y, c = plane % C)
#define FOR_PLANE_VALUES(s) for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < S; s += gridDim.x * blockDim.x)

// Batch norm followed by ReLU is fused with a flag: the forward kernels clamp
// the value they write (`fuse_relu`), and the backward kernels read dy masked
// by the fused forward's output y (`mask`), so neither direction needs a
// separate pass over the activation. Both match elementwise.cu's relu_f32 and
// relu_backward_f32 exactly (NaN propagates forward; the mask is y > 0).
__device__ __forceinline__ float bn_relu_if(int fuse_relu, float v) {
  return (!fuse_relu || v > 0.0f || v != v) ? v : 0.0f;
}
__device__ __forceinline__ float bn_masked_dy(const float* dy, const float* y, int mask, long long at) {
  return (!mask || y[at] > 0.0f) ? dy[at] : 0.0f;
}

// y = (x - mean[c]) * invstd[c] * w[c] + b[c]; the weight and bias are
// optional (flags).
extern "C" __global__ void bn_normalize(const float* x, const float* mean, const float* invstd, const float* weight,
                                        const float* bias, float* y, const BnParams p) {
  BN_PARAMS_LOCALS;
  FOR_PLANES(plane, c) {
    const float scale = invstd[c] * (p.has_weight ? weight[c] : 1.0f);
    const float shift = p.has_bias ? bias[c] : 0.0f;
    const float mu = mean[c];
    const long long base = (long long)plane * S;
    FOR_PLANE_VALUES(s) { y[base + s] = bn_relu_if(p.fuse_relu, (x[base + s] - mu) * scale + shift); }
  }
}

// Eval mode: the same normalisation with the running statistics, the inverse
// standard deviation formed on the fly.
extern "C" __global__ void bn_normalize_running(const float* x, const float* running_mean, const float* running_var,
                                                const float* weight, const float* bias, float* y, const BnParams p) {
  BN_PARAMS_LOCALS;
  FOR_PLANES(plane, c) {
    const float scale = (1.0f / sqrtf(running_var[c] + p.eps)) * (p.has_weight ? weight[c] : 1.0f);
    const float shift = p.has_bias ? bias[c] : 0.0f;
    const float mu = running_mean[c];
    const long long base = (long long)plane * S;
    FOR_PLANE_VALUES(s) { y[base + s] = bn_relu_if(p.fuse_relu, (x[base + s] - mu) * scale + shift); }
  }
}

// rm = (1 - m) rm + m mean;  rv = (1 - m) rv + m var * count / (count - 1).
extern "C" __global__ void bn_update_running(float* running_mean, float* running_var, const float* mean,
                                             const float* var, const BnParams p) {
  const float momentum = p.momentum, unbias = p.unbias;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= p.C) return;
  running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean[c];
  running_var[c] = (1.0f - momentum) * running_var[c] + momentum * var[c] * unbias;
}

// Backward reductions per channel: sum_dy = sum dy (= dbeta) and, when
// with_xhat, sum_dy_xhat = sum dy * (x - mean) * invstd (= dgamma). Without
// with_xhat `x` is never read (it may not have been saved). With `mask`, dy
// is masked by the fused ReLU's output y (otherwise y is never read). Grid: (C).
// Accumulated in double, like the forward statistics (and the CPU backend).
extern "C" __global__ void bn_backward_reduce(const float* dy, const float* y, const float* x, const float* mean,
                                              const float* invstd, float* sum_dy, float* sum_dy_xhat,
                                              const BnParams p) {
  BN_PARAMS_LOCALS;
  const int mask = p.mask, with_xhat = p.with_xhat;
  __shared__ double scratch[32];
  const int c = blockIdx.x;
  double a = 0.0, b = 0.0;
  if (with_xhat) {
    const double mu = (double)mean[c];
    FOR_CHANNEL_VALUES(i, n, s) {
      const long long at = ((long long)n * C + c) * S + s;
      const double g = (double)bn_masked_dy(dy, y, mask, at);
      a += g;
      b += g * ((double)x[at] - mu);
    }
  } else {
    FOR_CHANNEL_VALUES(i, n, s) { a += (double)bn_masked_dy(dy, y, mask, ((long long)n * C + c) * S + s); }
  }
  const double total_dy = block_sum_f64(a, scratch);
  if (with_xhat) {
    const double total_b = block_sum_f64(b, scratch);
    if (threadIdx.x == 0) sum_dy_xhat[c] = (float)(total_b * (double)invstd[c]);
  }
  if (threadIdx.x == 0) sum_dy[c] = (float)total_dy;
}

// Training-mode input gradient:
//   dx = w invstd (dy - sum_dy / M - xhat sum_dy_xhat / M),  M = N * S.
extern "C" __global__ void bn_backward_input_train(const float* dy, const float* y, const float* x, const float* mean,
                                                   const float* invstd, const float* weight, const float* sum_dy,
                                                   const float* sum_dy_xhat, float* dx, const BnParams p) {
  BN_PARAMS_LOCALS;
  const int mask = p.mask;
  const float inv_count = p.inv_count;
  FOR_PLANES(plane, c) {
    const float is = invstd[c];
    const float scale = is * (p.has_weight ? weight[c] : 1.0f);
    const float mean_dy = sum_dy[c] * inv_count;
    const float mean_dy_xhat = sum_dy_xhat[c] * inv_count;
    const float mu = mean[c];
    const long long base = (long long)plane * S;
    FOR_PLANE_VALUES(s) {
      const float xhat = (x[base + s] - mu) * is;
      dx[base + s] = scale * (bn_masked_dy(dy, y, mask, base + s) - mean_dy - xhat * mean_dy_xhat);
    }
  }
}

// Eval-mode input gradient: the statistics are constants, dx = w invstd dy.
extern "C" __global__ void bn_backward_input_eval(const float* dy, const float* y, const float* invstd,
                                                  const float* weight, float* dx, const BnParams p) {
  BN_PARAMS_LOCALS;
  const int mask = p.mask;
  FOR_PLANES(plane, c) {
    const float scale = invstd[c] * (p.has_weight ? weight[c] : 1.0f);
    const long long base = (long long)plane * S;
    FOR_PLANE_VALUES(s) { dx[base + s] = scale * bn_masked_dy(dy, y, mask, base + s); }
  }
}
