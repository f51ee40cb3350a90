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
//
// Both operands are held in shared memory k-major: tile[k * TILE_LD + mn].
// Each operand is read from global memory by an "operand loader" (a small
// struct, below) that knows how the virtual matrix maps onto a buffer; the
// main loop (gemm_mainloop) only decides which thread fetches which elements.
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256
#define MICRO 4
// Row length of the shared tiles: 4 words of padding keep every row 16-byte
// aligned (float4 stores) and shift consecutive k rows by 4 banks, so the
// transposing stores of a k-contiguous operand hit at most 2 threads per bank.
#define TILE_LD (TILE_M + 4)
#define TILE_WORDS (TILE_K * TILE_LD)
// Shared memory of one gemm_mainloop: two buffers (double buffering) for each
// of the two operands.
#define MAINLOOP_SMEM_WORDS (4 * TILE_WORDS)
// Blocked accumulation: the products of ACC_BLOCK_SLICES consecutive TILE_K
// slices (256 terms) are summed into a fresh partial, which is then added to
// the running total. A reduction of length K thus rounds like one of length
// 256 + K / 256 instead of K: a 3x3x512 convolution (K = 4608) or a weight
// gradient over thousands of positions otherwise drifts several times
// further from float64 than the CPU's blocked GEMM and PyTorch do. It costs
// 16 registers and 16 adds per 256-deep block.
#define ACC_BLOCK_SLICES 16

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

// acc += part; part = 0 (the end of one accumulation block).
__device__ __forceinline__ void flush_acc(float acc[MICRO][MICRO], float part[MICRO][MICRO]) {
#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
#pragma unroll
    for (int j = 0; j < MICRO; ++j) {
      acc[i][j] += part[i][j];
      part[i][j] = 0.0f;
    }
  }
}

// Operand loaders. Each has
//   static const bool MN_FAST: whether the buffer is contiguous along the
//     tile's m (or n) axis; otherwise along k. Decides the thread mapping, so
//     that neighbouring threads read neighbouring addresses either way;
//   float load(int mn, int k): one element of the virtual matrix at global
//     coordinates, 0 outside it (padding, tile edges);
//   float4 load4(int mn, int k): the 4 elements (mn..mn+3, k) if MN_FAST,
//     else (mn, k..k+3), as one 16-byte load. Only called when the host has
//     checked that the contiguous extent is a multiple of 4 and the buffer is
//     16-byte aligned, so a group of 4 is entirely inside or outside the
//     matrix and never straddles a row.
//
// A plain row-major matrix: element (mn, k) at p[k * mn_total + mn]
// (MN_FAST) or p[mn * k_total + k].
template <bool MN_CONTIGUOUS>
struct MatrixOperand {
  static const bool MN_FAST = MN_CONTIGUOUS;
  const float* p;
  int mn_total, k_total;
  __device__ __forceinline__ long long offset(int mn, int k) const {
    return MN_FAST ? (long long)k * mn_total + mn : (long long)mn * k_total + k;
  }
  __device__ __forceinline__ float load(int mn, int k) const {
    return (mn < mn_total && k < k_total) ? p[offset(mn, k)] : 0.0f;
  }
  __device__ __forceinline__ float4 load4(int mn, int k) const {
    if (mn < mn_total && k < k_total) return *reinterpret_cast<const float4*>(p + offset(mn, k));
    return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
};

// load4 from four scalar loads, for loaders whose layout has no 16-byte
// runs (the host never selects vector mode for them; this keeps it correct
// if it did).
template <class L>
__device__ __forceinline__ float4 scalar_load4(const L& op, int mn, int k) {
  if (L::MN_FAST) return make_float4(op.load(mn, k), op.load(mn + 1, k), op.load(mn + 2, k), op.load(mn + 3, k));
  return make_float4(op.load(mn, k), op.load(mn, k + 1), op.load(mn, k + 2), op.load(mn, k + 3));
}

// Thread t's share of one TILE_K slice of an operand: 4 elements, fetched
// into registers by stage_load and written to a shared tile by stage_store.
// Scalar mode: elements e = t + 256 r (r < 4) of the slice, numbered along
// the buffer's contiguous axis. Vector mode: one float4 along that axis.
template <class L>
__device__ __forceinline__ void stage_load(const L& op, bool vec, int mn0, int k0, float v[4]) {
  const int t = threadIdx.y * 16 + threadIdx.x;
  if (vec) {
    // MN_FAST: 16 threads cover one 64-wide k row; else 4 threads one
    // 16-long k run of an mn row (64 contiguous bytes).
    const float4 q = L::MN_FAST ? op.load4(mn0 + (t % 16) * 4, k0 + t / 16) : op.load4(mn0 + t / 4, k0 + (t % 4) * 4);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = t + TILE_THREADS * r;
      v[r] = L::MN_FAST ? op.load(mn0 + e % TILE_M, k0 + e / TILE_M) : op.load(mn0 + e / TILE_K, k0 + e % TILE_K);
    }
  }
}

