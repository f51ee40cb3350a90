// A program that is not cudarc: dlopens libcuda.so.1 and libnvrtc.so.13 by
// name (found through LD_LIBRARY_PATH, or in the folder given as argv[1]) and
// drives a kernel through the raw driver API and NVRTC entry points.
// Exit status 0 and "standalone: OK" on success.
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

#define SYM(lib, name, type) auto name = (type)dlsym(lib, #name); if (!name) { fprintf(stderr, "missing %s\n", #name); return 1; }
#define CK(x) do { CUresult r_ = (x); if (r_ != 0) { fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #x, r_); return 1; } } while (0)

static const char* kSrc = R"(
extern "C" __global__ void block_sum(const float* __restrict__ x, float* out, int* count, int n) {
  extern __shared__ float partial[];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) w += __shfl_xor_sync(0xffffffffu, w, off);
    if (threadIdx.x == 0) { out[blockIdx.x] = w; atomicAdd(count, 1); }
  }
}
)";

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? std::string(argv[1]) + "/" : "";
  void* cu = dlopen((dir + "libcuda.so.1").c_str(), RTLD_NOW);
  void* rtc = dlopen((dir + "libnvrtc.so.13").c_str(), RTLD_NOW);
  if (!cu || !rtc) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  SYM(cu, cuInit, CUresult (*)(unsigned));
  SYM(cu, cuDeviceGet, CUresult (*)(int*, int));
  SYM(cu, cuDeviceGetAttribute, CUresult (*)(int*, int, int));
  SYM(cu, cuDevicePrimaryCtxRetain, CUresult (*)(void**, int));
  SYM(cu, cuCtxSetCurrent, CUresult (*)(void*));
  SYM(cu, cuModuleLoadData, CUresult (*)(void**, const void*));
  SYM(cu, cuModuleGetFunction, CUresult (*)(void**, void*, const char*));
  SYM(cu, cuMemAlloc_v2, CUresult (*)(CUdeviceptr*, size_t));
  SYM(cu, cuMemFree_v2, CUresult (*)(CUdeviceptr));
  SYM(cu, cuMemcpyHtoD_v2, CUresult (*)(CUdeviceptr, const void*, size_t));
  SYM(cu, cuMemcpyDtoH_v2, CUresult (*)(void*, CUdeviceptr, size_t));
  SYM(cu, cuMemsetD8_v2, CUresult (*)(CUdeviceptr, unsigned char, size_t));
  SYM(cu, cuLaunchKernel, CUresult (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                       void*, void**, void**));
  SYM(cu, cuCtxSynchronize, CUresult (*)());
  SYM(cu, cuGraphCreate, CUresult (*)(void**, unsigned));
  SYM(rtc, nvrtcCreateProgram, int (*)(void**, const char*, const char*, int, const char* const*, const char* const*));
  SYM(rtc, nvrtcCompileProgram, int (*)(void*, int, const char* const*));
  SYM(rtc, nvrtcGetPTXSize, int (*)(void*, size_t*));
  SYM(rtc, nvrtcGetPTX, int (*)(void*, char*));
  SYM(rtc, nvrtcGetProgramLogSize, int (*)(void*, size_t*));
  SYM(rtc, nvrtcGetProgramLog, int (*)(void*, char*));
  SYM(rtc, nvrtcDestroyProgram, int (*)(void**));

  CK(cuInit(0));
  int dev = -1, major = 0, smem = 0;
  CK(cuDeviceGet(&dev, 0));
  CK(cuDeviceGetAttribute(&major, 75, dev));
  CK(cuDeviceGetAttribute(&smem, 8, dev));
  if (major != 9 || smem != 49152) {
    fprintf(stderr, "unexpected attributes: cc major %d, smem %d\n", major, smem);
    return 1;
  }
  void* ctx = nullptr;
  CK(cuDevicePrimaryCtxRetain(&ctx, dev));
  CK(cuCtxSetCurrent(ctx));
  void* g = nullptr;
  if (cuGraphCreate(&g, 0) != 801) {
    fprintf(stderr, "an unimplemented entry point did not return CUDA_ERROR_NOT_SUPPORTED\n");
    return 1;
  }

  // A compile error comes back as NVRTC_ERROR_COMPILATION with g++'s message.
  void* bad = nullptr;
  CK(nvrtcCreateProgram(&bad, "extern \"C\" __global__ void k(float* x) { x[0] = undeclared_thing; }", "bad.cu", 0,
                        nullptr, nullptr));
  const char* opt_bad[] = {"--gpu-architecture=compute_90"};
  int rc = nvrtcCompileProgram(bad, 1, opt_bad);
  size_t log_n = 0;
  CK(nvrtcGetProgramLogSize(bad, &log_n));
  std::vector<char> log(log_n);
  CK(nvrtcGetProgramLog(bad, log.data()));
  if (rc != 6 || !strstr(log.data(), "undeclared_thing") || !strstr(log.data(), "bad.cu")) {
    fprintf(stderr, "compile error not reported (rc %d), log:\n%s\n", rc, log.data());
    return 1;
  }
  CK(nvrtcDestroyProgram(&bad));

  void* prog = nullptr;
  CK(nvrtcCreateProgram(&prog, kSrc, "block_sum.cu", 0, nullptr, nullptr));
  const char* opts[] = {"--gpu-architecture=compute_90", "--fmad=false"};
  rc = nvrtcCompileProgram(prog, 2, opts);
  if (rc != 0) {
    CK(nvrtcGetProgramLogSize(prog, &log_n));
    log.resize(log_n);
    CK(nvrtcGetProgramLog(prog, log.data()));
    fprintf(stderr, "compile failed (%d):\n%s\n", rc, log.data());
    return 1;
  }
  size_t ptx_n = 0;
  CK(nvrtcGetPTXSize(prog, &ptx_n));
  std::vector<char> ptx(ptx_n);
  CK(nvrtcGetPTX(prog, ptx.data()));
  CK(nvrtcDestroyProgram(&prog));

  void* mod = nullptr;
  void* fn = nullptr;
  CK(cuModuleLoadData(&mod, ptx.data()));
  CK(cuModuleGetFunction(&fn, mod, "block_sum"));

  const int n = 100000, blocks = 20, threads = 256;
  std::vector<float> x(n);
  for (int i = 0; i < n; i++) x[i] = (float)((i * 37) % 101) * 0.25f;
  CUdeviceptr dx, dout, dcount;
  CK(cuMemAlloc_v2(&dx, n * sizeof(float)));
  CK(cuMemAlloc_v2(&dout, blocks * sizeof(float)));
  CK(cuMemAlloc_v2(&dcount, sizeof(int)));
  CK(cuMemcpyHtoD_v2(dx, x.data(), n * sizeof(float)));
  CK(cuMemsetD8_v2(dcount, 0, sizeof(int)));
  int nn = n;
  void* params[] = {&dx, &dout, &dcount, &nn};
  CK(cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, (threads / 32) * sizeof(float), nullptr, params, nullptr));
  CK(cuCtxSynchronize());
  std::vector<float> out(blocks);
  int count = 0;
  CK(cuMemcpyDtoH_v2(out.data(), dout, blocks * sizeof(float)));
  CK(cuMemcpyDtoH_v2(&count, dcount, sizeof(int)));

  // The same order of additions as the GPU: per thread strided sums, then the
  // two shuffle trees.
  for (int b = 0; b < blocks; b++) {
    float lane_v[256];
    for (int t = 0; t < threads; t++) {
      float v = 0.0f;
      for (int i = b * threads + t; i < n; i += blocks * threads) v += x[i];
      lane_v[t] = v;
    }
    float partial[8];
    for (int w = 0; w < threads / 32; w++) {
      float* l = lane_v + w * 32;
      for (int off = 16; off > 0; off >>= 1) {
        float nv[32];
        for (int i = 0; i < 32; i++) nv[i] = l[i] + (i + off < 32 ? l[i + off] : l[i]);
        memcpy(l, nv, sizeof nv);
      }
      partial[w] = l[0];
    }
    float w[32];
    for (int i = 0; i < 32; i++) w[i] = i < threads / 32 ? partial[i] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
      float nw[32];
      for (int i = 0; i < 32; i++) nw[i] = w[i] + w[i ^ off];
      memcpy(w, nw, sizeof nw);
    }
    if (memcmp(&w[0], &out[b], sizeof(float)) != 0) {
      fprintf(stderr, "block %d: got %.9g expected %.9g\n", b, out[b], w[0]);
      return 1;
    }
  }
  if (count != blocks) {
    fprintf(stderr, "atomic count %d, expected %d\n", count, blocks);
    return 1;
  }
  // The same launch with the arguments in a packed buffer (`extra`), as some
  // programs do: pointers at 0, 8, 16 and the int at 24.
  struct {
    CUdeviceptr x, out, count;
    int n;
  } packed = {dx, dout, dcount, n};
  size_t packed_size = 28;
  void* extra[] = {(void*)1, &packed, (void*)2, &packed_size, (void*)0};
  CK(cuMemsetD8_v2(dcount, 0, sizeof(int)));
  CK(cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, (threads / 32) * sizeof(float), nullptr, nullptr, extra));
  CK(cuMemcpyDtoH_v2(&count, dcount, sizeof(int)));
  if (count != blocks) {
    fprintf(stderr, "launch through `extra`: atomic count %d, expected %d\n", count, blocks);
    return 1;
  }
  CK(cuMemFree_v2(dx));
  CK(cuMemFree_v2(dout));
  CK(cuMemFree_v2(dcount));
  printf("standalone: OK\n");
  return 0;
}
