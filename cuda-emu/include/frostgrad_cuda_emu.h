// Device-side emulation header: force-included (g++ -include) into every program
// the emulated NVRTC compiles. It maps CUDA C++ onto plain C++ that runs on a
// host thread, one fiber per GPU thread (see cuda-emu/README.md).
//
// __global__ and __shared__ are deliberately NOT defined here: the NVRTC
// emulation preprocesses the program first, finds the kernels and the
// `extern __shared__` declarations by those tokens, and defines them before the
// second (real) compilation.
#pragma once
#ifndef FROSTGRAD_CUDA_EMU_H
#define FROSTGRAD_CUDA_EMU_H

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <type_traits>
#include <utility>

#include "frostgrad_emu_abi.h"

// ---------------------------------------------------------------- qualifiers
#ifdef __FROSTGRAD_EMU_CHECK__
// The rewrite removes it, padding __device__ / __constant__ variables (see nvrtc.cpp).
#define __device__ __frostgrad_emu_device__
#define __constant__ __frostgrad_emu_device__
#else
#define __device__
#define __constant__
#endif
#define __host__
#define __managed__
#define __grid_constant__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __cluster_dims__(...)
#ifndef __builtin_assume
#define __builtin_assume(x) ((void)0)
#endif
#define __assume(x) ((void)0)
#define __CUDA_EMU_FROSTGRAD__ 1

// ---------------------------------------------------------------- runtime links
extern "C" {
__attribute__((visibility("hidden"))) extern FrostgradEmuThread* __frostgrad_emu_thr;
__attribute__((visibility("hidden"))) extern FrostgradEmuBlock* __frostgrad_emu_blk;
__attribute__((visibility("hidden"))) extern void* __frostgrad_emu_dyn_smem;
__attribute__((visibility("hidden"))) extern const FrostgradEmuRuntime* __frostgrad_emu_rt;
}

#ifdef __FROSTGRAD_EMU_CHECK__
// A checked build (FROSTGRAD_CUDA_EMU_CHECK) compiles kernel code with
// -fsanitize=thread instrumentation and reports every access it makes. The
// emulation's own helpers read the driver's memory (thread and block state,
// warp exchange slots, launch parameters), so they are out-of-line functions
// without instrumentation: inlined, their accesses would be the kernel's.
#define __FG_EMU_INTERNAL __attribute__((no_sanitize_thread, noinline))
// An atomic reports itself (read + write, atomic) before it happens, so a
// wild pointer is caught before it is dereferenced.
#define __FG_ATOMIC_ACCESS(p)                                                                     \
  __frostgrad_emu_rt->check_access((const void*)(p), sizeof(*(p)),                               \
                                   FG_ACCESS_READ | FG_ACCESS_WRITE | FG_ACCESS_ATOMIC | FG_ACCESS_ALIGNED, \
                                   __builtin_return_address(0))
// pure: constant while a thread runs (it may change only across the opaque
// barrier and warp calls, after which a pure function is evaluated again).
__attribute__((no_sanitize_thread, noinline, pure)) static uint3 __frostgrad_emu_tid() { return __frostgrad_emu_thr->tid; }
__attribute__((no_sanitize_thread, noinline, pure)) static uint3 __frostgrad_emu_bid() { return __frostgrad_emu_blk->bid; }
__attribute__((no_sanitize_thread, noinline, pure)) static dim3 __frostgrad_emu_bdim() { return __frostgrad_emu_blk->bdim; }
__attribute__((no_sanitize_thread, noinline, pure)) static dim3 __frostgrad_emu_gdim() { return __frostgrad_emu_blk->gdim; }
#define threadIdx (__frostgrad_emu_tid())
#define blockIdx (__frostgrad_emu_bid())
#define blockDim (__frostgrad_emu_bdim())
#define gridDim (__frostgrad_emu_gdim())
#else
#define __FG_EMU_INTERNAL __forceinline__
#define __FG_ATOMIC_ACCESS(p) ((void)0)
#define threadIdx (__frostgrad_emu_thr->tid)
#define blockIdx (__frostgrad_emu_blk->bid)
#define blockDim (__frostgrad_emu_blk->bdim)
#define gridDim (__frostgrad_emu_blk->gdim)
#endif
#define warpSize 32

