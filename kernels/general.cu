// The general op set (backend/strided.rs): strided copies and broadcasting
// binary ops, elementwise maps, row reductions and a batched matmul.
//
// Each kernel's scalar parameters arrive by value as one struct after the
// buffers, mirrored by a kernel_params! struct of the same name in
// src/backend/cuda/general.rs (layout checked at compile time).
//
// A strided layout travels in the parameters themselves (no device buffer,
// so no allocation and no host-to-device copy per op): the output's shape
// and each operand's strides (ndim <= FG_MAX_DIMS, checked on the host;
// b_stride only for binary ops). Element i of the output, in row-major order
// of `shape`, reads a[offset_a(i)] (and b[offset_b(i)]).
#define FG_MAX_DIMS 8
struct StridedParams {
  long long shape[FG_MAX_DIMS], a_stride[FG_MAX_DIMS], b_stride[FG_MAX_DIMS];
  int ndim;
  int op;  // binary_f32: 0 add, 1 sub, 2 mul, 3 div, 4 eq
  int n;   // elements of the output
};
struct UnaryParams {
  int op;   // 0 neg, 1 exp, 2 log, 3 tanh, 4 sigmoid, 5 pow(x, p)
  float p;  // the exponent of pow
  int n;
};
struct ReduceRowsParams {
  int rows, cols;
  int op;  // 0 sum, 1 max
};
struct BatchedMatmulParams {
  int batch, m, k, n;
  int ta, tb;  // A stored [b, k, m], B stored [b, n, k]
};

#define GS_LOOP(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ long long strided_offset(long long i, const long long* shape, const long long* stride, int ndim) {
  long long offset = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    const long long idx = i % shape[d];
    i /= shape[d];
    offset += idx * stride[d];
  }
  return offset;
}

extern "C" __global__ void strided_copy_f32(const float* x, float* out, const StridedParams p) {
  GS_LOOP(i, p.n) { out[i] = x[strided_offset(i, p.shape, p.a_stride, p.ndim)]; }
}

// op: 0 add, 1 sub, 2 mul, 3 div, 4 eq (1 where equal, else 0).
extern "C" __global__ void binary_f32(const float* a, const float* b, float* out, const StridedParams p) {
  GS_LOOP(i, p.n) {
    const float x = a[strided_offset(i, p.shape, p.a_stride, p.ndim)];
    const float y = b[strided_offset(i, p.shape, p.b_stride, p.ndim)];
    float r;
    switch (p.op) {
      case 0: r = x + y; break;
      case 1: r = x - y; break;
      case 2: r = x * y; break;
      case 3: r = x / y; break;
      default: r = x == y ? 1.0f : 0.0f; break;
    }
    out[i] = r;
  }
}

// op: 0 neg, 1 exp, 2 log, 3 tanh, 4 sigmoid, 5 pow(x, p).
extern "C" __global__ void unary_f32(const float* x, float* out, const UnaryParams up) {
  const float p = up.p;
  GS_LOOP(i, up.n) {
    const float v = x[i];
    float r;
    switch (up.op) {
      case 0: r = -v; break;
      case 1: r = expf(v); break;
      case 2: r = logf(v); break;
      case 3: r = tanhf(v); break;
      case 4:
        // 1 / (1 + e^-v), written so neither side overflows (as on the CPU).
        if (v >= 0.0f) {
          r = 1.0f / (1.0f + expf(-v));
        } else {
          const float e = expf(v);
          r = e / (1.0f + e);
        }
        break;
      default: r = powf(v, p); break;
    }
    out[i] = r;
  }
}

// One 256-thread block per row of [rows, cols]. op 0: sum in double,
// rounded once; op 1: max, NaN if any element is NaN (PyTorch's amax).
extern "C" __global__ void reduce_rows_f32(const float* x, float* out, const ReduceRowsParams p) {
  const int rows = p.rows, cols = p.cols, op = p.op;
  __shared__ double dscratch[32];
  __shared__ float fscratch[32];
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = x + (long long)r * cols;
    if (op == 0) {
      double s = 0.0;
      for (int c = threadIdx.x; c < cols; c += blockDim.x) s += (double)row[c];
      s = block_sum_f64(s, dscratch);
      if (threadIdx.x == 0) out[r] = (float)s;
    } else {
      float m = -FG_INFINITY;
      double nans = 0.0;
      for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = row[c];
        if (v != v) {
          nans += 1.0;
        } else {
          m = fmaxf(m, v);
        }
      }
      m = block_max(m, fscratch);
      nans = block_sum_f64(nans, dscratch);
      if (threadIdx.x == 0) out[r] = nans > 0.0 ? __int_as_float(0x7fc00000) : m;
    }
  }
}

// out[b, i, j] = sum_k A[b, i, k] B[b, k, j], A stored [b, k, m] when ta,
// B stored [b, n, k] when tb. One thread per output; float accumulation
// in k order (the op set's matmul is for small models, not ResNet's GEMMs).
extern "C" __global__ void batched_matmul_f32(const float* a, const float* b, float* out, const BatchedMatmulParams bp) {
  const int batch = bp.batch, m = bp.m, k = bp.k, n = bp.n, ta = bp.ta, tb = bp.tb;
  const long long total = (long long)batch * m * n;
  GS_LOOP(idx, total) {
    const long long bi = idx / ((long long)m * n);
    const int i = (int)((idx / n) % m);
    const int j = (int)(idx % n);
    const float* A = a + bi * (long long)m * k;
    const float* B = b + bi * (long long)k * n;
    float s = 0.0f;
    for (int p = 0; p < k; ++p) {
      const float x = ta ? A[(long long)p * m + i] : A[(long long)i * k + p];
      const float y = tb ? B[(long long)j * k + p] : B[(long long)p * n + j];
      s = fmaf(x, y, s);
    }
    out[idx] = s;
  }
}
