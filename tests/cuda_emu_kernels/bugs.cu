// Kernels with bugs the emulation must report.
extern "C" __global__ void write_one_past(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;  // BUG: <= writes out[n]
}

extern "C" __global__ void early_exit_then_barrier(float* out, int n) {
  __shared__ float s[128];
  int t = threadIdx.x;
  if (t >= n) return;  // BUG: the remaining threads then wait at a barrier forever
  s[t] = (float)t;
  __syncthreads();
  out[t] = s[(t + 1) % n];
}

extern "C" __global__ void read_uninitialised_shared(float* out) {
  __shared__ float s[64];
  // BUG: nothing writes s before it is read
  out[threadIdx.x] = s[threadIdx.x];
}