// ---------------------------------------------------------------- vector types
#define FG_VEC2(T, N, A) \
  struct __attribute__((aligned(A))) N##2 { T x, y; }; \
  static __forceinline__ N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define FG_VEC3(T, N) \
  struct N##3 { T x, y, z; }; \
  static __forceinline__ N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define FG_VEC4(T, N, A) \
  struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
  static __forceinline__ N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define FG_VEC1(T, N) \
  struct N##1 { T x; }; \
  static __forceinline__ N##1 make_##N##1(T x) { return N##1{x}; }

FG_VEC1(float, float) FG_VEC2(float, float, 8) FG_VEC3(float, float) FG_VEC4(float, float, 16)
FG_VEC1(double, double) FG_VEC2(double, double, 16) FG_VEC3(double, double) FG_VEC4(double, double, 16)
FG_VEC1(int, int) FG_VEC2(int, int, 8) FG_VEC3(int, int) FG_VEC4(int, int, 16)
FG_VEC1(unsigned int, uint) FG_VEC2(unsigned int, uint, 8) FG_VEC4(unsigned int, uint, 16)
FG_VEC1(signed char, char) FG_VEC2(signed char, char, 2) FG_VEC3(signed char, char) FG_VEC4(signed char, char, 4)
FG_VEC1(unsigned char, uchar) FG_VEC2(unsigned char, uchar, 2) FG_VEC3(unsigned char, uchar) FG_VEC4(unsigned char, uchar, 4)
FG_VEC1(short, short) FG_VEC2(short, short, 4) FG_VEC3(short, short) FG_VEC4(short, short, 8)
FG_VEC1(unsigned short, ushort) FG_VEC2(unsigned short, ushort, 4) FG_VEC3(unsigned short, ushort) FG_VEC4(unsigned short, ushort, 8)
FG_VEC1(long long, longlong) FG_VEC2(long long, longlong, 16) FG_VEC3(long long, longlong) FG_VEC4(long long, longlong, 16)
FG_VEC1(unsigned long long, ulonglong) FG_VEC2(unsigned long long, ulonglong, 16) FG_VEC3(unsigned long long, ulonglong) FG_VEC4(unsigned long long, ulonglong, 16)
static __forceinline__ uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
#undef FG_VEC1
#undef FG_VEC2
#undef FG_VEC3
#undef FG_VEC4

// ---------------------------------------------------------------- barriers
#ifdef __FROSTGRAD_EMU_CHECK__
// The call site names the barrier, so that synccheck can tell threads waiting
// at different __syncthreads() apart (g++ may merge identical calls, never
// calls with different string arguments).
#define __FG_STR2(x) #x
#define __FG_STR(x) __FG_STR2(x)
static __FG_EMU_INTERNAL int __frostgrad_emu_sync_at(int pred, int op, const char* site) {
  return __frostgrad_emu_rt->block_sync_at(pred, op, site);
}
#define __syncthreads() ((void)__frostgrad_emu_sync_at(0, 0, __FILE__ ":" __FG_STR(__LINE__)))
#define __syncthreads_count(p) __frostgrad_emu_sync_at((p) != 0, 0, __FILE__ ":" __FG_STR(__LINE__))
#define __syncthreads_and(p) __frostgrad_emu_sync_at((p) != 0, 1, __FILE__ ":" __FG_STR(__LINE__))
#define __syncthreads_or(p) __frostgrad_emu_sync_at((p) != 0, 2, __FILE__ ":" __FG_STR(__LINE__))
#else
static __forceinline__ void __syncthreads() { __frostgrad_emu_rt->block_sync(0, 0); }
static __forceinline__ int __syncthreads_count(int p) { return __frostgrad_emu_rt->block_sync(p != 0, 0); }
static __forceinline__ int __syncthreads_and(int p) { return __frostgrad_emu_rt->block_sync(p != 0, 1); }
static __forceinline__ int __syncthreads_or(int p) { return __frostgrad_emu_rt->block_sync(p != 0, 2); }
#endif
// Fibers switch only at barriers and warp collectives, so every access is
// already ordered; the fences only have to stop the compiler reordering.
static __forceinline__ void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_system() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] static __FG_EMU_INTERNAL void __trap() { __frostgrad_emu_rt->trap("__trap() called"); }
[[noreturn]] static __FG_EMU_INTERNAL void __brkpt() { __frostgrad_emu_rt->trap("__brkpt() called"); }

