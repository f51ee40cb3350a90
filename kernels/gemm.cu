// Dense matrix product C[M, N] = op(A)[M, K] * op(B)[K, N] for the linear
// layer, where op() is the identity or a transpose of the stored buffer:
//   A stored [M, K] (a_t = 0) or [K, M] (a_t = 1);
//   B stored [K, N] (b_t = 0) or [N, K] (b_t = 1).
// Linear forward is x W^T (b_t), its input gradient dy W, its weight
// gradient dy^T x (a_t). Grid: (ceil(N / TILE_N), ceil(M / TILE_M)).

// Stages one TILE_K slice of op(A) and op(B) into shared memory, each thread
// loading 4 elements of each. Reads walk the buffer's contiguous axis across
// neighbouring threads so that every load is coalesced.
template <bool A_T, bool B_T>
__device__ __forceinline__ void gemm_stage(const float* A, const float* B, int M, int N, int K, int m0, int n0,
                                           int k0, float* As, float* Bs) {
  const int t = threadIdx.y * 16 + threadIdx.x;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int e = t + TILE_THREADS * r;
    int m, k;
    if (A_T) {  // [K, M]: m contiguous
      k = e / TILE_M;
      m = e % TILE_M;
    } else {  // [M, K]: k contiguous
      m = e / TILE_K;
      k = e % TILE_K;
    }
    const int gm = m0 + m, gk = k0 + k;
    float v = 0.0f;
    if (gm < M && gk < K) v = A_T ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk];
    As[k * TILE_LD + m] = v;
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int e = t + TILE_THREADS * r;
    int n, k;
    if (B_T) {  // [N, K]: k contiguous
      n = e / TILE_K;
      k = e % TILE_K;
    } else {  // [K, N]: n contiguous
      k = e / TILE_N;
      n = e % TILE_N;
    }
    const int gn = n0 + n, gk = k0 + k;
    float v = 0.0f;
    if (gn < N && gk < K) v = B_T ? B[(long long)gn * K + gk] : B[(long long)gk * N + gn];
    Bs[k * TILE_LD + n] = v;
  }
}

template <bool A_T, bool B_T>
__device__ __forceinline__ void gemm_tile(const float* A, const float* B, float* C, int M, int N, int K, float* As,
                                          float* Bs) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  float acc[MICRO][MICRO];
  zero_acc(acc);
  for (int k0 = 0; k0 < K; k0 += TILE_K) {
    gemm_stage<A_T, B_T>(A, B, M, N, K, m0, n0, k0, As, Bs);
    __syncthreads();
    tile_multiply(As, Bs, acc, ty, tx);
    __syncthreads();
  }
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

extern "C" __global__ void gemm_nn(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  gemm_tile<false, false>(A, B, C, M, N, K, As, Bs);
}

extern "C" __global__ void gemm_nt(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  gemm_tile<false, true>(A, B, C, M, N, K, As, Bs);
}

extern "C" __global__ void gemm_tn(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  gemm_tile<true, false>(A, B, C, M, N, K, As, Bs);
}

extern "C" __global__ void gemm_tt(const float* A, const float* B, float* C, int M, int N, int K) {
  __shared__ float As[TILE_K * TILE_LD];
  __shared__ float Bs[TILE_K * TILE_LD];
  gemm_tile<true, true>(A, B, C, M, N, K, As, Bs);
}
