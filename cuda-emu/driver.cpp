// Host emulation of the CUDA driver API (libcuda.so.1) for frostgrad's tests.
//
// Device memory is host memory (each allocation between guard pages, poisoned
// with 0xFF bytes), streams execute eagerly in order, and a kernel launch runs
// the blocks one after another on the calling host thread, the threads of a
// block as cooperative fibers that switch only at barriers and warp
// collectives. See cuda-emu/README.md for what is and is not guaranteed.
#include <dlfcn.h>
#include <link.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "check.h"
#include "include/frostgrad_emu_abi.h"
#include "stats.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_INVALID_DEVICE = 101,
  CUDA_ERROR_INVALID_IMAGE = 200,
  CUDA_ERROR_INVALID_CONTEXT = 201,
  CUDA_ERROR_INVALID_PTX = 218,
  CUDA_ERROR_FILE_NOT_FOUND = 301,
  CUDA_ERROR_INVALID_HANDLE = 400,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_ILLEGAL_ADDRESS = 700,
  CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
  CUDA_ERROR_ILLEGAL_INSTRUCTION = 715,
  CUDA_ERROR_LAUNCH_FAILED = 719,
  CUDA_ERROR_NOT_SUPPORTED = 801,
};

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kAllocAlign = 256;  // cuMemAlloc's guarantee
constexpr size_t kCanaryFront = 64;
constexpr int kMaxThreads = 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;
constexpr size_t kOptinSmemLimit = 227 * 1024;
constexpr unsigned long long kTotalMem = 150754820096ull;  // 140.4 GiB, like an H200

std::recursive_mutex g_mu;
bool g_inited = false;
CUresult g_sticky = CUDA_SUCCESS;  // sticky error, like a real context after a fault

void emu_log(const char* fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  std::string s = "frostgrad-cuda-emu: ";
  s.append(buf, (size_t)n);
  s += "\n";
  ssize_t w = write(2, s.data(), s.size());
  (void)w;
}