// ---------------------------------------------------------------- warp collectives
namespace __frostgrad_emu {
template <class T>
static __forceinline__ unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
  unsigned long long b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
static __forceinline__ T from_bits(unsigned long long b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}
static __FG_EMU_INTERNAL unsigned int lane() { return __frostgrad_emu_thr->lane; }
template <class T>
static __FG_EMU_INTERNAL T shfl_from(unsigned mask, T var, int src, const char* what) {
  const unsigned long long* s = __frostgrad_emu_rt->warp_exchange(mask, to_bits(var), what);
  return from_bits<T>(s[src]);
}
}  // namespace __frostgrad_emu

template <class T>
static __FG_EMU_INTERNAL T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  int l = (int)__frostgrad_emu::lane();
  int src = (l & ~(width - 1)) | (srcLane & (width - 1));
  return __frostgrad_emu::shfl_from(mask, var, src, "__shfl_sync");
}
template <class T>
static __FG_EMU_INTERNAL T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  int l = (int)__frostgrad_emu::lane();
  int src = l - (int)delta;
  if (src < (l & ~(width - 1))) src = l;
  return __frostgrad_emu::shfl_from(mask, var, src, "__shfl_up_sync");
}
template <class T>
static __FG_EMU_INTERNAL T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  int l = (int)__frostgrad_emu::lane();
  int src = l + (int)delta;
  if ((l & (width - 1)) + (int)delta >= width) src = l;
  return __frostgrad_emu::shfl_from(mask, var, src, "__shfl_down_sync");
}
template <class T>
static __FG_EMU_INTERNAL T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  int l = (int)__frostgrad_emu::lane();
  int src = l ^ laneMask;
  if (src >= ((l & ~(width - 1)) + width) || src > 31) src = l;
  return __frostgrad_emu::shfl_from(mask, var, src, "__shfl_xor_sync");
}
static __FG_EMU_INTERNAL unsigned int __ballot_sync(unsigned mask, int pred) {
  const unsigned long long* s = __frostgrad_emu_rt->warp_exchange(mask, pred ? 1u : 0u, "__ballot_sync");
  unsigned r = 0;
  for (int i = 0; i < 32; i++)
    if (((mask >> i) & 1u) && s[i] == 1u) r |= 1u << i;
  return r;
}
static __FG_EMU_INTERNAL int __any_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) != 0;
}
static __FG_EMU_INTERNAL int __all_sync(unsigned mask, int pred) {
  const unsigned long long* s = __frostgrad_emu_rt->warp_exchange(mask, pred ? 1u : 0u, "__all_sync");
  for (int i = 0; i < 32; i++)
    if (((mask >> i) & 1u) && s[i] == 0u) return 0;
  return 1;
}
static __FG_EMU_INTERNAL unsigned int __activemask() { return __frostgrad_emu_rt->active_mask(); }
static __FG_EMU_INTERNAL void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)__frostgrad_emu_rt->warp_exchange(mask, 0, "__syncwarp");
}
#define FG_WARP_REDUCE(NAME, T, OP)                                                          \
  static __FG_EMU_INTERNAL T NAME(unsigned mask, T v) {                                     \
    const unsigned long long* s = __frostgrad_emu_rt->warp_exchange(mask, (unsigned long long)(v), #NAME); \
    bool first = true;                                                                       \
    T r = 0;                                                                                 \
    for (int i = 0; i < 32; i++)                                                             \
      if ((mask >> i) & 1u) {                                                                \
        T x = (T)s[i];                                                                       \
        r = first ? x : OP;                                                                  \
        first = false;                                                                       \
      }                                                                                      \
    return r;                                                                                \
  }
FG_WARP_REDUCE(__reduce_add_sync, unsigned, r + x)
FG_WARP_REDUCE(__reduce_add_sync, int, r + x)
FG_WARP_REDUCE(__reduce_min_sync, unsigned, (x < r ? x : r))
FG_WARP_REDUCE(__reduce_min_sync, int, (x < r ? x : r))
FG_WARP_REDUCE(__reduce_max_sync, unsigned, (x > r ? x : r))
FG_WARP_REDUCE(__reduce_max_sync, int, (x > r ? x : r))
FG_WARP_REDUCE(__reduce_and_sync, unsigned, r & x)
FG_WARP_REDUCE(__reduce_or_sync, unsigned, r | x)
FG_WARP_REDUCE(__reduce_xor_sync, unsigned, r ^ x)
#undef FG_WARP_REDUCE

// ---------------------------------------------------------------- atomics
// Fibers never switch inside these, so a plain read-modify-write is atomic.
#define FG_ATOMIC(NAME, T, EXPR) \
  static __FG_EMU_INTERNAL T NAME(T* p, T v) { __FG_ATOMIC_ACCESS(p); T old = *p; *p = (EXPR); return old; } \
  static __forceinline__ T NAME##_block(T* p, T v) { return NAME(p, v); } \
  static __forceinline__ T NAME##_system(T* p, T v) { return NAME(p, v); }
#define FG_ATOMIC_INT(T) \
  FG_ATOMIC(atomicAdd, T, old + v) FG_ATOMIC(atomicSub, T, old - v) FG_ATOMIC(atomicExch, T, v) \
  FG_ATOMIC(atomicMin, T, (v < old ? v : old)) FG_ATOMIC(atomicMax, T, (v > old ? v : old)) \
  FG_ATOMIC(atomicAnd, T, old & v) FG_ATOMIC(atomicOr, T, old | v) FG_ATOMIC(atomicXor, T, old ^ v) \
  static __FG_EMU_INTERNAL T atomicCAS(T* p, T cmp, T v) { __FG_ATOMIC_ACCESS(p); T old = *p; if (old == cmp) *p = v; return old; } \
  static __forceinline__ T atomicCAS_block(T* p, T cmp, T v) { return atomicCAS(p, cmp, v); } \
  static __forceinline__ T atomicCAS_system(T* p, T cmp, T v) { return atomicCAS(p, cmp, v); }
FG_ATOMIC_INT(int)
FG_ATOMIC_INT(unsigned int)
FG_ATOMIC_INT(unsigned long long)
FG_ATOMIC_INT(long long)
FG_ATOMIC(atomicAdd, float, old + v)
FG_ATOMIC(atomicAdd, double, old + v)
FG_ATOMIC(atomicExch, float, v)
FG_ATOMIC(atomicExch, double, v)
static __FG_EMU_INTERNAL unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v) {
  __FG_ATOMIC_ACCESS(p);
  unsigned short old = *p;
  if (old == cmp) *p = v;
  return old;
}
static __FG_EMU_INTERNAL unsigned atomicInc(unsigned* p, unsigned v) {
  __FG_ATOMIC_ACCESS(p);
  unsigned old = *p;
  *p = (old >= v) ? 0 : old + 1;
  return old;
}
static __FG_EMU_INTERNAL unsigned atomicDec(unsigned* p, unsigned v) {
  __FG_ATOMIC_ACCESS(p);
  unsigned old = *p;
  *p = (old == 0 || old > v) ? v : old - 1;
  return old;
}
// Not in CUDA itself but common in kernels: templates, so that a kernel's own
// non-template atomicMax(float*, float) wins overload resolution and does not clash.
template <class T, class = std::enable_if_t<std::is_floating_point_v<T>>>
static __FG_EMU_INTERNAL T atomicMax(T* p, std::type_identity_t<T> v) { __FG_ATOMIC_ACCESS(p); T old = *p; *p = fmax(old, v); return old; }
template <class T, class = std::enable_if_t<std::is_floating_point_v<T>>>
static __FG_EMU_INTERNAL T atomicMin(T* p, std::type_identity_t<T> v) { __FG_ATOMIC_ACCESS(p); T old = *p; *p = fmin(old, v); return old; }
#undef FG_ATOMIC_INT
#undef FG_ATOMIC

