// Elementwise maps, fills and reductions. 1-d grids with grid-stride loops;
// reductions are two-level and deterministic (fixed order, no atomics) and,
// like the CPU backend's, accumulate in double: each result is then rounded
// to float once instead of once per term.

// Each kernel's scalar parameters arrive by value as one struct after the
// buffers, mirrored by a kernel_params! struct of the same name in
// src/backend/cuda/elementwise.rs (layout checked at compile time).
struct MapParams {
  int n;  // elements
};
struct ScaleParams {
  float factor;
  int n;
};
struct InvStdParams {
  float eps;
  int n;
};
struct RowsParams {  // a [rows, cols] matrix
  int rows, cols;
};
struct ChannelSumsParams {  // [N, C, S]
  int N, C, S;
};

#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

extern "C" __global__ void add_f32(const float* a, const float* b, float* out, const MapParams p) {
  GRID_STRIDE(i, p.n) { out[i] = a[i] + b[i]; }
}

// a += b: the backward pass summing two gradients, one of them no one else reads.
extern "C" __global__ void add_assign_f32(float* a, const float* b, const MapParams p) {
  GRID_STRIDE(i, p.n) { a[i] += b[i]; }
}

extern "C" __global__ void scale_f32(const float* a, float* out, const ScaleParams p) {
  GRID_STRIDE(i, p.n) { out[i] = a[i] * p.factor; }
}

// out[i] = value[0]: the backward of a sum, reading the scalar on the device.
extern "C" __global__ void broadcast_scalar_f32(const float* value, float* out, const MapParams p) {
  const float v = value[0];
  GRID_STRIDE(i, p.n) { out[i] = v; }
}

extern "C" __global__ void relu_f32(const float* x, float* y, const MapParams p) {
  // PyTorch's relu propagates NaN; a plain `v > 0 ? v : 0` would zero it.
  GRID_STRIDE(i, p.n) {
    const float v = x[i];
    y[i] = (v > 0.0f || v != v) ? v : 0.0f;
  }
}

// relu(a + b) in one pass (ResNet's residual tail): the sum rounded to float,
// then relu_f32's clamp (NaN propagates), never written out in between.
__device__ __forceinline__ float add_relu1(float a, float b) {
  const float v = a + b;
  return (v > 0.0f || v != v) ? v : 0.0f;
}

extern "C" __global__ void add_relu_f32(const float* a, const float* b, float* out, const MapParams p) {
  GRID_STRIDE(i, p.n) { out[i] = add_relu1(a[i], b[i]); }
}

// The same over a's own buffer, when nothing else can read it any more.
extern "C" __global__ void add_relu_assign_f32(float* a, const float* b, const MapParams p) {
  GRID_STRIDE(i, p.n) { a[i] = add_relu1(a[i], b[i]); }
}

// dx = dy where the forward output was positive.
extern "C" __global__ void relu_backward_f32(const float* dy, const float* y, float* dx, const MapParams p) {
  GRID_STRIDE(i, p.n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

// The same over dy's own buffer, when nothing else reads it any more.
extern "C" __global__ void relu_backward_assign_f32(float* dy, const float* y, const MapParams p) {
  GRID_STRIDE(i, p.n) { dy[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void inv_std_f32(const float* var, float* out, const InvStdParams p) {
  GRID_STRIDE(i, p.n) { out[i] = (float)(1.0 / sqrt((double)var[i] + (double)p.eps)); }
}

// x[i] += 1 in place: batch norm's num_batches_tracked counts on the device,
// with no copy to the host and back in every train-mode forward.
extern "C" __global__ void increment_i64(long long* x, const MapParams p) {
  GRID_STRIDE(i, p.n) { x[i] += 1; }
}

// out[r, c] = x[r, c] + row[c]. Grid: (ceil(cols / blockDim.x), min(rows, 65535)).
extern "C" __global__ void add_row_vector_f32(const float* x, const float* row, float* out, const RowsParams p) {
  const int rows = p.rows, cols = p.cols;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const long long base = (long long)r * cols;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
      out[base + c] = x[base + c] + row[c];
    }
  }
}

// First level of a full sum: block b sums its grid-stride share into
// partial[b]. 256 threads per block.
extern "C" __global__ void sum_partial_f32(const float* x, float* partial, const MapParams p) {
  __shared__ double scratch[32];
  double s = 0.0;
  GRID_STRIDE(i, p.n) { s += (double)x[i]; }
  s = block_sum_f64(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = (float)s;
}

// Column sums of [rows, cols]: threadIdx.x picks the column (coalesced),
// threadIdx.y strides over rows, then the 8 row-partials are added in order.
// Block (32, 8); grid (ceil(cols / 32)).
extern "C" __global__ void sum_rows_f32(const float* x, float* out, const RowsParams p) {
  const int rows = p.rows, cols = p.cols;
  __shared__ double partial[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  double s = 0.0;
  if (c < cols) {
    for (int r = threadIdx.y; r < rows; r += 8) s += (double)x[(long long)r * cols + c];
  }
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0.0;
    for (int k = 0; k < 8; ++k) total += partial[k][threadIdx.x];
    out[c] = (float)total;
  }
}

// Per-channel sums of [N, C, S] (a conv bias gradient). Grid: (C), 256 threads.
extern "C" __global__ void channel_sums_f32(const float* x, float* out, const ChannelSumsParams p) {
  const int N = p.N, C = p.C, S = p.S;
  __shared__ double scratch[32];
  const int c = blockIdx.x;
  double s = 0.0;
  for (int i = threadIdx.x; i < N * S; i += blockDim.x) {
    const int n = i / S;
    s += (double)x[((long long)n * C + c) * S + (i - n * S)];
  }
  s = block_sum_f64(s, scratch);
  if (threadIdx.x == 0) out[c] = (float)s;
}
