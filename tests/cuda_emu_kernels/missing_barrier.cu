// Each thread publishes a value and reads its left neighbour's. Without the
// barrier the result depends on the order the threads run in: threads in
// index order happen to see their neighbour's write, any other order does not.
extern "C" __global__ void neighbour(const float* __restrict__ in, float* __restrict__ out) {
  __shared__ float s[256];
  int t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
#ifdef WITH_BARRIER
  __syncthreads();
#endif
  out[blockIdx.x * blockDim.x + t] = t > 0 ? s[t - 1] : 0.0f;
}