// ---------------------------------------------------------------- loads / stores
template <class T> static __forceinline__ T __ldg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldca(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcs(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldlu(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcv(const T* p) { return *p; }
template <class T> static __forceinline__ void __stcg(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stcs(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stwb(T* p, T v) { *p = v; }
template <class T> static __forceinline__ void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------- math
// glibc already declares __expf and friends (as extern functions), so these
// CUDA intrinsics are macros onto the accurate functions.
#define __expf(x) expf(x)
#define __exp10f(x) exp10f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf(x, y)
#define __sincosf(x, s, c) sincosf(x, s, c)
static __forceinline__ float __fdividef(float x, float y) { return x / y; }
static __forceinline__ float fdividef(float x, float y) { return x / y; }
static __forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
static __forceinline__ float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static __forceinline__ float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
static __forceinline__ float __fsqrt_rn(float x) { return sqrtf(x); }
// The _rn add/sub/mul intrinsics are never contracted into an FMA by NVRTC
// (that is what they are for); the kernels are compiled with contraction on
// (--fmad=true), so an empty asm makes each result a value of its own, rounded
// once, that g++ cannot fuse with a neighbouring operation.
#if defined(__x86_64__)
#define FG_ROUNDED(v) __asm__("" : "+x"(v))
#else
#define FG_ROUNDED(v) __asm__("" : "+w"(v))
#endif
static __forceinline__ float __fadd_rn(float a, float b) { float r = a + b; FG_ROUNDED(r); return r; }
static __forceinline__ float __fsub_rn(float a, float b) { float r = a - b; FG_ROUNDED(r); return r; }
static __forceinline__ float __fmul_rn(float a, float b) { float r = a * b; FG_ROUNDED(r); return r; }
static __forceinline__ float __fdiv_rn(float a, float b) { return a / b; }
static __forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static __forceinline__ double __dadd_rn(double a, double b) { double r = a + b; FG_ROUNDED(r); return r; }
static __forceinline__ double __dsub_rn(double a, double b) { double r = a - b; FG_ROUNDED(r); return r; }
static __forceinline__ double __dmul_rn(double a, double b) { double r = a * b; FG_ROUNDED(r); return r; }
static __forceinline__ double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static __forceinline__ float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
static __forceinline__ float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static __forceinline__ int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static __forceinline__ unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
static __forceinline__ float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static __forceinline__ float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
static __forceinline__ long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
static __forceinline__ double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
static __forceinline__ int __float2int_rn(float x) { return (int)nearbyintf(x); }
static __forceinline__ int __float2int_rz(float x) { return (int)x; }
static __forceinline__ int __float2int_rd(float x) { return (int)floorf(x); }
static __forceinline__ int __float2int_ru(float x) { return (int)ceilf(x); }
static __forceinline__ unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static __forceinline__ unsigned __float2uint_rz(float x) { return (unsigned)x; }
static __forceinline__ long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
static __forceinline__ long long __float2ll_rz(float x) { return (long long)x; }
static __forceinline__ float __int2float_rn(int x) { return (float)x; }
static __forceinline__ float __uint2float_rn(unsigned x) { return (float)x; }
static __forceinline__ int __double2int_rn(double x) { return (int)nearbyint(x); }
static __forceinline__ float __double2float_rn(double x) { return (float)x; }
static __forceinline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static __forceinline__ int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static __forceinline__ int __popc(unsigned x) { return __builtin_popcount(x); }
static __forceinline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __forceinline__ int __ffs(int x) { return __builtin_ffs(x); }
static __forceinline__ int __ffsll(long long x) { return __builtin_ffsll(x); }
static __forceinline__ unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
static __forceinline__ unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (((s >> (4 * i)) & 7u) * 8)) & 0xffu) << (8 * i);
  return r;
}
static __forceinline__ int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
static __forceinline__ unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static __forceinline__ int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static __forceinline__ unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static __forceinline__ long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static __forceinline__ unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static __forceinline__ int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
static __forceinline__ int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
static __forceinline__ unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b) >> 1); }
static __forceinline__ unsigned __urhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b + 1) >> 1); }
static __forceinline__ unsigned __sad(int a, int b, unsigned c) { return (unsigned)(a > b ? a - b : b - a) + c; }
static __forceinline__ unsigned __usad(unsigned a, unsigned b, unsigned c) { return (a > b ? a - b : b - a) + c; }
static __forceinline__ long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
static __forceinline__ long long __clock64_emu() { return clock64(); }
static __forceinline__ void __nanosleep(unsigned) {}

