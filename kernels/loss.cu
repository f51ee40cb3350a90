// Log-softmax and negative log-likelihood (cross-entropy = nll(log_softmax)).
// Row kernels: one 256-thread block per row of [rows, cols].

// The scalar parameters, passed by value after the buffers; mirrored by
// `LossParams` in src/backend/cuda/loss.rs (layout checked at compile time).
struct LossParams {
  int rows, cols;
};

// y = x - max - log(sum exp(x - max)). Grid: (rows).
extern "C" __global__ void log_softmax_forward(const float* x, float* y, const LossParams p) {
  const int cols = p.cols;
  __shared__ float scratch[32];
  const long long base = (long long)blockIdx.x * cols;
  float m = -FG_INFINITY;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, x[base + c]);
  m = block_max(m, scratch);
  float s = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(x[base + c] - m);
  const float log_sum = logf(block_sum(s, scratch));
  for (int c = threadIdx.x; c < cols; c += blockDim.x) y[base + c] = x[base + c] - m - log_sum;
}

// dx = dy - exp(y) * sum(dy) per row. Grid: (rows).
extern "C" __global__ void log_softmax_backward(const float* dy, const float* y, float* dx, const LossParams p) {
  const int cols = p.cols;
  __shared__ float scratch[32];
  const long long base = (long long)blockIdx.x * cols;
  float s = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += dy[base + c];
  s = block_sum(s, scratch);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) dx[base + c] = dy[base + c] - expf(y[base + c]) * s;
}

// loss[0] = -mean_r logp[r, labels[r]]. Labels were range-checked on the
// host. One block of 256 threads. rows == 0 gives -0/0 = NaN, PyTorch's mean
// over an empty batch.
extern "C" __global__ void nll_loss_forward(const float* logp, const long long* labels, float* loss,
                                            const LossParams p) {
  const int rows = p.rows, cols = p.cols;
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) s += logp[(long long)r * cols + labels[r]];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) loss[0] = -s / (float)rows;
}

// dx[r, c] = -dloss / rows at the label, 0 elsewhere. 1-d grid.
extern "C" __global__ void nll_loss_backward(const float* dloss, const long long* labels, float* dx,
                                             const LossParams p) {
  const int rows = p.rows, cols = p.cols;
  const float g = -dloss[0] / (float)rows;
  const int total = rows * cols;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int r = i / cols;
    dx[i] = (i - r * cols) == labels[r] ? g : 0.0f;
  }
}