// ------------------------------------------------------------------ contexts
struct Ctx {
  int refs = 0;
  bool primary = false;
  unsigned flags = 0;
};
Ctx g_primary;
thread_local Ctx* t_cur = nullptr;
size_t g_limits[16] = {1024, 1 << 20, 8 << 20, 2, 2048, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

struct Stream {
  Ctx* ctx;
  unsigned flags;
  int priority;
};
struct Event {
  unsigned flags;
  bool recorded = false;
  double t = 0;
};

double now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// ------------------------------------------------------------------ memory
struct Alloc {
  char* region;       // mmap base (a PROT_NONE guard page first)
  size_t region_len;  // including both guard pages
  char* body;         // readable/writable pages
  size_t body_len;
  char* ptr;  // what the caller gets
  size_t size;
  bool managed;
};
std::map<uintptr_t, Alloc> g_allocs;                  // key: ptr
std::map<uintptr_t, size_t> g_ranges;                 // module globals and host allocations: start -> size
unsigned long long g_allocated = 0;

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Address space for an allocation. While checking, allocations are scattered
// at random over 64 TiB instead of packed next to each other by mmap, so that
// an access far outside one allocation (memcheck's "any distance") lands in
// unmapped space, not in a neighbouring allocation where it would look valid.
void* reserve_region(size_t len) {
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  if (fgcheck::g_checks) {
    static unsigned long long seed = 0x5eed5eedull;
    for (int tries = 0; tries < 32; tries++) {
      unsigned long long z = (seed += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      uintptr_t hint = ((1ull << 40) + z % ((1ull << 46) - (1ull << 40) - len)) & ~(uintptr_t)(kPage - 1);
      void* r = mmap((void*)hint, len, PROT_NONE, flags | MAP_FIXED_NOREPLACE, -1, 0);
      if (r == (void*)hint) return r;
      if (r != MAP_FAILED) munmap(r, len);  // a kernel that took the flag as a mere hint
    }
  }
  return mmap(nullptr, len, PROT_NONE, flags, -1, 0);
}

CUresult do_alloc(CUdeviceptr* out, size_t size, bool managed) {
  if (!out || size == 0) return CUDA_ERROR_INVALID_VALUE;
  if (size > kTotalMem - g_allocated) return CUDA_ERROR_OUT_OF_MEMORY;
  size_t body_len = round_up(size + kAllocAlign - 1, kPage);
  size_t region_len = body_len + 2 * kPage;
  void* r = reserve_region(region_len);
  if (r == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  char* region = (char*)r;
  char* body = region + kPage;
  if (mprotect(body, body_len, PROT_READ | PROT_WRITE) != 0) {
    munmap(r, region_len);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  // The allocation ends as close to the trailing guard page as 256-byte
  // alignment allows; the slack is checked for stray writes after each launch.
  char* ptr = (char*)((uintptr_t)(body + body_len - size) & ~(uintptr_t)(kAllocAlign - 1));
  memset(body, 0xFF, body_len);  // poison: every f32 reads as NaN until written
  g_allocs[(uintptr_t)ptr] = Alloc{region, region_len, body, body_len, ptr, size, managed};
  g_allocated += size;
  if (fgcheck::g_checks) fgcheck::on_alloc((uintptr_t)ptr, size, managed);
  *out = (CUdeviceptr)(uintptr_t)ptr;
  fg_stats::alloc(size);
  return CUDA_SUCCESS;
}

CUresult do_free(CUdeviceptr p) {
  auto it = g_allocs.find((uintptr_t)p);
  if (it == g_allocs.end()) return CUDA_ERROR_INVALID_VALUE;
  if (fgcheck::g_checks) {
    fgcheck::on_free((uintptr_t)p);
    // While checking, freed address space stays reserved (its memory is
    // released) for a while, so that a later allocation cannot take it and
    // turn a use after free into a valid access.
    static std::vector<std::pair<char*, size_t>> quarantine;
    static size_t held = 0;
    mmap(it->second.region, it->second.region_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
         -1, 0);
    quarantine.push_back({it->second.region, it->second.region_len});
    held += it->second.region_len;
    while (held > (size_t)(64ull << 30) && !quarantine.empty()) {
      munmap(quarantine.front().first, quarantine.front().second);
      held -= quarantine.front().second;
      quarantine.erase(quarantine.begin());
    }
  } else {
    munmap(it->second.region, it->second.region_len);
  }
  g_allocated -= it->second.size;
  g_allocs.erase(it);
  fg_stats::free_call();
  return CUDA_SUCCESS;
}

// The allocation whose region (guards included) holds address a.
const Alloc* alloc_near(uintptr_t a) {
  auto it = g_allocs.upper_bound(a + kPage + kAllocAlign + 1);
  while (it != g_allocs.begin()) {
    --it;
    const Alloc& al = it->second;
    if (a >= (uintptr_t)al.region && a < (uintptr_t)al.region + al.region_len) return &al;
    if ((uintptr_t)al.region + al.region_len + (1 << 30) < a) break;
  }
  return nullptr;
}

// Is [p, p+n) inside one device allocation or a module global?
bool device_range_ok(uintptr_t p, size_t n) {
  auto it = g_allocs.upper_bound(p);
  if (it != g_allocs.begin()) {
    --it;
    if (p >= it->first && p + n <= it->first + it->second.size) return true;
  }
  auto jt = g_ranges.upper_bound(p);
  if (jt != g_ranges.begin()) {
    --jt;
    if (p >= jt->first && p + n <= jt->first + jt->second) return true;
  }
  return false;
}

std::string describe_addr(uintptr_t a) {
  char buf[256];
  const Alloc* al = alloc_near(a);
  if (!al) {
    snprintf(buf, sizeof buf, "address 0x%llx is not in or next to any device allocation", (unsigned long long)a);
  } else if (a >= (uintptr_t)al->ptr + al->size) {
    snprintf(buf, sizeof buf, "address 0x%llx is %llu bytes past the end of the %zu-byte allocation at 0x%llx",
             (unsigned long long)a, (unsigned long long)(a - ((uintptr_t)al->ptr + al->size)), al->size,
             (unsigned long long)(uintptr_t)al->ptr);
  } else if (a < (uintptr_t)al->ptr) {
    snprintf(buf, sizeof buf, "address 0x%llx is %llu bytes before the %zu-byte allocation at 0x%llx",
             (unsigned long long)a, (unsigned long long)((uintptr_t)al->ptr - a), al->size,
             (unsigned long long)(uintptr_t)al->ptr);
  } else {
    snprintf(buf, sizeof buf, "address 0x%llx inside the %zu-byte allocation at 0x%llx", (unsigned long long)a,
             al->size, (unsigned long long)(uintptr_t)al->ptr);
  }
  return buf;
}

// ------------------------------------------------------------------ modules
struct Module;
struct Function {
  Module* mod;
  const FrostgradEmuKernel* k;
  int max_dyn_smem;
};
struct Module {
  void* handle;
  std::string path;
  FrostgradEmuModuleInfo info;
  std::map<std::string, Function*> funcs;
  bool ftz;
  bool checked;  // compiled with the checker's instrumentation
};

// ------------------------------------------------------------------ fibers
extern "C" void fg_emu_swap(void** save_sp, void* new_sp);
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save_sp, switches to new_sp and restores its registers. No
// signal-mask syscall, unlike swapcontext.
asm(R"(
  .text
  .globl fg_emu_swap
  .hidden fg_emu_swap
  .type fg_emu_swap,@function
fg_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fg_emu_swap, .-fg_emu_swap
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

enum FiberState { F_READY, F_RUN, F_BAR, F_WARP, F_DONE };

struct Fiber {
  void* sp;
  char* stack_lo;
  char* stack_hi;
  int state;
  FrostgradEmuThread t;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
};

struct WarpState {
  unsigned exists, exited;
  unsigned mask;
  int arrived, expected;
  unsigned gen;
  const char* what;
  unsigned long long slots[2][32];
};

struct Run {
  // launch
  const char* kernel;
  Module* mod;
  void (*entry)(void**);
  void** params;
  FrostgradEmuBlock blk;
  unsigned long long seed;  // 0: in-order scheduling
  bool shuffle;
  unsigned long long rng;
  // block
  int n;
  Fiber* fibers;
  Fiber* cur;
  void* sched_sp;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  WarpState warps[32];
  int bar_arrived;
  unsigned bar_gen;
  int bar_acc[2];
  int done;
  int first_exit;
  int queue[kMaxThreads];
  int qhead, qlen;
  bool failed;
  CUresult err;
  std::string msg;
  // FROSTGRAD_CUDA_EMU_CHECK: the launch is checked (instrumented module);
  // the failure was a synchronisation error (synccheck reports it); the
  // failure has been reported already (by the checker).
  bool checked;
  bool sync_fail;
  bool reported;
  const char* bar_site;  // call site of the first thread waiting at the current barrier
};

Run* g_run = nullptr;
std::vector<Fiber> g_fibers;
size_t g_stack_size = 0;

size_t stack_size() {
  if (!g_stack_size) {
    const char* e = getenv("FROSTGRAD_CUDA_EMU_STACK_KB");
    long kb = e ? atol(e) : 0;
    if (kb < 16) kb = 256;
    g_stack_size = round_up((size_t)kb * 1024, kPage);
  }
  return g_stack_size;
}

bool ensure_fibers(int n) {
  if ((int)g_fibers.size() >= n) return true;
  if (g_fibers.capacity() < (size_t)kMaxThreads) g_fibers.reserve(kMaxThreads);
  size_t ss = stack_size();
  while ((int)g_fibers.size() < n) {
    // A guard page below every stack turns an overflow into a reported fault.
    void* r = mmap(nullptr, ss + kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (r == MAP_FAILED) return false;
    if (mprotect((char*)r + kPage, ss, PROT_READ | PROT_WRITE) != 0) return false;
    Fiber f{};
    f.stack_lo = (char*)r + kPage;
    f.stack_hi = f.stack_lo + ss;
    g_fibers.push_back(f);
  }
  return true;
}

unsigned long long splitmix(unsigned long long& s) {
  unsigned long long z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void enqueue(Run* R, int i) {
  R->queue[(R->qhead + R->qlen) % kMaxThreads] = i;
  R->qlen++;
  R->fibers[i].state = F_READY;
}

// Enqueue a set of woken fibers, in thread order or (shuffle mode) at random.
void enqueue_set(Run* R, int* ids, int k) {
  if (R->shuffle) {
    for (int i = k - 1; i > 0; i--) {
      int j = (int)(splitmix(R->rng) % (unsigned long long)(i + 1));
      std::swap(ids[i], ids[j]);
    }
  }
  for (int i = 0; i < k; i++) enqueue(R, ids[i]);
}

void to_scheduler(Run* R, Fiber* f) {
#if defined(__x86_64__)
  fg_emu_swap(&f->sp, R->sched_sp);
#else
  swapcontext(&f->uc, &R->sched_uc);
#endif
}

std::string tid_str(const FrostgradEmuThread& t) {
  char b[64];
  snprintf(b, sizeof b, "(%u,%u,%u)", t.tid.x, t.tid.y, t.tid.z);
  return b;
}

[[noreturn]] void fail_fiber(CUresult err, const std::string& what) {
  Run* R = g_run;
  R->failed = true;
  R->err = err;
  R->msg = what;
  to_scheduler(R, R->cur);
  __builtin_unreachable();
}

[[noreturn]] void fail_sync(const std::string& what) {
  g_run->sync_fail = true;
  fail_fiber(CUDA_ERROR_LAUNCH_FAILED, what);
}

int rt_block_sync(int pred, int op) {
  Run* R = g_run;
  Fiber* f = R->cur;
  if (R->first_exit >= 0)
    fail_sync("thread " + tid_str(f->t) + " reached __syncthreads() but thread " +
                                             tid_str(R->fibers[R->first_exit].t) +
                                             " of the block has already exited; the barrier can never complete");
  int p = R->bar_gen & 1;
  if (R->bar_arrived == 0) R->bar_acc[p] = (op == 1) ? 1 : 0;
  if (op == 0) R->bar_acc[p] += pred;
  else if (op == 1) R->bar_acc[p] &= pred;
  else R->bar_acc[p] |= pred;
  R->bar_arrived++;
  f->state = F_BAR;
  if (R->bar_arrived == R->n) {
    R->bar_arrived = 0;
    R->bar_gen++;
    R->bar_site = nullptr;
    if (R->checked) fgcheck::barrier_done();
    int ids[kMaxThreads];
    int k = 0;
    for (int i = 0; i < R->n; i++)
      if (R->fibers[i].state == F_BAR) ids[k++] = i;
    enqueue_set(R, ids, k);
  }
  to_scheduler(R, f);
  return R->bar_acc[p];
}

const unsigned long long* rt_warp_exchange(unsigned mask, unsigned long long v, const char* what) {
  Run* R = g_run;
  Fiber* f = R->cur;
  WarpState* W = &R->warps[f->t.warp];
  unsigned lane = f->t.lane;
  char buf[256];
  if (!((mask >> lane) & 1u)) {
    snprintf(buf, sizeof buf, "%s by thread %s (lane %u) whose own lane is not in mask 0x%08x", what,
             tid_str(f->t).c_str(), lane, mask);
    fail_sync(buf);
  }
  // A mask naming lanes past the end of the block: a GPU's behaviour is
  // undefined; synccheck reports it (without it, those lanes are ignored).
  if (R->checked && fgcheck::on(fgcheck::SYNC) && (mask & ~W->exists)) {
    snprintf(buf, sizeof buf, "%s with mask 0x%08x by thread %s names lane %d of warp %u, which does not exist (the "
             "block has %d threads)", what, mask, tid_str(f->t).c_str(), __builtin_ctz(mask & ~W->exists), f->t.warp,
             R->n);
    fail_sync(buf);
  }
  unsigned part = mask & W->exists;
  if (part & W->exited) {
    snprintf(buf, sizeof buf, "%s with mask 0x%08x by thread %s, but lane %d of warp %u has already exited", what,
             mask, tid_str(f->t).c_str(), __builtin_ctz(part & W->exited), f->t.warp);
    fail_sync(buf);
  }
  int p = W->gen & 1;
  if (W->arrived == 0) {
    W->mask = mask;
    W->what = what;
    W->expected = __builtin_popcount(part);
    memset(W->slots[p], 0xFF, sizeof W->slots[p]);
  } else if (W->mask != mask || strcmp(W->what, what) != 0) {
    snprintf(buf, sizeof buf, "warp %u diverged: thread %s called %s with mask 0x%08x while other lanes wait in %s "
             "with mask 0x%08x", f->t.warp, tid_str(f->t).c_str(), what, mask, W->what, W->mask);
    fail_sync(buf);
  }
  W->slots[p][lane] = v;
  W->arrived++;
  f->state = F_WARP;
  if (W->arrived == W->expected) {
    W->arrived = 0;
    W->gen++;
    if (R->checked) fgcheck::warp_sync_done(f->t.warp);
    int ids[32];
    int k = 0;
    int base = (int)f->t.warp * 32;
    for (int i = base; i < base + 32 && i < R->n; i++)
      if (R->fibers[i].state == F_WARP && i != (int)f->t.linear) ids[k++] = i;
    if (R->shuffle) {
      ids[k++] = (int)f->t.linear;
      enqueue_set(R, ids, k);
      to_scheduler(R, f);
    } else {
      enqueue_set(R, ids, k);
      f->state = F_RUN;  // the last lane to arrive carries on without a switch
    }
  } else {
    to_scheduler(R, f);
  }
  return W->slots[p];
}

unsigned rt_active_mask() {
  Run* R = g_run;
  WarpState* W = &R->warps[R->cur->t.warp];
  return W->exists & ~W->exited;
}

[[noreturn]] void rt_trap(const char* what) { fail_fiber(CUDA_ERROR_LAUNCH_FAILED, what); }

// __syncthreads() in a checked build, with its call site: synccheck reports
// threads of a block waiting at different barriers (a GPU's behaviour is
// undefined; the emulation would otherwise let them meet).
int rt_block_sync_at(int pred, int op, const char* site) {
  Run* R = g_run;
  if (R->checked && fgcheck::on(fgcheck::SYNC) && site) {
    if (R->bar_arrived == 0 || !R->bar_site) {
      R->bar_site = site;
    } else if (strcmp(R->bar_site, site) != 0) {
      fail_sync("thread " + tid_str(R->cur->t) + " reached __syncthreads() at " + site + " while " +
                std::to_string(R->bar_arrived) + " thread(s) of its block wait at the one at " + R->bar_site);
    }
  }
  return rt_block_sync(pred, op);
}

const FrostgradEmuRuntime g_runtime = {FROSTGRAD_EMU_ABI, rt_block_sync,   rt_warp_exchange, rt_active_mask,
                                       rt_trap,           fgcheck::access, rt_block_sync_at};

void thread_exited(Run* R, Fiber* f) {
  f->state = F_DONE;
  R->done++;
  WarpState* W = &R->warps[f->t.warp];
  W->exited |= 1u << f->t.lane;
  if (R->first_exit < 0) R->first_exit = (int)f->t.linear;
  if (R->bar_arrived > 0) {
    char buf[256];
    snprintf(buf, sizeof buf, "thread %s exited while %d thread(s) of its block wait at __syncthreads()%s%s",
             tid_str(f->t).c_str(), R->bar_arrived, R->bar_site ? " at " : "", R->bar_site ? R->bar_site : "");
    fail_sync(buf);
  }
  if (W->arrived > 0 && ((W->mask >> f->t.lane) & 1u)) {
    char buf[256];
    snprintf(buf, sizeof buf, "thread %s exited while lanes of its warp wait for it in %s (mask 0x%08x)",
             tid_str(f->t).c_str(), W->what, W->mask);
    fail_sync(buf);
  }
}

void fiber_main() {
  Run* R = g_run;
  R->entry(R->params);
  Fiber* f = R->cur;
  thread_exited(R, f);
  to_scheduler(R, f);
  __builtin_unreachable();
}

void start_fiber(Fiber* f) {
#if defined(__x86_64__)
  uintptr_t top = (uintptr_t)f->stack_hi & ~(uintptr_t)15;
  void** sp = (void**)(top - 64);
  for (int i = 0; i < 6; i++) sp[i] = nullptr;  // r15 r14 r13 r12 rbx rbp
  sp[6] = (void*)&fiber_main;                    // "return address"
  sp[7] = nullptr;
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = (size_t)(f->stack_hi - f->stack_lo);
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, (void (*)())fiber_main, 0);
#endif
}

void run_block(Run* R) {
  const dim3& bd = R->blk.bdim;
  for (int i = 0; i < R->n; i++) {
    Fiber* f = &R->fibers[i];
    f->state = F_READY;
    f->t.linear = (unsigned)i;
    f->t.tid = uint3{(unsigned)i % bd.x, ((unsigned)i / bd.x) % bd.y, (unsigned)i / (bd.x * bd.y)};
    f->t.lane = (unsigned)i % 32;
    f->t.warp = (unsigned)i / 32;
    start_fiber(f);
  }
  int nw = (R->n + 31) / 32;
  for (int w = 0; w < nw; w++) {
    WarpState* W = &R->warps[w];
    int lanes = std::min(32, R->n - w * 32);
    W->exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    W->exited = 0;
    W->arrived = 0;
    W->gen = 0;
  }
  R->bar_arrived = 0;
  R->bar_gen = 0;
  R->bar_site = nullptr;
  R->done = 0;
  R->first_exit = -1;
  R->qhead = 0;
  R->qlen = 0;
  {
    int ids[kMaxThreads];
    for (int i = 0; i < R->n; i++) ids[i] = i;
    enqueue_set(R, ids, R->n);
  }
  FrostgradEmuThread** slot = R->mod->info.cur_thread;
  while (!R->failed && R->qlen > 0) {
    int i = R->queue[R->qhead];
    R->qhead = (R->qhead + 1) % kMaxThreads;
    R->qlen--;
    Fiber* f = &R->fibers[i];
    R->cur = f;
    f->state = F_RUN;
    *slot = &f->t;
    if (R->checked) fgcheck::set_thread(f->t.linear, f->t.tid, f->stack_lo, f->stack_hi);
#if defined(__x86_64__)
    fg_emu_swap(&R->sched_sp, f->sp);
#else
    swapcontext(&R->sched_uc, &f->uc);
#endif
  }
  if (!R->failed && R->done != R->n) {
    int bar = 0, warp = 0;
    const char* what = "";
    for (int i = 0; i < R->n; i++) {
      if (R->fibers[i].state == F_BAR) bar++;
      if (R->fibers[i].state == F_WARP) {
        warp++;
        what = R->warps[R->fibers[i].t.warp].what;
      }
    }
    char buf[256];
    snprintf(buf, sizeof buf, "deadlock: %d thread(s) wait at __syncthreads() while %d wait in %s", bar, warp, what);
    R->failed = true;
    R->err = CUDA_ERROR_LAUNCH_FAILED;
    R->msg = buf;
    R->sync_fail = true;
    R->cur = nullptr;
  }
}

// ------------------------------------------------------------------ faults
thread_local sigjmp_buf t_jmp;
thread_local volatile sig_atomic_t t_in_launch = 0;
thread_local int t_sig = 0;
thread_local uintptr_t t_addr = 0;
struct sigaction g_old_segv, g_old_bus, g_old_fpe, g_old_ill;
bool g_handlers = false;

void fault_handler(int sig, siginfo_t* si, void* uc) {
  if (t_in_launch) {
    t_in_launch = 0;
    t_sig = sig;
    t_addr = (uintptr_t)si->si_addr;
    siglongjmp(t_jmp, 1);
  }
  // Not ours: restore the previous disposition and let the fault happen again.
  struct sigaction* old = sig == SIGSEGV ? &g_old_segv : sig == SIGBUS ? &g_old_bus : sig == SIGFPE ? &g_old_fpe : &g_old_ill;
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction) {
      old->sa_sigaction(sig, si, uc);
      return;
    }
  } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
    old->sa_handler(sig);
    return;
  }
  sigaction(sig, old, nullptr);
}

void install_handlers() {
  if (g_handlers) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fault_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
  sigaction(SIGFPE, &sa, &g_old_fpe);
  sigaction(SIGILL, &sa, &g_old_ill);
  g_handlers = true;
}

thread_local char* t_altstack = nullptr;

// ------------------------------------------------------------------ launch
std::vector<char*> g_dsmem;  // [base, size]: dynamic shared memory region ending at a guard page
char* g_dsmem_base = nullptr;
size_t g_dsmem_len = 0;
unsigned long long g_launch_count = 0;

char* dyn_smem_for(size_t bytes) {
  if (!g_dsmem_base) {
    g_dsmem_len = round_up(kOptinSmemLimit + kPage, kPage);
    void* r = mmap(nullptr, g_dsmem_len + kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return nullptr;
    if (mprotect(r, g_dsmem_len, PROT_READ | PROT_WRITE) != 0) return nullptr;
    g_dsmem_base = (char*)r;
  }
  char* end = g_dsmem_base + g_dsmem_len;
  return (char*)((uintptr_t)(end - bytes) & ~(uintptr_t)15);
}

bool check_canaries(std::string& msg) {
  for (auto& kv : g_allocs) {
    const Alloc& a = kv.second;
    const unsigned char* tail = (const unsigned char*)a.ptr + a.size;
    const unsigned char* end = (const unsigned char*)a.body + a.body_len;
    for (const unsigned char* p = tail; p < end; p++)
      if (*p != 0xFF) {
        msg = "out-of-bounds write detected after the launch: " + describe_addr((uintptr_t)p) +
              " was modified (a write past the end that did not reach the guard page)";
        return false;
      }
    const unsigned char* front = (const unsigned char*)a.ptr;
    const unsigned char* fs = std::max((const unsigned char*)a.body, front - kCanaryFront);
    for (const unsigned char* p = fs; p < front; p++)
      if (*p != 0xFF) {
        msg = "out-of-bounds write detected after the launch: " + describe_addr((uintptr_t)p) + " was modified";
        return false;
      }
  }
  return true;
}

CUresult launch(Function* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                unsigned smem, void** params) {
  Module* m = fn->mod;
  size_t static_smem = (size_t)(m->info.shared_end - m->info.shared_begin);
  unsigned long long threads = (unsigned long long)bx * by * bz;
  if (!gx || !gy || !gz || !bx || !by || !bz) return CUDA_ERROR_INVALID_VALUE;
  if (threads > (unsigned long long)kMaxThreads || bz > 64 || gy > 65535 || gz > 65535 || gx > 0x7fffffffu)
    return CUDA_ERROR_INVALID_VALUE;
  if (static_smem + smem > kStaticSmemLimit && smem > (unsigned)fn->max_dyn_smem) {
    emu_log("launch of '%s' asks for %u bytes of dynamic shared memory; more than 48 KiB needs "
            "cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)", fn->k->name, smem);
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (static_smem + smem > kOptinSmemLimit) return CUDA_ERROR_INVALID_VALUE;
  if (!ensure_fibers((int)threads)) return CUDA_ERROR_OUT_OF_MEMORY;

  static Run R;  // protected by g_mu; big (queue), so not on the stack
  R.kernel = fn->k->name;
  R.mod = m;
  R.entry = fn->k->entry;
  R.params = params;
  R.blk.gdim = dim3(gx, gy, gz);
  R.blk.bdim = dim3(bx, by, bz);
  R.n = (int)threads;
  R.fibers = g_fibers.data();
  R.failed = false;
  R.err = CUDA_SUCCESS;
  R.msg.clear();
  R.cur = nullptr;
  R.sync_fail = false;
  R.reported = false;
  R.bar_site = nullptr;
  R.checked = fgcheck::g_checks && m->checked;
  if (fgcheck::g_checks && !m->checked) {
    static bool told = false;
    if (!told) emu_log("FROSTGRAD_CUDA_EMU_CHECK: kernel '%s' was compiled without the checker's instrumentation "
                       "(before the variable was set?): its launches are not checked", fn->k->name);
    told = true;
  }
  const char* sh = getenv("FROSTGRAD_CUDA_EMU_SHUFFLE");
  R.shuffle = sh && *sh;
  R.seed = R.shuffle ? strtoull(sh, nullptr, 0) : 0;
  unsigned long long launch_no = g_launch_count++;

  char* dsm = dyn_smem_for(smem);
  if (!dsm) return CUDA_ERROR_OUT_OF_MEMORY;
  *m->info.dyn_smem = dsm;
  *m->info.cur_block = &R.blk;
  size_t dsm_len = (size_t)(g_dsmem_base + g_dsmem_len - dsm);
  if (R.checked)
    fgcheck::launch_begin({fn->k->name, m->handle, m->info.shared_begin, m->info.shared_end, dsm, smem, dim3(bx, by, bz),
                           dim3(gx, gy, gz)});

  install_handlers();
  if (!t_altstack) t_altstack = (char*)malloc(256 * 1024);
  stack_t ss{}, old_ss{};
  ss.ss_sp = t_altstack;
  ss.ss_size = 256 * 1024;
  ss.ss_flags = 0;
  sigaltstack(&ss, &old_ss);

  unsigned mxcsr_saved = 0;
#if defined(__x86_64__)
  if (m->ftz) {
    mxcsr_saved = __builtin_ia32_stmxcsr();
    __builtin_ia32_ldmxcsr(mxcsr_saved | 0x8040);  // FTZ | DAZ
  }
#endif
  g_run = &R;
  if (sigsetjmp(t_jmp, 1) == 0) {
    t_in_launch = 1;
    for (unsigned z = 0; z < gz && !R.failed; z++)
      for (unsigned y = 0; y < gy && !R.failed; y++)
        for (unsigned x = 0; x < gx && !R.failed; x++) {
          R.blk.bid = uint3{x, y, z};
          R.rng = R.seed ^ (launch_no * 0x9e3779b97f4a7c15ull) ^
                  ((((unsigned long long)z * gy + y) * gx + x) * 0xd1b54a32d192ed03ull);
          if (static_smem) memset(m->info.shared_begin, 0xFF, static_smem);
          memset(dsm, 0xFF, dsm_len);
          if (R.checked) fgcheck::block_begin(R.blk.bid);
          run_block(&R);
        }
    t_in_launch = 0;
  } else {
    // A fault inside the kernel (or the emulator while it ran the kernel).
    R.failed = true;
    char buf[512];
    std::string where = R.cur ? " thread " + tid_str(R.cur->t) : "";
    uintptr_t a = t_addr;
    bool stack_overflow = false;
    for (auto& f : g_fibers)
      if (a >= (uintptr_t)f.stack_lo - kPage && a < (uintptr_t)f.stack_lo) stack_overflow = true;
    if (t_sig == SIGFPE) {
      R.err = CUDA_ERROR_LAUNCH_FAILED;
      snprintf(buf, sizeof buf, "arithmetic exception (integer division by zero?)");
    } else if (t_sig == SIGILL) {
      R.err = CUDA_ERROR_ILLEGAL_INSTRUCTION;
      snprintf(buf, sizeof buf, "illegal instruction at 0x%llx", (unsigned long long)a);
    } else if (stack_overflow) {
      R.err = CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
      snprintf(buf, sizeof buf, "fiber stack overflow (raise FROSTGRAD_CUDA_EMU_STACK_KB, now %zu)", stack_size() / 1024);
    } else {
      R.err = CUDA_ERROR_ILLEGAL_ADDRESS;
      snprintf(buf, sizeof buf, "illegal memory access: %s", describe_addr(a).c_str());
    }
    R.msg = buf;
    (void)where;
  }
  g_run = nullptr;
#if defined(__x86_64__)
  if (m->ftz) __builtin_ia32_ldmxcsr(mxcsr_saved);
#endif
  sigaltstack(&old_ss, nullptr);
  int hazard = R.checked ? fgcheck::launch_end() : 0;

  if (R.failed) {
    std::string who = "kernel '" + std::string(R.kernel) + "' block (" + std::to_string(R.blk.bid.x) + "," +
                      std::to_string(R.blk.bid.y) + "," + std::to_string(R.blk.bid.z) + ")";
    if (R.cur) who += " thread " + tid_str(R.cur->t);
    if (R.reported) {
    } else if (R.checked && R.sync_fail && fgcheck::on(fgcheck::SYNC)) {
      fgcheck::report("synccheck", who + ": " + R.msg);
    } else {
      emu_log("%s: %s", who.c_str(), R.msg.c_str());
    }
    g_sticky = R.err;
    return R.err;
  }
  if (hazard) {
    g_sticky = (CUresult)hazard;
    return g_sticky;
  }
  std::string msg;
  if (!check_canaries(msg)) {
    emu_log("kernel '%s' (grid %u,%u,%u block %u,%u,%u): %s", R.kernel, gx, gy, gz, bx, by, bz, msg.c_str());
    g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
    return g_sticky;
  }
  return CUDA_SUCCESS;
}

CUresult load_image(Module** out, const char* image) {
  if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
  static const char kMagic[] = "//frostgrad-cuda-emu image";
  if (strncmp(image, kMagic, sizeof kMagic - 1) != 0) {
    emu_log("cuModuleLoadData: the image is not one made by the frostgrad NVRTC emulation (real PTX/cubin cannot run "
            "on the host)");
    return CUDA_ERROR_INVALID_PTX;
  }
  std::string so;
  bool ftz = false;
  bool checked = false;
  int abi = -1;
  const char* p = image;
  while (*p) {
    const char* e = strchr(p, '\n');
    std::string line = e ? std::string(p, e) : std::string(p);
    if (line.rfind(".so ", 0) == 0) so = line.substr(4);
    else if (line.rfind(".abi ", 0) == 0) abi = atoi(line.c_str() + 5);
    else if (line == ".ftz 1") ftz = true;
    else if (line == ".check 1") checked = true;
    if (!e) break;
    p = e + 1;
  }
  if (abi != FROSTGRAD_EMU_ABI || so.empty()) {
    emu_log("cuModuleLoadData: image ABI %d does not match the driver's %d", abi, FROSTGRAD_EMU_ABI);
    return CUDA_ERROR_INVALID_IMAGE;
  }
  void* h = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    emu_log("cuModuleLoadData: %s", dlerror());
    return CUDA_ERROR_INVALID_IMAGE;
  }
  auto init = (FrostgradEmuModuleInitFn)dlsym(h, FROSTGRAD_EMU_MODULE_INIT);
  Module* m = new Module();
  m->handle = h;
  m->path = so;
  m->ftz = ftz;
  m->checked = checked;
  if (!init || init(&g_runtime, &m->info) != 0 || m->info.abi != FROSTGRAD_EMU_ABI) {
    emu_log("cuModuleLoadData: %s is not a compatible kernel module", so.c_str());
    dlclose(h);
    delete m;
    return CUDA_ERROR_INVALID_IMAGE;
  }
  if (checked && fgcheck::g_checks) fgcheck::on_module(h, so.c_str(), m->info.shared_begin, m->info.shared_end);
  size_t static_smem = (size_t)(m->info.shared_end - m->info.shared_begin);
  for (const FrostgradEmuKernel* k = m->info.kernels; k->name; k++)
    m->funcs[k->name] = new Function{m, k, (int)(kStaticSmemLimit - std::min(static_smem, kStaticSmemLimit))};
  *out = m;
  return CUDA_SUCCESS;
}

}  // namespace

// The checker's entry points into the launch (see check.h).
[[noreturn]] void fg_emu_abort_launch(int err) {
  g_run->reported = true;
  fail_fiber((CUresult)err, "");
}
bool fg_emu_host_range_ok(uintptr_t p, size_t n) {
  auto jt = g_ranges.upper_bound(p);
  if (jt == g_ranges.begin()) return false;
  --jt;
  return p >= jt->first && p + n <= jt->first + jt->second;
}

namespace {

#define CHECK_INIT() \
  do { \
    if (!g_inited) return CUDA_ERROR_NOT_INITIALIZED; \
  } while (0)
#define CHECK_CTX() \
  do { \
    if (!g_inited) return CUDA_ERROR_NOT_INITIALIZED; \
    if (!t_cur) return CUDA_ERROR_INVALID_CONTEXT; \
  } while (0)
#define CHECK_STICKY() \
  do { \
    if (g_sticky) return g_sticky; \
  } while (0)
#define LOCK std::lock_guard<std::recursive_mutex> lock_(g_mu)

struct ErrName {
  int code;
  const char* name;
};
const ErrName kErrors[] = {
#define FG_ERR(c, n) {c, #n},
#include "cuda_errors.inc"
#undef FG_ERR
};

}  // namespace

// ====================================================================== API
EXPORT CUresult cuInit(unsigned flags) {
  LOCK;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  std::string check_err;
  if (!fgcheck::configure(&check_err)) {
    emu_log("%s", check_err.c_str());
    return CUDA_ERROR_INVALID_VALUE;
  }
  g_inited = true;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int* v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  *v = 13000;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
  if (!s) return CUDA_ERROR_INVALID_VALUE;
  for (auto& x : kErrors)
    if (x.code == e) {
      *s = x.name;
      return CUDA_SUCCESS;
    }
  *s = nullptr;
  return CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuGetErrorString(CUresult e, const char** s) {
  if (!s) return CUDA_ERROR_INVALID_VALUE;
  switch (e) {
    case CUDA_SUCCESS: *s = "no error"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument"; return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_INITIALIZED: *s = "initialization error"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_CONTEXT: *s = "invalid device context"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_PTX: *s = "a PTX JIT compilation failed"; return CUDA_SUCCESS;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; return CUDA_SUCCESS;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "unspecified launch failure"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_SUPPORTED: *s = "operation not supported"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; return CUDA_SUCCESS;
    default: break;
  }
  return cuGetErrorName(e, s);
}

EXPORT CUresult cuDeviceGetCount(int* n) {
  CHECK_INIT();
  if (!n) return CUDA_ERROR_INVALID_VALUE;
  *n = 1;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  CHECK_INIT();
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
  CHECK_INIT();
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  snprintf(name, (size_t)len, "%s", "frostgrad CUDA emulation (H200-like)");
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
  CHECK_INIT();
  if (!uuid) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  static const unsigned char u[16] = {0x66, 0x72, 0x6f, 0x73, 0x74, 0x67, 0x72, 0x61,
                                      0x64, 0x2d, 0x65, 0x6d, 0x75, 0x00, 0x00, 0x01};
  memcpy(uuid, u, 16);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }
EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
  CHECK_INIT();
  if (!bytes) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = kTotalMem;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice d) {
  CHECK_INIT();
  if (!major || !minor) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  *major = 9;
  *minor = 0;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
  CHECK_INIT();
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  int r;
  switch (attr) {
    case 1: r = 1024; break;                 // MAX_THREADS_PER_BLOCK
    case 2: case 3: r = 1024; break;         // MAX_BLOCK_DIM_X/Y
    case 4: r = 64; break;                   // MAX_BLOCK_DIM_Z
    case 5: r = 2147483647; break;           // MAX_GRID_DIM_X
    case 6: case 7: r = 65535; break;        // MAX_GRID_DIM_Y/Z
    case 8: r = 49152; break;                // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: r = 65536; break;                // TOTAL_CONSTANT_MEMORY
    case 10: r = 32; break;                  // WARP_SIZE
    case 11: r = 2147483647; break;          // MAX_PITCH
    case 12: r = 65536; break;               // MAX_REGISTERS_PER_BLOCK
    case 13: r = 1980000; break;             // CLOCK_RATE (kHz)
    case 14: r = 512; break;                 // TEXTURE_ALIGNMENT
    case 15: r = 1; break;                   // GPU_OVERLAP
    case 16: r = 132; break;                 // MULTIPROCESSOR_COUNT
    case 17: r = 0; break;                   // KERNEL_EXEC_TIMEOUT
    case 18: r = 0; break;                   // INTEGRATED
    case 19: r = 1; break;                   // CAN_MAP_HOST_MEMORY
    case 20: r = 0; break;                   // COMPUTE_MODE default
    case 21: r = 131072; break;
    case 22: r = 131072; break;
    case 23: r = 65536; break;
    case 24: case 25: case 26: r = 16384; break;
    case 27: case 28: r = 32768; break;
    case 29: r = 2048; break;
    case 30: r = 512; break;                 // SURFACE_ALIGNMENT
    case 31: r = 1; break;                   // CONCURRENT_KERNELS
    case 32: r = 1; break;                   // ECC_ENABLED
    case 33: case 34: r = 0; break;          // PCI bus / device
    case 35: r = 0; break;                   // TCC_DRIVER
    case 36: r = 2619000; break;             // MEMORY_CLOCK_RATE (kHz)
    case 37: r = 6144; break;                // GLOBAL_MEMORY_BUS_WIDTH
    case 38: r = 52428800; break;            // L2_CACHE_SIZE
    case 39: r = 2048; break;                // MAX_THREADS_PER_MULTIPROCESSOR
    case 40: r = 3; break;                   // ASYNC_ENGINE_COUNT
    case 41: r = 1; break;                   // UNIFIED_ADDRESSING
    case 50: r = 0; break;                   // PCI_DOMAIN_ID
    case 51: r = 32; break;                  // TEXTURE_PITCH_ALIGNMENT
    case 75: r = 9; break;                   // COMPUTE_CAPABILITY_MAJOR
    case 76: r = 0; break;                   // COMPUTE_CAPABILITY_MINOR
    case 78: r = 1; break;                   // STREAM_PRIORITIES_SUPPORTED
    case 79: case 80: r = 1; break;          // GLOBAL/LOCAL_L1_CACHE_SUPPORTED
    case 81: r = 233472; break;              // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    case 82: r = 65536; break;               // MAX_REGISTERS_PER_MULTIPROCESSOR
    case 83: r = 1; break;                   // MANAGED_MEMORY
    case 84: r = 0; break;                   // MULTI_GPU_BOARD
    case 87: r = 2; break;                   // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
    case 89: r = 1; break;                   // CONCURRENT_MANAGED_ACCESS
    case 90: r = 1; break;                   // COMPUTE_PREEMPTION_SUPPORTED
    case 95: r = 0; break;                   // COOPERATIVE_LAUNCH: grid sync cannot be emulated
    case 97: r = 232448; break;              // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 106: r = 32; break;                 // MAX_BLOCKS_PER_MULTIPROCESSOR
    case 111: r = 1024; break;               // RESERVED_SHARED_MEMORY_PER_BLOCK
    case 115: r = 1; break;                  // MEMORY_POOLS_SUPPORTED (cuMemAllocAsync)
    case 126: r = 4; break;                  // MEM_SYNC_DOMAIN_COUNT
    case 131: case 134: r = -1; break;       // NUMA ids
    default:
      if (attr < 1 || attr >= 148) return CUDA_ERROR_INVALID_VALUE;
      r = 0;  // texture/surface limits, interop and other features the emulation does not offer
      if (attr >= 42 && attr <= 74) r = 16384;
      break;
  }
  *v = r;
  return CUDA_SUCCESS;
}

// --------------------------------------------------------------- contexts
EXPORT CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
  LOCK;
  CHECK_INIT();
  if (!ctx) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  g_primary.primary = true;
  g_primary.refs++;
  *ctx = &g_primary;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
  LOCK;
  CHECK_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (g_primary.refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (--g_primary.refs == 0) g_sticky = CUDA_SUCCESS;  // the context is gone, and its error with it
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) {
  LOCK;
  CHECK_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  g_sticky = CUDA_SUCCESS;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
  CHECK_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
  *flags = g_primary.flags;
  *active = g_primary.refs > 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice d, unsigned flags) {
  CHECK_INIT();
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  g_primary.flags = flags;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxCreate_v4(void** ctx, void* /*params*/, unsigned flags, CUdevice d) {
  LOCK;
  CHECK_INIT();
  if (!ctx) return CUDA_ERROR_INVALID_VALUE;
  if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
  Ctx* c = new Ctx();
  c->flags = flags;
  c->refs = 1;
  *ctx = c;
  t_cur = c;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxCreate_v2(void** ctx, unsigned flags, CUdevice d) { return cuCtxCreate_v4(ctx, nullptr, flags, d); }
EXPORT CUresult cuCtxDestroy_v2(void* ctx) {
  LOCK;
  CHECK_INIT();
  Ctx* c = (Ctx*)ctx;
  if (!c || c == &g_primary) return CUDA_ERROR_INVALID_CONTEXT;
  if (t_cur == c) t_cur = nullptr;
  delete c;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetCurrent(void* ctx) {
  CHECK_INIT();
  t_cur = (Ctx*)ctx;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetCurrent(void** ctx) {
  CHECK_INIT();
  if (!ctx) return CUDA_ERROR_INVALID_VALUE;
  *ctx = t_cur;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
EXPORT CUresult cuCtxPopCurrent_v2(void** ctx) {
  CHECK_INIT();
  if (ctx) *ctx = t_cur;
  t_cur = nullptr;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetDevice(CUdevice* d) {
  CHECK_CTX();
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  *d = 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSynchronize() {
  LOCK;
  CHECK_CTX();
  fg_stats::sync();
  return g_sticky;
}
EXPORT CUresult cuCtxSetFlags(unsigned flags) {
  CHECK_CTX();
  t_cur->flags = flags;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetFlags(unsigned* flags) {
  CHECK_CTX();
  if (!flags) return CUDA_ERROR_INVALID_VALUE;
  *flags = t_cur->flags;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetLimit(size_t* v, int limit) {
  CHECK_CTX();
  if (!v || limit < 0 || limit > 6) return CUDA_ERROR_INVALID_VALUE;
  *v = g_limits[limit];
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetLimit(int limit, size_t v) {
  CHECK_CTX();
  if (limit < 0 || limit > 6) return CUDA_ERROR_INVALID_VALUE;
  g_limits[limit] = v;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetCacheConfig(int* c) {
  CHECK_CTX();
  if (!c) return CUDA_ERROR_INVALID_VALUE;
  *c = 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetCacheConfig(int) {
  CHECK_CTX();
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
  CHECK_CTX();
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetApiVersion(void*, unsigned* v) {
  CHECK_INIT();
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  *v = 13000;
  return CUDA_SUCCESS;
}

// --------------------------------------------------------------- memory
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  return do_alloc(p, n, false);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void* /*stream*/) { return cuMemAlloc_v2(p, n); }
EXPORT CUresult cuMemAllocManaged(CUdeviceptr* p, size_t n, unsigned) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  return do_alloc(p, n, true);
}
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* p, size_t* pitch, size_t w, size_t h, unsigned elem) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  if (!pitch || (elem != 4 && elem != 8 && elem != 16)) return CUDA_ERROR_INVALID_VALUE;
  *pitch = round_up(w, 512);
  return do_alloc(p, *pitch * h, false);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  return do_free(p);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
EXPORT CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
  LOCK;
  CHECK_CTX();
  if (free_b) *free_b = kTotalMem - g_allocated;
  if (total) *total = kTotalMem;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
  LOCK;
  CHECK_CTX();
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  void* m = aligned_alloc(4096, round_up(n ? n : 1, 4096));
  if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
  *p = m;
  g_ranges[(uintptr_t)m] = n;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocHost_v2(void** p, size_t n) { return cuMemHostAlloc(p, n, 0); }
EXPORT CUresult cuMemFreeHost(void* p) {
  LOCK;
  CHECK_INIT();
  auto it = g_ranges.find((uintptr_t)p);
  if (it == g_ranges.end()) return CUDA_ERROR_INVALID_VALUE;
  g_ranges.erase(it);
  free(p);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* d, void* p, unsigned) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  *d = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr, size_t, ...) {
  CHECK_CTX();
  return g_sticky;
}
EXPORT CUresult cuMemAdvise_v2(CUdeviceptr, size_t, ...) {
  CHECK_CTX();
  return CUDA_SUCCESS;
}

static CUresult copy(void* dst, const void* src, size_t n, bool dst_dev, bool src_dev) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  if (n == 0) return CUDA_SUCCESS;
  if (!dst || !src) return CUDA_ERROR_INVALID_VALUE;
  if (dst_dev && !device_range_ok((uintptr_t)dst, n)) {
    emu_log("copy of %zu bytes to device %s", n, describe_addr((uintptr_t)dst).c_str());
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (src_dev && !device_range_ok((uintptr_t)src, n)) {
    emu_log("copy of %zu bytes from device %s", n, describe_addr((uintptr_t)src).c_str());
    return CUDA_ERROR_INVALID_VALUE;
  }
  memmove(dst, src, n);
  if (fgcheck::g_checks && dst_dev) {
    if (src_dev) fgcheck::on_copy((uintptr_t)dst, (uintptr_t)src, n);
    else fgcheck::on_write((uintptr_t)dst, n);
  }
  return CUDA_SUCCESS;
}
// Counted for FROSTGRAD_CUDA_EMU_STATS: the synchronous host copies are also
// host waits (the host blocks until the stream has drained).
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) {
  fg_stats::htod(n);
  fg_stats::sync();
  return copy((void*)d, h, n, true, false);
}
EXPORT CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) {
  fg_stats::dtoh(n);
  fg_stats::sync();
  return copy(h, (void*)d, n, false, true);
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr a, CUdeviceptr b, size_t n) {
  fg_stats::dtod(n);
  return copy((void*)a, (void*)b, n, true, true);
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void*) {
  fg_stats::htod(n);
  return copy((void*)d, h, n, true, false);
}
// Into pageable memory (anything but cuMemHostAlloc's), CUDA returns only
// once the copy is done: a host wait like the synchronous copy.
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void*) {
  fg_stats::dtoh(n);
  bool pinned;
  {
    LOCK;
    auto it = g_ranges.upper_bound((uintptr_t)h);
    pinned = it != g_ranges.begin() && (uintptr_t)h < std::prev(it)->first + std::prev(it)->second;
  }
  if (!pinned) fg_stats::sync();
  return copy(h, (void*)d, n, false, true);
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr a, CUdeviceptr b, size_t n, void*) { return cuMemcpyDtoD_v2(a, b, n); }
EXPORT CUresult cuMemcpy(CUdeviceptr a, CUdeviceptr b, size_t n) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  memmove((void*)a, (const void*)b, n);
  if (fgcheck::g_checks) fgcheck::on_copy((uintptr_t)a, (uintptr_t)b, n);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyAsync(CUdeviceptr a, CUdeviceptr b, size_t n, void*) { return cuMemcpy(a, b, n); }
EXPORT CUresult cuMemcpyPeer(CUdeviceptr a, void*, CUdeviceptr b, void*, size_t n) { return cuMemcpyDtoD_v2(a, b, n); }
EXPORT CUresult cuMemcpyPeerAsync(CUdeviceptr a, void*, CUdeviceptr b, void*, size_t n, void*) {
  return cuMemcpyDtoD_v2(a, b, n);
}

template <class T>
static CUresult memset_n(CUdeviceptr d, T v, size_t n) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  if (n == 0) return CUDA_SUCCESS;
  if (d % sizeof(T) != 0 || !device_range_ok((uintptr_t)d, n * sizeof(T))) {
    emu_log("memset of %zu bytes at %s", n * sizeof(T), describe_addr((uintptr_t)d).c_str());
    return CUDA_ERROR_INVALID_VALUE;
  }
  fg_stats::memset_call();
  T* p = (T*)d;
  if (sizeof(T) == 1) memset(p, (int)v, n);
  else for (size_t i = 0; i < n; i++) p[i] = v;
  if (fgcheck::g_checks) fgcheck::on_write((uintptr_t)d, n * sizeof(T));
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_n<unsigned char>(d, v, n); }
EXPORT CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_n<unsigned short>(d, v, n); }
EXPORT CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { return memset_n<unsigned>(d, v, n); }
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { return memset_n<unsigned char>(d, v, n); }
EXPORT CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, void*) {
  return memset_n<unsigned short>(d, v, n);
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void*) { return memset_n<unsigned>(d, v, n); }

// --------------------------------------------------------------- streams & events
EXPORT CUresult cuStreamCreate(void** s, unsigned flags) {
  LOCK;
  CHECK_CTX();
  if (!s) return CUDA_ERROR_INVALID_VALUE;
  *s = new Stream{t_cur, flags, 0};
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreateWithPriority(void** s, unsigned flags, int prio) {
  CUresult r = cuStreamCreate(s, flags);
  if (r == CUDA_SUCCESS) ((Stream*)*s)->priority = prio;
  return r;
}
EXPORT CUresult cuStreamDestroy_v2(void* s) {
  LOCK;
  CHECK_INIT();
  if (!s) return CUDA_ERROR_INVALID_HANDLE;
  delete (Stream*)s;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(void*) {
  LOCK;
  CHECK_CTX();
  fg_stats::sync();
  return g_sticky;
}
EXPORT CUresult cuStreamQuery(void*) {
  LOCK;
  CHECK_CTX();
  return g_sticky;
}
EXPORT CUresult cuStreamWaitEvent(void*, void* e, unsigned) {
  CHECK_CTX();
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamGetPriority(void* s, int* p) {
  CHECK_CTX();
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  *p = s ? ((Stream*)s)->priority : 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamGetFlags(void* s, unsigned* f) {
  CHECK_CTX();
  if (!f) return CUDA_ERROR_INVALID_VALUE;
  *f = s ? ((Stream*)s)->flags : 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamIsCapturing(void*, int* status) {
  CHECK_CTX();
  if (!status) return CUDA_ERROR_INVALID_VALUE;
  *status = 0;  // CU_STREAM_CAPTURE_STATUS_NONE
  return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchHostFunc(void*, void (*fn)(void*), void* data) {
  CHECK_CTX();
  if (!fn) return CUDA_ERROR_INVALID_VALUE;
  {
    LOCK;
    if (g_sticky) return g_sticky;
  }
  fn(data);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventCreate(void** e, unsigned flags) {
  CHECK_CTX();
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  *e = new Event{flags};
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(void* e) {
  CHECK_INIT();
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  delete (Event*)e;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(void* e, void*) {
  LOCK;
  CHECK_CTX();
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  ((Event*)e)->recorded = true;
  ((Event*)e)->t = now_ms();
  return g_sticky;
}
EXPORT CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
EXPORT CUresult cuEventQuery(void* e) {
  LOCK;
  CHECK_CTX();
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  return g_sticky;
}
EXPORT CUresult cuEventSynchronize(void* e) {
  CUresult r = cuEventQuery(e);
  if (e) fg_stats::sync();
  return r;
}
EXPORT CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
  CHECK_CTX();
  if (!ms) return CUDA_ERROR_INVALID_VALUE;
  Event* s = (Event*)a;
  Event* e = (Event*)b;
  if (!s || !e || (s->flags & 2) || (e->flags & 2) || !s->recorded || !e->recorded) return CUDA_ERROR_INVALID_HANDLE;
  *ms = (float)(e->t - s->t);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// --------------------------------------------------------------- modules
EXPORT CUresult cuModuleLoadData(void** mod, const void* image) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  return load_image((Module**)mod, (const char*)image);
}
EXPORT CUresult cuModuleLoadDataEx(void** mod, const void* image, unsigned, void*, void*) {
  return cuModuleLoadData(mod, image);
}
EXPORT CUresult cuModuleLoad(void** mod, const char* path) {
  if (!path) return CUDA_ERROR_INVALID_VALUE;
  FILE* f = fopen(path, "rb");
  if (!f) return CUDA_ERROR_FILE_NOT_FOUND;
  std::string s;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, k);
  fclose(f);
  return cuModuleLoadData(mod, s.c_str());
}
EXPORT CUresult cuModuleUnload(void* mod) {
  LOCK;
  CHECK_INIT();
  Module* m = (Module*)mod;
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  // The shared object stays loaded: CUfunction handles may outlive the module
  // in careless code, and dlclose buys nothing in a test process.
  return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(void** fn, void* mod, const char* name) {
  LOCK;
  CHECK_CTX();
  Module* m = (Module*)mod;
  if (!fn || !name) return CUDA_ERROR_INVALID_VALUE;
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  auto it = m->funcs.find(name);
  if (it == m->funcs.end()) return CUDA_ERROR_NOT_FOUND;
  *fn = it->second;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, void* mod, const char* name) {
  LOCK;
  CHECK_CTX();
  Module* m = (Module*)mod;
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  if (!name) return CUDA_ERROR_INVALID_VALUE;
  void* p = dlsym(m->handle, name);
  if (!p) return CUDA_ERROR_NOT_FOUND;
  Dl_info info;
  const ElfW(Sym)* sym = nullptr;
  size_t size = 0;
  if (dladdr1(p, &info, (void**)&sym, RTLD_DL_SYMENT) && sym) size = sym->st_size;
  g_ranges[(uintptr_t)p] = size;
  if (dptr) *dptr = (CUdeviceptr)(uintptr_t)p;
  if (bytes) *bytes = size;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
  LOCK;
  CHECK_INIT();
  Function* fn = (Function*)f;
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  if (!fn) return CUDA_ERROR_INVALID_HANDLE;
  size_t static_smem = (size_t)(fn->mod->info.shared_end - fn->mod->info.shared_begin);
  switch (attr) {
    case 0: *v = 1024; break;                  // MAX_THREADS_PER_BLOCK
    case 1: *v = (int)static_smem; break;      // SHARED_SIZE_BYTES
    case 2: *v = 0; break;                     // CONST_SIZE_BYTES
    case 3: *v = 0; break;                     // LOCAL_SIZE_BYTES
    case 4: *v = 32; break;                    // NUM_REGS
    case 5: case 6: *v = 90; break;            // PTX / BINARY version
    case 7: *v = 0; break;                     // CACHE_MODE_CA
    case 8: *v = fn->max_dyn_smem; break;      // MAX_DYNAMIC_SHARED_SIZE_BYTES
    case 9: *v = -1; break;                    // PREFERRED_SHARED_MEMORY_CARVEOUT
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncSetAttribute(void* f, int attr, int v) {
  LOCK;
  CHECK_INIT();
  Function* fn = (Function*)f;
  if (!fn) return CUDA_ERROR_INVALID_HANDLE;
  size_t static_smem = (size_t)(fn->mod->info.shared_end - fn->mod->info.shared_begin);
  if (attr == 8) {
    if (v < 0 || (size_t)v + static_smem > kOptinSmemLimit) return CUDA_ERROR_INVALID_VALUE;
    fn->max_dyn_smem = v;
    return CUDA_SUCCESS;
  }
  if (attr == 9) return CUDA_SUCCESS;
  return CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuFuncSetCacheConfig(void* f, int) {
  CHECK_INIT();
  return f ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned smem, void* /*stream*/, void** params, void** extra) {
  LOCK;
  CHECK_CTX();
  CHECK_STICKY();
  Function* fn = (Function*)f;
  if (!fn) return CUDA_ERROR_INVALID_HANDLE;
  std::vector<void*> from_buffer;
  if (!params && extra) {
    // CU_LAUNCH_PARAM_BUFFER_POINTER (1) / _SIZE (2) / END (0): arguments packed
    // with their natural alignment, as nvcc lays them out.
    char* buf = nullptr;
    size_t size = 0;
    for (void** e = extra; *e != nullptr; e += 2) {
      if (*e == (void*)1) buf = (char*)e[1];
      else if (*e == (void*)2) size = *(size_t*)e[1];
      else return CUDA_ERROR_INVALID_VALUE;
    }
    size_t off = 0;
    for (unsigned i = 0; i < fn->k->nparams; i++) {
      size_t a = fn->k->param_aligns[i];
      off = (off + a - 1) / a * a;
      from_buffer.push_back(buf + off);
      off += fn->k->param_sizes[i];
    }
    if (!buf || off > size) return CUDA_ERROR_INVALID_VALUE;
    params = from_buffer.data();
  } else if (params && extra) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (!params && fn->k->nparams > 0) return CUDA_ERROR_INVALID_VALUE;
  fg_stats::launch(fn->k->name);
  return launch(fn, gx, gy, gz, bx, by, bz, smem, params);
}

struct FgLaunchConfig {  // CUlaunchConfig
  unsigned gx, gy, gz, bx, by, bz, smem;
  void* stream;
  void* attrs;
  unsigned nattrs;
};
EXPORT CUresult cuLaunchKernelEx(const FgLaunchConfig* c, void* f, void** params, void** extra) {
  if (!c) return CUDA_ERROR_INVALID_VALUE;
  if (c->nattrs > 0) {
    emu_log("cuLaunchKernelEx: launch attributes (clusters, cooperative, ...) are not supported");
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  return cuLaunchKernel(f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params, extra);
}

// The runtime API (libcudart) finds driver entry points through this.
EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int, unsigned long long, int* status) {
  if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
  static void* self = dlopen(nullptr, RTLD_NOW);
  Dl_info info;
  void* lib = nullptr;
  if (dladdr((void*)&cuInit, &info) && info.dli_fname) lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  if (!lib) lib = self;
  void* p = nullptr;
  for (const char* suffix : {"_v2", "", "_v3"}) {
    std::string name = std::string(symbol) + suffix;
    p = dlsym(lib, name.c_str());
    if (p) break;
  }
  if (status) *status = p ? 0 : 1;  // CU_GET_PROC_ADDRESS_SUCCESS / _SYMBOL_NOT_FOUND
  *pfn = p;
  return p ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void* f, int block, size_t smem) {
  CHECK_INIT();
  if (!n || !f || block <= 0) return CUDA_ERROR_INVALID_VALUE;
  Function* fn = (Function*)f;
  size_t per_block = smem + (size_t)(fn->mod->info.shared_end - fn->mod->info.shared_begin) + 1024;
  int by_threads = 2048 / block;
  int by_smem = (int)(233472 / per_block);
  *n = std::max(0, std::min({32, by_threads, by_smem}));
  return CUDA_SUCCESS;
}
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void* f, int block, size_t smem,
                                                                     unsigned) {
  return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem);
}
EXPORT CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* s, void* f, int blocks, int) {
  CHECK_INIT();
  if (!s || !f || blocks <= 0) return CUDA_ERROR_INVALID_VALUE;
  Function* fn = (Function*)f;
  size_t st = (size_t)(fn->mod->info.shared_end - fn->mod->info.shared_begin);
  size_t per = 233472 / (size_t)blocks;
  per = per > 1024 ? per - 1024 : 0;
  per = std::min(per, kOptinSmemLimit);
  *s = per > st ? per - st : 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuProfilerStart() { return CUDA_SUCCESS; }
EXPORT CUresult cuProfilerStop() { return CUDA_SUCCESS; }
