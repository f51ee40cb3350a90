// Many blocks, a few barriers: the cost the CUDA backend's tests will pay.
extern "C" __global__ void busy(const float* __restrict__ x, float* __restrict__ y, int n) {
  __shared__ float s[256];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 32; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  float v = threadIdx.x < 64 ? s[threadIdx.x] : 0.0f;
  if (threadIdx.x < 32) {
    v += s[threadIdx.x + 32];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) y[blockIdx.x] = v;
  }
}
