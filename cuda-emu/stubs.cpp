// Weak stubs for every entry point cudarc may look up (cudarc panics on a
// missing symbol). Real implementations in driver.cpp / nvrtc.cpp override
// them at link time; the rest report that the emulation does not support them.
#include <stdio.h>
#include <unistd.h>

static void fg_stub_note(const char* name) {
  char buf[256];
  int n = snprintf(buf, sizeof buf, "frostgrad-cuda-emu: %s is not implemented by the emulation\n", name);
  if (n > 0) {
    ssize_t w = write(2, buf, (size_t)n);
    (void)w;
  }
}

#if defined(FG_STUBS_DRIVER)
#define FG_STUB(name)                                                                 \
  extern "C" __attribute__((weak, visibility("default"))) int name() {                \
    fg_stub_note(#name);                                                              \
    return 801; /* CUDA_ERROR_NOT_SUPPORTED */                                        \
  }
#include "driver_stubs.inc"
#else
#define FG_STUB(name)                                                                 \
  extern "C" __attribute__((weak, visibility("default"))) int name() {                \
    fg_stub_note(#name);                                                              \
    return 11; /* NVRTC_ERROR_INTERNAL_ERROR: NVRTC has no "not supported" code */     \
  }
#include "nvrtc_stubs.inc"
#endif
