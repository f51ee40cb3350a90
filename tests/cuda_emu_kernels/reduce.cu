// Block sum: a grid-stride partial per thread, a warp shuffle tree, one value
// per warp in dynamic shared memory, and a final warp tree.
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = warpSize / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
  extern __shared__ float warp_partials[];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  v = warp_sum(v);
  int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) warp_partials[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < (int)(blockDim.x / warpSize) ? warp_partials[lane] : 0.0f;
    w = warp_sum(w);
    if (lane == 0) out[blockIdx.x] = w;
  }
}