template <bool MN_FAST>
__device__ __forceinline__ void stage_store(bool vec, const float v[4], float* tile) {
  const int t = threadIdx.y * 16 + threadIdx.x;
  if (vec) {
    if (MN_FAST) {  // already k-major: one 16-byte store
      *reinterpret_cast<float4*>(tile + (t / 16) * TILE_LD + (t % 16) * 4) = make_float4(v[0], v[1], v[2], v[3]);
    } else {  // transpose on store
      const int mn = t / 4, k = (t % 4) * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) tile[(k + i) * TILE_LD + mn] = v[i];
    }
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = t + TILE_THREADS * r;
      if (MN_FAST)
        tile[(e / TILE_M) * TILE_LD + e % TILE_M] = v[r];
      else
        tile[(e % TILE_K) * TILE_LD + e / TILE_K] = v[r];
    }
  }
}

// acc += A[m0.., k_begin..k_end) * B[k_begin..k_end), n0..) for this
// thread's micro-tile. Double-buffered: while the block multiplies one slice
// out of shared memory, each thread already holds the next slice's elements
// in registers, so the global loads' latency overlaps the arithmetic; one
// barrier per slice separates "store slice s+1" from "read slice s+1" and
// "read slice s" from "overwrite slice s" (two slices later).
// `smem` holds MAINLOOP_SMEM_WORDS floats, 16-byte aligned. The loaders'
// own bounds (not k_end) decide which elements are zero, so k_end may run
// past the operands' k extent up to the next multiple of TILE_K.
template <class LA, class LB>
__device__ __forceinline__ void gemm_mainloop(const LA& a, const LB& b, bool a_vec, bool b_vec, int m0, int n0,
                                              int k_begin, int k_end, float* smem, float acc[MICRO][MICRO]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  float* As = smem;
  float* Bs = smem + 2 * TILE_WORDS;
  float ra[4], rb[4];
  stage_load(a, a_vec, m0, k_begin, ra);
  stage_load(b, b_vec, n0, k_begin, rb);
  stage_store<LA::MN_FAST>(a_vec, ra, As);
  stage_store<LB::MN_FAST>(b_vec, rb, Bs);
  __syncthreads();
  int cur = 0, slices = 0;
  float part[MICRO][MICRO];
  zero_acc(part);
  for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
    const bool more = k0 + TILE_K < k_end;
    if (more) {
      stage_load(a, a_vec, m0, k0 + TILE_K, ra);
      stage_load(b, b_vec, n0, k0 + TILE_K, rb);
    }
    tile_multiply(As + cur * TILE_WORDS, Bs + cur * TILE_WORDS, part, ty, tx);
    if (++slices == ACC_BLOCK_SLICES) {
      flush_acc(acc, part);
      slices = 0;
    }
    if (more) {
      stage_store<LA::MN_FAST>(a_vec, ra, As + (cur ^ 1) * TILE_WORDS);
      stage_store<LB::MN_FAST>(b_vec, rb, Bs + (cur ^ 1) * TILE_WORDS);
    }
    __syncthreads();
    cur ^= 1;
  }
  flush_acc(acc, part);
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

// The same in double, for the batch-norm statistics (which the CPU backend
// also accumulates in double): `scratch` holds 32 doubles.
__device__ __forceinline__ double warp_sum_f64(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ double block_sum_f64(double v, double* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum_f64(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double r = lane < warps ? scratch[lane] : 0.0;
    r = warp_sum_f64(r);
    if (lane == 0) scratch[0] = r;
  }
  __syncthreads();
  const double total = scratch[0];
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
