// The binary interface between the emulated driver (libcuda.so.1) and a kernel
// module compiled by the emulated NVRTC (a g++-built shared object).
//
// Included by the driver and, through frostgrad_cuda_emu.h, by every kernel
// program. Bump FROSTGRAD_EMU_ABI whenever a layout below changes: the version
// is part of the compile-cache key and is checked when a module is loaded.
#pragma once

#define FROSTGRAD_EMU_ABI 5

#ifdef __cplusplus
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Per emulated GPU thread. threadIdx reads tid of the running fiber.
struct FrostgradEmuThread {
  uint3 tid;
  unsigned int linear;  // x + y*bx + z*bx*by
  unsigned int lane;    // linear % 32
  unsigned int warp;    // linear / 32
};

// Per block (blocks run one after another).
struct FrostgradEmuBlock {
  uint3 bid;
  dim3 bdim;
  dim3 gdim;
};

// Services the driver offers to kernel code (called on fiber stacks).
struct FrostgradEmuRuntime {
  unsigned int abi;
  // __syncthreads and its reducing variants: op 0 = plain/count, 1 = and, 2 = or.
  int (*block_sync)(int pred, int op);
  // Warp-collective exchange: every lane named in mask deposits v; returns the 32
  // deposited values (lanes that did not take part hold all-ones bits).
  const unsigned long long* (*warp_exchange)(unsigned int mask, unsigned long long v, const char* what);
  // Mask of the lanes of the calling thread's warp that exist and have not exited.
  unsigned int (*active_mask)();
  // __trap / unsupported operation: aborts the launch with this message.
  [[noreturn]] void (*trap)(const char* what);
  // Checked builds (FROSTGRAD_CUDA_EMU_CHECK, see cuda-emu/README.md): every
  // memory access of kernel code, reported by the instrumentation shim with the
  // FG_ACCESS_* flags and the instruction's address.
  void (*check_access)(const void* addr, unsigned long size, unsigned flags, const void* pc);
  // __syncthreads and its reducing variants with the call site ("file:line"),
  // so that threads waiting at different barriers are reported.
  int (*block_sync_at)(int pred, int op, const char* site);
};
#define FG_ACCESS_READ 1u
#define FG_ACCESS_WRITE 2u
#define FG_ACCESS_ATOMIC 4u
// The compiler knows the access is naturally aligned (a GPU would fault otherwise).
#define FG_ACCESS_ALIGNED 8u

struct FrostgradEmuKernel {
  const char* name;
  void (*entry)(void** params);
  unsigned int nparams;
  const unsigned int* param_sizes;   // for cuLaunchKernel's `extra` parameter buffer
  const unsigned int* param_aligns;
};

struct FrostgradEmuModuleInfo {
  unsigned int abi;
  FrostgradEmuThread** cur_thread;
  FrostgradEmuBlock** cur_block;
  void** dyn_smem;
  const FrostgradEmuKernel* kernels;  // terminated by a null name
  char* shared_begin;                 // static __shared__ variables live in [begin, end)
  char* shared_end;
};

// Exported by every kernel module.
typedef int (*FrostgradEmuModuleInitFn)(const FrostgradEmuRuntime*, FrostgradEmuModuleInfo*);
#define FROSTGRAD_EMU_MODULE_INIT "__frostgrad_emu_module_init"
#endif
