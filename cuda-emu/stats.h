// Counters of what a GPU would pay for, kept by the emulated driver.
//
// The emulation has no timing model, but it sees every driver call, so it can
// count the calls whose cost on a real GPU does not shrink with faster
// kernels: launches, host waits (synchronisations and synchronous copies),
// host<->device copies and driver allocations. With
// FROSTGRAD_CUDA_EMU_STATS=PATH set, the counts are written to PATH as one
// JSON object when the process exits ("%p" in PATH becomes the process id), so
// tests can hold a budget per training step. See cuda-emu/README.md.
#pragma once
#include <stddef.h>

namespace fg_stats {
void launch(const char* kernel);
// A host wait: context, stream or event synchronisation, or a synchronous copy.
void sync();
void dtoh(size_t bytes);
void htod(size_t bytes);
void dtod(size_t bytes);
void memset_call();
void alloc(size_t bytes);
void free_call();
}  // namespace fg_stats
