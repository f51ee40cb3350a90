// Shared by every kernel file: the module cache (and scripts/check-kernels.sh)
// prepends this text to each kernels/*.cu before handing it to NVRTC, so the
// programs need no #include and no CUDA headers.
//
// Conventions: every size is an `int` (the Rust side refuses tensors of 2^31
// elements or more), every kernel is `extern "C"` so its name is unmangled,
// shared memory is declared in the kernel body and passed down as pointers.

// ----- tiled GEMM core --------------------------------------------------------
// One 256-thread block computes a TILE_M x TILE_N tile of C = A * B, walking K
// in TILE_K-deep slices staged through shared memory. Threads form a 16 x 16
// grid; thread (ty, tx) owns the 4 x 4 outputs (ty + 16 i, tx + 16 j), so that
// neighbouring threads store neighbouring columns (coalesced writes) and read
// neighbouring shared-memory words (no bank conflicts).
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256
#define MICRO 4
// Row length of the shared tiles: one word of padding so that a column-wise
// store (threads walking K) hits 16 distinct banks.
#define TILE_LD (TILE_M + 1)

// No <math.h> under NVRTC: build infinity from its bit pattern.
#define FG_INFINITY (__int_as_float(0x7f800000))

// acc += As[0..TILE_K) x Bs[0..TILE_K) for this thread's 4 x 4 micro-tile.
__device__ __forceinline__ void tile_multiply(const float* As, const float* Bs, float acc[MICRO][MICRO],
                                              int ty, int tx) {
#pragma unroll
  for (int k = 0; k < TILE_K; ++k) {
    float a[MICRO];
    float b[MICRO];
#pragma unroll
    for (int i = 0; i < MICRO; ++i) a[i] = As[k * TILE_LD + ty + 16 * i];
#pragma unroll
    for (int j = 0; j < MICRO; ++j) b[j] = Bs[k * TILE_LD + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
#pragma unroll
      for (int j = 0; j < MICRO; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
}

__device__ __forceinline__ void zero_acc(float acc[MICRO][MICRO]) {
#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
#pragma unroll
    for (int j = 0; j < MICRO; ++j) acc[i][j] = 0.0f;
  }
}

// ----- block reductions -------------------------------------------------------
// Deterministic: the combination order depends only on blockDim, never on
// timing (no atomics). blockDim.x must be a multiple of 32; `scratch` holds 32
// floats of shared memory. Every thread gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float r = lane < warps ? scratch[lane] : 0.0f;
    r = warp_sum(r);
    if (lane == 0) scratch[0] = r;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();
  return total;
}

__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float r = lane < warps ? scratch[lane] : -FG_INFINITY;
    r = warp_max(r);
    if (lane == 0) scratch[0] = r;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();
  return total;
}