// CUDA's integer and floating min/max overloads; the template takes mixed
// argument types the way the usual arithmetic conversions would.
#define FG_MINMAX(T) \
  static __forceinline__ T min(T a, T b) { return a < b ? a : b; } \
  static __forceinline__ T max(T a, T b) { return a > b ? a : b; }
FG_MINMAX(int)
FG_MINMAX(unsigned int)
FG_MINMAX(long)
FG_MINMAX(unsigned long)
FG_MINMAX(long long)
FG_MINMAX(unsigned long long)
#undef FG_MINMAX
static __forceinline__ float min(float a, float b) { return fminf(a, b); }
static __forceinline__ float max(float a, float b) { return fmaxf(a, b); }
static __forceinline__ double min(double a, double b) { return fmin(a, b); }
static __forceinline__ double max(double a, double b) { return fmax(a, b); }
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B> && !std::is_same_v<A, B>>>
static __forceinline__ std::common_type_t<A, B> min(A a, B b) {
  return min((std::common_type_t<A, B>)a, (std::common_type_t<A, B>)b);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B> && !std::is_same_v<A, B>>>
static __forceinline__ std::common_type_t<A, B> max(A a, B b) {
  return max((std::common_type_t<A, B>)a, (std::common_type_t<A, B>)b);
}
static __forceinline__ unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
static __forceinline__ unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
static __forceinline__ long long llmin(long long a, long long b) { return a < b ? a : b; }
static __forceinline__ long long llmax(long long a, long long b) { return a > b ? a : b; }

// ---------------------------------------------------------------- half / bfloat16
// Bit-compatible with the Rust `half` crate (round to nearest, ties to even).
namespace __frostgrad_emu {
static __forceinline__ unsigned short f32_to_f16_bits(float f) {
  unsigned x;
  memcpy(&x, &f, 4);
  unsigned sign = (x >> 16) & 0x8000u;
  unsigned exp = (x >> 23) & 0xffu;
  unsigned man = x & 0x7fffffu;
  if (exp == 0xffu) return (unsigned short)(sign | 0x7c00u | (man ? (0x200u | (man >> 13)) : 0u));
  int e = (int)exp - 127 + 15;
  if (e >= 0x1f) return (unsigned short)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (unsigned short)sign;
    man |= 0x800000u;
    unsigned shift = (unsigned)(14 - e);
    unsigned half_man = man >> shift;
    unsigned rem = man & ((1u << shift) - 1u);
    unsigned halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_man & 1u))) half_man++;
    return (unsigned short)(sign | half_man);
  }
  unsigned h = sign | ((unsigned)e << 10) | (man >> 13);
  unsigned rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (unsigned short)h;
}
static __forceinline__ float f16_bits_to_f32(unsigned short h) {
  unsigned sign = ((unsigned)h & 0x8000u) << 16;
  unsigned exp = ((unsigned)h >> 10) & 0x1fu;
  unsigned man = (unsigned)h & 0x3ffu;
  unsigned x;
  if (exp == 0x1fu) {
    x = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      x = sign;
    } else {
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400u));
      x = sign | ((unsigned)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &x, 4);
  return f;
}
static __forceinline__ unsigned short f32_to_bf16_bits(float f) {
  unsigned x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (unsigned short)(x >> 16);
}
static __forceinline__ float bf16_bits_to_f32(unsigned short b) {
  unsigned x = (unsigned)b << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}
}  // namespace __frostgrad_emu

