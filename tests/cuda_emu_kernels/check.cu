// Kernels for the emulation's checker (tests/cuda_emu_check.rs): for each
// class of bug one kernel that has it (named bad_*) and one that is correct
// (named ok_*), which must pass every check clean.

// ------------------------------------------------------------------ memcheck
// The issue's example: a write n*4096 floats past a small buffer, far beyond
// any guard page.
extern "C" __global__ void bad_far_write(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i + n * 4096] = 1.0f;  // BUG
}

extern "C" __global__ void bad_write_before(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i - 3] = 1.0f;  // BUG: threads 0..2 write before the buffer
}

// Two __shared__ arrays: overflowing the first lands in the second on the
// host, so only per-variable bounds catch it.
extern "C" __global__ void bad_shared_overflow(float* out, int k) {
  __shared__ float first[32];
  __shared__ float second[32];
  second[threadIdx.x] = 0.0f;
  first[threadIdx.x + k] = 1.0f;  // BUG when k > 0
  __syncthreads();
  out[threadIdx.x] = first[threadIdx.x] + second[threadIdx.x];
}

extern "C" __global__ void bad_dynamic_shared(float* out, int n) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = (float)threadIdx.x;  // BUG: the launch gives n < blockDim.x floats
  __syncthreads();
  if ((int)threadIdx.x < n) out[threadIdx.x] = dyn[threadIdx.x];
}

// A float4 load from an address that is a multiple of 4 but not of 16.
extern "C" __global__ void bad_misaligned_float4(const float* in, float* out) {
  int i = threadIdx.x;
  float4 v = *reinterpret_cast<const float4*>(in + 4 * i + 1);  // BUG
  out[i] = v.x + v.y + v.z + v.w;
}

extern "C" __global__ void bad_use_after_free(const float* gone, float* out) {
  out[threadIdx.x] = gone[threadIdx.x];  // BUG: the host freed `gone`
}

// __shared__ inside a template and a __device__ global: their bounds come
// from the module's symbol table.
template <int N>
__device__ float stage(float v, int k) {
  __shared__ float tile[N];
  tile[threadIdx.x + k] = v;  // BUG when k > 0
  __syncthreads();
  return tile[threadIdx.x];
}
extern "C" __global__ void bad_template_shared(float* out, int k) { out[threadIdx.x] = stage<64>(1.0f, k); }

__device__ float table[16];
extern "C" __global__ void bad_device_global(float* out) {
  table[threadIdx.x] = (float)threadIdx.x;  // BUG: 32 threads, 16 entries
  out[threadIdx.x] = table[threadIdx.x];
}

extern "C" __global__ void ok_memory(const float* in, float* out, int n) {
  __shared__ float first[32];
  __shared__ float second[32];
  extern __shared__ float dyn[];
  int t = threadIdx.x;
  first[t] = in[t];
  second[t] = 2.0f * in[t];
  dyn[t] = 1.0f;
  __syncthreads();
  float4 v = reinterpret_cast<const float4*>(in)[t % 8];  // 16-byte aligned
  float s = stage<32>(v.x + v.w, 0);
  if (t < n) out[t] = first[31 - t] + second[t] + dyn[(t + 1) % 32] + s;
}

// ------------------------------------------------------------------ racecheck
extern "C" __global__ void bad_shared_race(float* out) {
  __shared__ float s[256];
  int t = threadIdx.x;
  s[t] = (float)t;
  // BUG: no __syncthreads() before reading a neighbour's element
  out[t] = s[(t + 1) % blockDim.x];
}

extern "C" __global__ void bad_global_race_in_block(float* out) {
  out[0] = (float)threadIdx.x;  // BUG: every thread of the block writes out[0]
}

extern "C" __global__ void bad_blocks_race(float* out) {
  out[threadIdx.x] = (float)blockIdx.x;  // BUG: every block writes the same elements
}

extern "C" __global__ void ok_race_free(float* out, int* count) {
  __shared__ float s[256];
  __shared__ float w[64];
  int t = threadIdx.x;
  s[t] = (float)t;
  __syncthreads();
  float v = s[(t + 1) % blockDim.x];
  __syncthreads();
  s[t] = v * 2.0f;  // after a barrier: no write-after-read hazard
  // warp-synchronous exchange ordered by __syncwarp
  if (t < 64) {
    w[t] = v;
    __syncwarp();
    v += w[t ^ 1];
  }
  atomicAdd(count, 1);  // all blocks, same address: atomics do not race
  out[blockIdx.x * blockDim.x + t] = v;
}

// ------------------------------------------------------------------ initcheck
// Integer data: NaN poisoning cannot show that nothing wrote it, and the max
// with 0 (a ReLU) would swallow a NaN anyway.
extern "C" __global__ void relu_int(const int* in, int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = max(in[i], 0);
}

extern "C" __global__ void bad_uninit_shared(float* out) {
  __shared__ float s[64];
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = fmaxf(s[threadIdx.x], 0.0f);  // BUG: s[32..63] never written
}

extern "C" __global__ void ok_fill(int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i - n / 2;
}

// ------------------------------------------------------------------ synccheck
extern "C" __global__ void bad_divergent_barrier(float* out) {
  __shared__ float s[64];
  int t = threadIdx.x;
  if (t < 32) {
    s[t] = 1.0f;
    __syncthreads();  // BUG: the two halves wait at different barriers
  } else {
    s[t] = 2.0f;
    __syncthreads();
  }
  out[t] = s[63 - t];
}

extern "C" __global__ void bad_barrier_after_exit(float* out, int n) {
  __shared__ float s[64];
  int t = threadIdx.x;
  if (t >= n) return;  // BUG: the others then wait at the barrier forever
  s[t] = (float)t;
  __syncthreads();
  out[t] = s[(t + 1) % n];
}

// A 48-thread block: warp 1 has lanes 0..15 only.
extern "C" __global__ void bad_shfl_missing_lanes(int* out) {
  int v = threadIdx.x;
  v += __shfl_xor_sync(0xffffffffu, v, 1);  // BUG: names lanes 16..31 of warp 1
  out[threadIdx.x] = v;
}

extern "C" __global__ void bad_syncwarp_exited_lanes(int* out) {
  if ((threadIdx.x & 31) >= 16) return;
  __syncwarp();  // BUG: the full mask names lanes 16..31, which have exited
  out[threadIdx.x] = 1;
}

extern "C" __global__ void ok_sync(int* out) {
  __shared__ int s[64];
  int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  unsigned mask = __activemask();  // 0xffff for warp 1 of a 48-thread block
  int v = s[(t + 1) % blockDim.x];
  v += __shfl_xor_sync(mask, v, 1);
  unsigned low = __ballot_sync(mask, t < 40);
  if (t < 40) __syncwarp(low);
  out[t] = v;
}

// ------------------------------------------------------------------ lane order
// Each thread of a warp takes the next ticket: the order the lanes ran in.
extern "C" __global__ void lane_order(int* order, int* next) {
  int ticket = atomicAdd(next, 1);
  order[ticket] = threadIdx.x;
}

// ------------------------------------------------------------------ memcpy in kernels
// g++ does not instrument library calls: the checked build routes these through checks.
extern "C" __global__ void copy_rows(float* dst, const float* src, int n, int extra) {
  int r = blockIdx.x;
  if (threadIdx.x != 0) return;
  memcpy(dst + r * n, src + r * n, (n + extra) * sizeof(float));  // BUG when extra > 0
  memset(dst + r * n, 0, sizeof(float));
}
