// Dense matrix product C[M, N] = op(A)[M, K] * op(B)[K, N] for the linear
// layer, where op() is the identity or a transpose of the stored buffer:
//   A stored [M, K] (a_t = 0) or [K, M] (a_t = 1);
//   B stored [K, N] (b_t = 0) or [N, K] (b_t = 1).
// Linear forward is x W^T (b_t), its input gradient dy W, its weight
// gradient dy^T x (a_t). Grid: (ceil(N / TILE_N), ceil(M / TILE_M)).

// a_vec / b_vec (0 or 1, chosen by the host): load that operand as float4
// along its contiguous axis. Valid when that axis' length is a multiple of 4
// and the buffer is 16-byte aligned; otherwise scalar loads.
//
// op(A)[m, k]: stored [M, K] is contiguous along k, [K, M] along m.
// op(B)[k, n]: stored [K, N] is contiguous along n, [N, K] along k.
// The scalar parameters, passed by value after the buffers; mirrored by
// `GemmParams` in src/backend/cuda/gemm.rs (layout checked at compile time).
struct GemmParams {
  int M, N, K, a_vec, b_vec;
};

template <bool A_T, bool B_T>
__device__ __forceinline__ void gemm_tile(const float* A, const float* B, float* C, int M, int N, int K, int a_vec,
                                          int b_vec, float* smem) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  const MatrixOperand<A_T> a = {A, M, K};
  const MatrixOperand<!B_T> b = {B, N, K};
  float acc[MICRO][MICRO];
  zero_acc(acc);
  gemm_mainloop(a, b, a_vec != 0, b_vec != 0, m0, n0, 0, K, smem, acc);
#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < MICRO; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n < N) C[(long long)m * N + n] = acc[i][j];
    }
  }
}

extern "C" __global__ void gemm_nn(const float* A, const float* B, float* C, const GemmParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  gemm_tile<false, false>(A, B, C, p.M, p.N, p.K, p.a_vec, p.b_vec, smem);
}

extern "C" __global__ void gemm_nt(const float* A, const float* B, float* C, const GemmParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  gemm_tile<false, true>(A, B, C, p.M, p.N, p.K, p.a_vec, p.b_vec, smem);
}

extern "C" __global__ void gemm_tn(const float* A, const float* B, float* C, const GemmParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  gemm_tile<true, false>(A, B, C, p.M, p.N, p.K, p.a_vec, p.b_vec, smem);
}

extern "C" __global__ void gemm_tt(const float* A, const float* B, float* C, const GemmParams p) {
  __shared__ __align__(16) float smem[MAINLOOP_SMEM_WORDS];
  gemm_tile<true, true>(A, B, C, p.M, p.N, p.K, p.a_vec, p.b_vec, smem);
}