#define FG_HALF_TYPE(T, TO_BITS, FROM_BITS)                                                    \
  struct __attribute__((aligned(2))) T {                                                       \
    unsigned short __x;                                                                        \
    T() = default;                                                                             \
    T(float f) : __x(__frostgrad_emu::TO_BITS(f)) {}                                           \
    T(double f) : __x(__frostgrad_emu::TO_BITS((float)f)) {}                                   \
    T(int i) : __x(__frostgrad_emu::TO_BITS((float)i)) {}                                      \
    operator float() const { return __frostgrad_emu::FROM_BITS(__x); }                         \
    T& operator+=(T o) { return *this = T(float(*this) + float(o)); }                          \
    T& operator-=(T o) { return *this = T(float(*this) - float(o)); }                          \
    T& operator*=(T o) { return *this = T(float(*this) * float(o)); }                          \
    T& operator/=(T o) { return *this = T(float(*this) / float(o)); }                          \
  };                                                                                           \
  static __forceinline__ T operator+(T a, T b) { return T(float(a) + float(b)); }              \
  static __forceinline__ T operator-(T a, T b) { return T(float(a) - float(b)); }              \
  static __forceinline__ T operator*(T a, T b) { return T(float(a) * float(b)); }              \
  static __forceinline__ T operator/(T a, T b) { return T(float(a) / float(b)); }              \
  static __forceinline__ T operator-(T a) { T r; r.__x = (unsigned short)(a.__x ^ 0x8000u); return r; } \
  static __forceinline__ bool operator==(T a, T b) { return float(a) == float(b); }            \
  static __forceinline__ bool operator!=(T a, T b) { return float(a) != float(b); }            \
  static __forceinline__ bool operator<(T a, T b) { return float(a) < float(b); }              \
  static __forceinline__ bool operator<=(T a, T b) { return float(a) <= float(b); }            \
  static __forceinline__ bool operator>(T a, T b) { return float(a) > float(b); }              \
  static __forceinline__ bool operator>=(T a, T b) { return float(a) >= float(b); }
