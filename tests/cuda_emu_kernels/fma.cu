// a * b + c with the operands read from memory (so nothing is folded at
// compile time): one rounding when the compiler contracts it into an FMA
// (NVRTC's default, --fmad=true), two otherwise (--fmad=false).
extern "C" __global__ void mad(const float* a, const float* b, const float* c, float* out) {
  out[0] = a[0] * b[0] + c[0];
  out[1] = __fmaf_rn(a[0], b[0], c[0]);
  out[2] = __fadd_rn(__fmul_rn(a[0], b[0]), c[0]);
}

// Counted work for the statistics test: y = 2 x.
extern "C" __global__ void twice(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2.0f * x[i];
}
