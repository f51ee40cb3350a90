// The kernel checker of the CUDA emulation (FROSTGRAD_CUDA_EMU_CHECK): memcheck,
// racecheck, initcheck and synccheck. See cuda-emu/README.md, "Checking kernels".
//
// Kernel programs compiled while FROSTGRAD_CUDA_EMU_CHECK is set carry g++'s
// -fsanitize=thread instrumentation; its callbacks (a shim in each module)
// call fgcheck::access for every load and store of kernel code. The driver
// (driver.cpp) tells the checker about allocations, copies, launches, blocks,
// thread switches and barriers through the hooks below.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <string>

#include "include/frostgrad_emu_abi.h"

namespace fgcheck {

enum : unsigned { MEM = 1, RACE = 2, INIT = 4, SYNC = 8, UNUSED = 16 };
extern unsigned g_checks;  // the enabled checks

// Parses FROSTGRAD_CUDA_EMU_CHECK (once). False, with a message, on a name it
// does not know.
bool configure(std::string* err);
inline bool on(unsigned c) { return (g_checks & c) != 0; }

// Device memory.
// Managed memory counts as written (the host writes it without copies).
void on_alloc(uintptr_t p, size_t n, bool managed);
void on_free(uintptr_t p);
void on_write(uintptr_t dst, size_t n);                   // copy to the device, memset
void on_copy(uintptr_t dst, uintptr_t src, size_t n);     // device to device
// A module was loaded: its symbol table gives the bounds of every __shared__
// variable and __device__ global, templates and inline functions included.
void on_module(void* handle, const char* path, char* shared_begin, char* shared_end);

struct Launch {
  const char* kernel;
  void* module;  // the dlopen handle on_module was given
  char* shared_begin;
  char* shared_end;
  char* dyn_smem;
  size_t dyn_smem_bytes;
  dim3 bdim, gdim;
};
// Checked launches only (instrumented module, a check enabled).
void launch_begin(const Launch& l);
void block_begin(uint3 bid);
void set_thread(unsigned linear, uint3 tid, char* stack_lo, char* stack_hi);
void barrier_done();
void warp_sync_done(unsigned warp);
// The CUresult the hazards of the launch call for (0 when none), and the end
// of checking for it.
int launch_end();
bool launch_active();
// Where the running thread is: "kernel 'k' block (x,y,z) thread (a,b,c)".
std::string where();

// The instrumentation callback (FrostgradEmuRuntime::check_access).
void access(const void* addr, unsigned long size, unsigned flags, const void* pc);

// Prints "frostgrad-cuda-emu: <check>: <msg>" unless the report limit is
// reached (FROSTGRAD_CUDA_EMU_CHECK_LIMIT, default 50 lines a process).
void report(const char* check, const std::string& msg);
// A non-fatal hazard of the running launch: reported, and the launch returns
// CUDA_ERROR_LAUNCH_FAILED when it ends.
void hazard(const char* check, const std::string& msg);

}  // namespace fgcheck

// Provided by driver.cpp: abort the running thread's launch with err (the
// report has been printed already), and the device-accessible host ranges.
[[noreturn]] void fg_emu_abort_launch(int err);
bool fg_emu_host_range_ok(uintptr_t p, size_t n);