FG_HALF_TYPE(__half, f32_to_f16_bits, f16_bits_to_f32)
FG_HALF_TYPE(__nv_bfloat16, f32_to_bf16_bits, bf16_bits_to_f32)
#undef FG_HALF_TYPE
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
struct __attribute__((aligned(4))) __half2 { __half x, y; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

static __forceinline__ __half __float2half(float f) { return __half(f); }
static __forceinline__ __half __float2half_rn(float f) { return __half(f); }
static __forceinline__ float __half2float(__half h) { return float(h); }
static __forceinline__ __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
static __forceinline__ __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
static __forceinline__ float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
static __forceinline__ __half __low2half(__half2 h) { return h.x; }
static __forceinline__ __half __high2half(__half2 h) { return h.y; }
static __forceinline__ float __low2float(__half2 h) { return float(h.x); }
static __forceinline__ float __high2float(__half2 h) { return float(h.y); }
static __forceinline__ __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static __forceinline__ __half __hadd(__half a, __half b) { return a + b; }
static __forceinline__ __half __hsub(__half a, __half b) { return a - b; }
static __forceinline__ __half __hmul(__half a, __half b) { return a * b; }
static __forceinline__ __half __hdiv(__half a, __half b) { return a / b; }
static __forceinline__ __half __hneg(__half a) { return -a; }
static __forceinline__ __half __habs(__half a) { __half r; r.__x = (unsigned short)(a.__x & 0x7fffu); return r; }
static __forceinline__ __half __hfma(__half a, __half b, __half c) { return __half(fmaf(float(a), float(b), float(c))); }
static __forceinline__ __half __hmax(__half a, __half b) { return __half(fmaxf(float(a), float(b))); }
static __forceinline__ __half __hmin(__half a, __half b) { return __half(fminf(float(a), float(b))); }
static __forceinline__ bool __hgt(__half a, __half b) { return a > b; }
static __forceinline__ bool __hlt(__half a, __half b) { return a < b; }
static __forceinline__ bool __hge(__half a, __half b) { return a >= b; }
static __forceinline__ bool __hle(__half a, __half b) { return a <= b; }
static __forceinline__ bool __heq(__half a, __half b) { return a == b; }
static __forceinline__ bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static __forceinline__ __half hexp(__half a) { return __half(expf(float(a))); }
static __forceinline__ __half hlog(__half a) { return __half(logf(float(a))); }
static __forceinline__ __half hsqrt(__half a) { return __half(sqrtf(float(a))); }
static __forceinline__ __half hrsqrt(__half a) { return __half(1.0f / sqrtf(float(a))); }
static __forceinline__ short __half_as_short(__half h) { return (short)h.__x; }
static __forceinline__ unsigned short __half_as_ushort(__half h) { return h.__x; }
static __forceinline__ __half __ushort_as_half(unsigned short x) { __half h; h.__x = x; return h; }
static __forceinline__ __half __short_as_half(short x) { __half h; h.__x = (unsigned short)x; return h; }
static __forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static __forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static __forceinline__ float __bfloat162float(__nv_bfloat16 h) { return float(h); }
static __forceinline__ __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
static __forceinline__ float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{float(h.x), float(h.y)}; }
static __forceinline__ unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static __forceinline__ __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { __nv_bfloat16 h; h.__x = x; return h; }
static __FG_EMU_INTERNAL __half atomicAdd(__half* p, __half v) { __FG_ATOMIC_ACCESS(p); __half old = *p; *p = old + v; return old; }
static __FG_EMU_INTERNAL __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  __FG_ATOMIC_ACCESS(p);
  __nv_bfloat16 old = *p;
  *p = old + v;
  return old;
}

