#include <cuda_fp16.h>

extern "C" __global__ void warp_ops(const int* __restrict__ in, int* __restrict__ out) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  int v = in[t];
  unsigned full = 0xffffffffu;
  int* o = out + t * 8;
  o[0] = __shfl_sync(full, v, 3);
  o[1] = __shfl_up_sync(full, v, 1);
  o[2] = __shfl_xor_sync(full, v, 5);
  o[3] = (int)__ballot_sync(full, v & 1);
  o[4] = __any_sync(full, v == 42);
  o[5] = __all_sync(full, v >= 0);
  o[6] = __shfl_down_sync(full, v, 2, 8);  // width 8 segments
  __syncwarp();
  o[7] = __reduce_add_sync(full, v);
}

extern "C" __global__ void to_half(const float* __restrict__ in, unsigned short* __restrict__ h,
                                   unsigned short* __restrict__ b, float* __restrict__ back, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    __half x = __float2half(in[i]);
    __nv_bfloat16 y = __float2bfloat16(in[i]);
    h[i] = __half_as_ushort(x);
    b[i] = __bfloat16_as_ushort(y);
    back[i] = __half2float(x) + __bfloat162float(y);
  }
}

extern "C" __global__ void math_ops(const float* __restrict__ in, float* __restrict__ out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = in[i];
  float4 r = make_float4(fmaxf(x, 0.5f), fminf(x, 0.5f), __fdividef(x, 3.0f), rsqrtf(fabsf(x) + 1.0f));
  out[4 * i + 0] = r.x;
  out[4 * i + 1] = r.y;
  out[4 * i + 2] = r.z;
  out[4 * i + 3] = __int_as_float(__float_as_int(r.w));
}

// A block of 48 threads: the second warp has 16 lanes. The first warp leaves
// early (a whole warp, so no collective misses a lane); the second sums its
// lanes with a full-mask shuffle tree of width 16.
extern "C" __global__ void partial_warp(int* out) {
  int t = threadIdx.x;
  if (t < 32) return;
  int v = t;
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off, 16);
  out[t - 32] = v;
}
