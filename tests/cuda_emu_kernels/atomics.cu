extern "C" __global__ void histogram(const int* __restrict__ v, int n, int* bins, int nbins) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(&bins[v[i] % nbins], 1);
}

extern "C" __global__ void float_sum(const float* __restrict__ v, int n, float* total) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(total, v[i]);
}

extern "C" __global__ void int_max_min(const int* __restrict__ v, int n, int* mx, int* mn) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    atomicMax(mx, v[i]);
    atomicMin(mn, v[i]);
  }
}

// The usual CAS loop: a float max that works for negative values too.
__device__ float atomic_max_float(float* addr, float val) {
  int* p = (int*)addr;
  int old = *p, assumed;
  do {
    assumed = old;
    if (__int_as_float(assumed) >= val) break;
    old = atomicCAS(p, assumed, __float_as_int(val));
  } while (assumed != old);
  return __int_as_float(old);
}

extern "C" __global__ void float_max_cas(const float* __restrict__ v, int n, float* mx, unsigned* exch) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    atomic_max_float(mx, v[i]);
    atomicExch(exch, 7u);
  }
}