// ---------------------------------------------------------------- kernel entry
namespace __frostgrad_emu {
template <class F>
struct invoker;
template <class... A>
struct invoker<void (*)(A...)> {
  template <void (*F)(A...), size_t... I>
#ifdef __FROSTGRAD_EMU_CHECK__
  __attribute__((no_sanitize_thread))  // reads the launch's parameter array (host memory)
#endif
  static void call(void** p, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
  }
  template <void (*F)(A...)>
#ifdef __FROSTGRAD_EMU_CHECK__
  __attribute__((no_sanitize_thread))
#endif
  static void entry(void** p) {
    call<F>(p, std::index_sequence_for<A...>{});
  }
  static constexpr unsigned int n = sizeof...(A);
  static constexpr unsigned int sizes[sizeof...(A) + 1] = {(unsigned)sizeof(std::remove_cv_t<A>)..., 0u};
  static constexpr unsigned int aligns[sizeof...(A) + 1] = {(unsigned)alignof(std::remove_cv_t<A>)..., 0u};
};
}  // namespace __frostgrad_emu

#ifdef __FROSTGRAD_EMU_CHECK__
// g++ does not instrument calls to memcpy / memset / memmove (nor copies it
// expands into such calls): in kernel code they check their ranges here.
// Defined last, so that the helpers above keep the plain ones.
namespace __frostgrad_emu {
__attribute__((no_sanitize_thread, noinline)) static void* memcpy_checked(void* d, const void* s, size_t n) {
  __frostgrad_emu_rt->check_access(s, n, FG_ACCESS_READ, __builtin_return_address(0));
  __frostgrad_emu_rt->check_access(d, n, FG_ACCESS_WRITE, __builtin_return_address(0));
  return __builtin_memcpy(d, s, n);
}
__attribute__((no_sanitize_thread, noinline)) static void* memmove_checked(void* d, const void* s, size_t n) {
  __frostgrad_emu_rt->check_access(s, n, FG_ACCESS_READ, __builtin_return_address(0));
  __frostgrad_emu_rt->check_access(d, n, FG_ACCESS_WRITE, __builtin_return_address(0));
  return __builtin_memmove(d, s, n);
}
__attribute__((no_sanitize_thread, noinline)) static void* memset_checked(void* d, int v, size_t n) {
  __frostgrad_emu_rt->check_access(d, n, FG_ACCESS_WRITE, __builtin_return_address(0));
  return __builtin_memset(d, v, n);
}
}  // namespace __frostgrad_emu
namespace std {
using ::__frostgrad_emu::memcpy_checked;
using ::__frostgrad_emu::memmove_checked;
using ::__frostgrad_emu::memset_checked;
}  // namespace std
using ::__frostgrad_emu::memcpy_checked;
using ::__frostgrad_emu::memmove_checked;
using ::__frostgrad_emu::memset_checked;
#define memcpy memcpy_checked
#define memmove memmove_checked
#define memset memset_checked
#endif

#endif  // FROSTGRAD_CUDA_EMU_H
