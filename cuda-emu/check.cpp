// The kernel checker of the CUDA emulation: memcheck, racecheck, initcheck
// (and the bookkeeping synccheck needs from it). See check.h and
// cuda-emu/README.md, "Checking kernels".
//
// Shadow state, all created only when a check that needs it is enabled:
//   * every device allocation, __shared__ variable, the launch's dynamic shared
//     memory and every __device__ global is a Region with exact bounds (the
//     module's ELF symbol table gives the static ones, templates included);
//   * initcheck: one byte per byte of device and shared memory, 1 once written
//     (by a kernel, a copy or a memset);
//   * racecheck: one RaceCell per 4-byte word, holding the last writer and the
//     last reader(s) with the barrier interval ("epoch") they accessed it in
//     and the bytes of the word they touched. Blocks run one after another and
//     every barrier starts a new epoch, so two accesses conflict exactly when
//     they fall into the same epoch (same block, no barrier between them), or,
//     for two writes to global memory, into epochs of different blocks of one
//     launch.
#include "check.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <vector>

extern char** environ;

namespace fgcheck {

unsigned g_checks = 0;

namespace {

constexpr int kIllegalAddress = 700;  // CUDA_ERROR_ILLEGAL_ADDRESS
constexpr int kLaunchFailed = 719;    // CUDA_ERROR_LAUNCH_FAILED

enum Kind { K_GLOBAL, K_SHARED, K_DYNSHARED, K_MODULE, K_READONLY, K_HOST };

// Per 4-byte word. writer / reader: bits 0-10 thread index + 1 (0: none;
// reader 0x7FF: several threads), bits 11-14 the bytes of the word touched,
// bit 15 atomic. wwarp / rwarp: the accessing warp's count of completed warp
// collectives (__syncwarp orders lanes of one warp).
struct RaceCell {
  uint32_t wepoch, repoch;
  uint16_t writer, reader, wwarp, rwarp;
};
constexpr uint16_t kTid = 0x7FF, kMany = 0x7FF, kAtomic = 0x8000;
inline unsigned cell_mask(uint16_t v) { return (v >> 11) & 0xF; }

template <class T>
T* shadow_alloc(size_t count) {
  if (count == 0) count = 1;
  void* p = mmap(nullptr, count * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : (T*)p;
}
template <class T>
void shadow_free(T* p, size_t count) {
  if (p) munmap((void*)p, (count ? count : 1) * sizeof(T));
}

struct Region {
  uintptr_t lo = 0, hi = 0;
  Kind kind = K_GLOBAL;
  std::string name;  // what reports call it
  uint8_t* init = nullptr;  // init[x - init_origin] == 1: byte x was written
  uintptr_t init_origin = 0;
  size_t init_len = 0;  // owned shadow (0: borrowed)
  RaceCell* race = nullptr;  // race[(x - race_origin) / 4]
  uintptr_t race_origin = 0;
  size_t race_len = 0;
};

std::map<uintptr_t, Region*> g_allocs;  // device allocations by address
struct Freed {
  uintptr_t lo, hi;
};
std::deque<Freed> g_freed;  // the latest frees, to name a use after free

struct Module {
  std::string path;
  char* sh_begin;
  char* sh_end;
  std::vector<Region*> shared;   // __shared__ variables, by address
  std::vector<Region*> extra_shared;  // those g++ put outside the shared section (templates, inline functions)
  std::vector<Region*> named;    // all of the above and the globals: what reports name
  void* handle = nullptr;
  std::vector<Region*> globals;  // writable data objects (__device__ globals), by address
  std::vector<Region*> readonly; // read-only sections (constants, literals): reads only
  std::vector<std::pair<uintptr_t, uintptr_t>> writable;  // writable sections
  uint8_t* sh_init = nullptr;
  RaceCell* sh_race = nullptr;
};
std::vector<Module*> g_modules;

struct State {
  bool active = false;
  const char* kernel = "";
  Module* mod = nullptr;
  Region dyn;  // the launch's dynamic shared memory
  uintptr_t dyn_region_end = 0;
  dim3 bdim, gdim;
  uint3 bid{0, 0, 0};
  uint32_t E0 = 0, Eb = 0, E = 0;
  std::vector<uint32_t> block_epochs;  // the first epoch of each block run so far
  uint16_t warpgen[32] = {};
  int err = 0;
  std::set<std::pair<int, const void*>> seen;  // (hazard kind, pc) reported in this launch
  // the running thread
  unsigned tid = 0;
  uint3 tid3{0, 0, 0};
  uintptr_t stack_lo = 0, stack_len = 0;
  Region* cache[2] = {nullptr, nullptr};
};
State S;
uint32_t g_epoch = 0;
Region g_host;  // device-accessible host memory (one access at a time)

unsigned g_reports = 0;
unsigned g_limit = 50;

std::string hexs(uintptr_t v) {
  char b[32];
  snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
  return b;
}

std::string demangle(const char* n) {
  int st = 0;
  char* d = abi::__cxa_demangle(n, nullptr, nullptr, &st);
  std::string r = (st == 0 && d) ? d : n;
  free(d);
  return r;
}

std::string tid_str(unsigned linear) {
  unsigned bx = S.bdim.x ? S.bdim.x : 1, by = S.bdim.y ? S.bdim.y : 1;
  char b[64];
  snprintf(b, sizeof b, "(%u,%u,%u)", linear % bx, (linear / bx) % by, linear / (bx * by));
  return b;
}

std::string block_str(size_t linear) {
  unsigned gx = S.gdim.x ? S.gdim.x : 1, gy = S.gdim.y ? S.gdim.y : 1;
  char b[64];
  snprintf(b, sizeof b, "(%zu,%zu,%zu)", linear % gx, (linear / gx) % gy, linear / ((size_t)gx * gy));
  return b;
}

// "file:line" of a kernel instruction (the module has line tables), from
// addr2line; the symbol and offset when that fails. Cached.
std::string source_of(const void* pc) {
  static std::map<const void*, std::string> cache;
  auto it = cache.find(pc);
  if (it != cache.end()) return it->second;
  std::string r;
  Dl_info info;
  if (pc && dladdr(pc, &info) && info.dli_fname) {
    uintptr_t off = (uintptr_t)pc - (uintptr_t)info.dli_fbase - 1;  // pc is a return address
    int fds[2];
    if (pipe(fds) == 0) {
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
      posix_spawn_file_actions_addclose(&fa, fds[0]);
      posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
      std::string a = hexs(off);
      const char* argv[] = {"addr2line", "-e", info.dli_fname, a.c_str(), nullptr};
      pid_t pid;
      if (posix_spawnp(&pid, "addr2line", &fa, nullptr, (char* const*)argv, environ) == 0) {
        close(fds[1]);
        char buf[512];
        ssize_t k, tot = 0;
        while (tot < (ssize_t)sizeof buf - 1 && (k = read(fds[0], buf + tot, sizeof buf - 1 - tot)) > 0) tot += k;
        buf[tot] = 0;
        int status;
        waitpid(pid, &status, 0);
        std::string line = buf;
        size_t e = line.find_first_of(" \n");
        if (e != std::string::npos) line = line.substr(0, e);
        if (!line.empty() && line.rfind("??", 0) != 0 && line.find(":?") == std::string::npos &&
            line.find(":0") != line.size() - 2) {
          size_t slash = line.rfind('/');
          r = slash == std::string::npos ? line : line.substr(slash + 1);
        }
      } else {
        close(fds[1]);
      }
      close(fds[0]);
      posix_spawn_file_actions_destroy(&fa);
    }
    if (r.empty() && info.dli_sname) r = demangle(info.dli_sname) + "+" + hexs((uintptr_t)pc - (uintptr_t)info.dli_saddr);
  }
  cache[pc] = r;
  return r;
}

std::string at(const void* pc) {
  std::string s = source_of(pc);
  return s.empty() ? "" : " (at " + s + ")";
}

std::string in_region(const Region* r, uintptr_t p) {
  return "offset " + std::to_string(p - r->lo) + " of " + r->name;
}

// ------------------------------------------------------------------ regions
Region* find_sorted(std::vector<Region*>& v, uintptr_t p) {
  auto it = std::upper_bound(v.begin(), v.end(), p, [](uintptr_t a, const Region* r) { return a < r->lo; });
  if (it == v.begin()) return nullptr;
  --it;
  return (p < (*it)->hi) ? *it : nullptr;
}

bool within(const Region* r, uintptr_t p, size_t n) { return r && p >= r->lo && p + n <= r->hi && p + n >= p; }

__attribute__((noinline)) Region* lookup(uintptr_t p, size_t n) {
  if (S.dyn.hi > S.dyn.lo && p >= S.dyn.lo && p < S.dyn_region_end) return within(&S.dyn, p, n) ? &S.dyn : nullptr;
  for (Module* m : g_modules) {
    if (p >= (uintptr_t)m->sh_begin && p < (uintptr_t)m->sh_end) {
      Region* r = find_sorted(m->shared, p);
      return within(r, p, n) ? r : nullptr;
    }
  }
  auto it = g_allocs.upper_bound(p);
  if (it != g_allocs.begin()) {
    --it;
    if (p < it->second->hi) return within(it->second, p, n) ? it->second : nullptr;
  }
  for (Module* m : g_modules) {
    for (auto& w : m->writable)
      if (p >= w.first && p < w.second) {
        Region* r = find_sorted(m->globals, p);
        if (!r) r = find_sorted(m->extra_shared, p);
        return within(r, p, n) ? r : nullptr;
      }
    Region* r = find_sorted(m->readonly, p);
    if (r) return within(r, p, n) ? r : nullptr;
  }
  if (fg_emu_host_range_ok(p, n)) {
    g_host.lo = p;
    g_host.hi = p + n;
    return &g_host;
  }
  return nullptr;
}

// Why [p, p+n) is not a valid access: the allocation or variable it belongs
// to or is nearest to, with the offset.
std::string explain(uintptr_t p, size_t n) {
  char b[512];
  if (S.dyn_region_end && p >= S.dyn.lo && p < S.dyn_region_end) {
    snprintf(b, sizeof b, "offset %zu of the dynamic shared memory, of which the launch gave %zu bytes",
             (size_t)(p - S.dyn.lo), (size_t)(S.dyn.hi - S.dyn.lo));
    return b;
  }
  auto nearest = [&](std::vector<Region*>& v) -> std::string {
    if (v.empty()) return "";
    auto it = std::upper_bound(v.begin(), v.end(), p, [](uintptr_t a, const Region* r) { return a < r->lo; });
    const Region* before = it == v.begin() ? nullptr : *(it - 1);
    const Region* after = it == v.end() ? nullptr : *it;
    if (before && p < before->hi) {
      snprintf(b, sizeof b, "offset %zu of %s: the %zu-byte access ends %zu bytes past its end",
               (size_t)(p - before->lo), before->name.c_str(), n, (size_t)(p + n - before->hi));
      return b;
    }
    size_t db = before ? p - before->hi : SIZE_MAX, da = after ? after->lo - p : SIZE_MAX;
    if (before && db <= da)
      snprintf(b, sizeof b, "%zu bytes past the end of %s (offset %zu)", db, before->name.c_str(),
               (size_t)(p - before->lo));
    else if (after)
      snprintf(b, sizeof b, "%zu bytes before %s (offset -%zu)", da, after->name.c_str(), da);
    else
      return "";
    return b;
  };
  for (Module* m : g_modules) {
    if (p >= (uintptr_t)m->sh_begin && p < (uintptr_t)m->sh_end) return nearest(m->named);
    for (auto& w : m->writable)
      if (p >= w.first && p < w.second) return nearest(m->named);
  }
  for (auto it = g_freed.rbegin(); it != g_freed.rend(); ++it)
    if (p >= it->lo && p < it->hi) {
      snprintf(b, sizeof b, "offset %zu of the %zu-byte allocation at %s, which has been freed", (size_t)(p - it->lo),
               (size_t)(it->hi - it->lo), hexs(it->lo).c_str());
      return b;
    }
  std::vector<Region*> near;
  auto it = g_allocs.upper_bound(p);
  if (it != g_allocs.end()) near.push_back(it->second);
  if (it != g_allocs.begin()) near.insert(near.begin(), std::prev(it)->second);
  std::string s = nearest(near);
  return s.empty() ? "no device allocation exists" : s;
}

// Reports are cold and out of line: access() stays a small function with a
// small frame (it runs for every load and store of kernel code).
[[noreturn]] __attribute__((noinline, cold)) void memory_error(uintptr_t p, size_t n, unsigned fl, const void* pc, const std::string& why) {
  const char* what = (fl & FG_ACCESS_ATOMIC) ? "atomic" : (fl & FG_ACCESS_WRITE) ? "write" : "read";
  report("memcheck", where() + ": invalid " + std::string(what) + " of " + std::to_string(n) + " bytes at " + hexs(p) +
                         ", " + why + at(pc));
  fg_emu_abort_launch(kIllegalAddress);
}

[[noreturn]] __attribute__((noinline, cold)) void misaligned(const Region* r, uintptr_t p, size_t n, unsigned fl,
                                                             const void* pc) {
  memory_error(p, n, fl, pc, "misaligned: a " + std::to_string(n) + "-byte access needs a multiple of " +
                                 std::to_string(n) + " (" + in_region(r, p) + ")");
}
[[noreturn]] __attribute__((noinline, cold)) void read_only(const Region* r, uintptr_t p, size_t n, unsigned fl,
                                                            const void* pc) {
  memory_error(p, n, fl, pc, "in " + r->name);
}
[[noreturn]] __attribute__((noinline, cold)) void unmapped(uintptr_t p, size_t n, unsigned fl, const void* pc) {
  memory_error(p, n, fl, pc, explain(p, n));
}

void reset_shadow_init(Region* r) {
  if (r->init) memset(r->init + (r->lo - r->init_origin), 0, r->hi - r->lo);
}

// ------------------------------------------------------------------ racecheck
enum Hazard { H_RAW = 1, H_WAR, H_WAW, H_BLOCKS, H_INIT };
const void* g_pc = nullptr;  // the access being checked (for reports from race())

bool warp_ordered(unsigned other_tid, uint16_t other_gen) {
  return other_tid / 32 == S.tid / 32 && other_gen != S.warpgen[(S.tid / 32) & 31];
}

__attribute__((noinline, cold)) void race_report(Hazard h, const Region* r, uintptr_t p, unsigned other, const void* pc) {
  if (!S.seen.insert({h, pc}).second) return;
  std::string me = "thread " + tid_str(S.tid);
  std::string them = other == kMany ? "other threads" : "thread " + tid_str(other);
  std::string msg = where() + ": ";
  switch (h) {
    case H_RAW: msg += "read-after-write hazard: " + me + " reads " + in_region(r, p) + " (" + hexs(p) + ")" + at(pc) +
                       ", written by " + them + " since the last __syncthreads()"; break;
    case H_WAR: msg += "write-after-read hazard: " + me + " writes " + in_region(r, p) + " (" + hexs(p) + ")" + at(pc) +
                       ", read by " + them + " since the last __syncthreads()"; break;
    case H_WAW: msg += "write-after-write hazard: " + me + " writes " + in_region(r, p) + " (" + hexs(p) + ")" + at(pc) +
                       ", written by " + them + " since the last __syncthreads()"; break;
    default: break;
  }
  hazard("racecheck", msg);
}

__attribute__((noinline, cold)) void blocks_report(const Region* r, uintptr_t p, uint32_t wepoch, unsigned other, const void* pc) {
  if (!S.seen.insert({H_BLOCKS, pc}).second) return;
  auto it = std::upper_bound(S.block_epochs.begin(), S.block_epochs.end(), wepoch);
  size_t ob = (size_t)(it - S.block_epochs.begin()) - 1;
  hazard("racecheck", where() + ": write-after-write hazard between blocks: thread " + tid_str(S.tid) + " writes " +
                          in_region(r, p) + " (" + hexs(p) + ")" + at(pc) + ", written by block " + block_str(ob) +
                          " thread " + tid_str(other) + " of the same launch, without atomics");
}

void race(Region* r, uintptr_t p, size_t n, unsigned fl) {
  const bool write = fl & FG_ACCESS_WRITE, read = fl & FG_ACCESS_READ, atom = fl & FG_ACCESS_ATOMIC;
  const bool global = r->kind == K_GLOBAL || r->kind == K_MODULE;
  const uint16_t me = (uint16_t)(S.tid + 1);
  const uint16_t gen = S.warpgen[(S.tid / 32) & 31];
  const void* pc = g_pc;
  for (uintptr_t w = p & ~(uintptr_t)3; w < p + n; w += 4) {
    unsigned lo = p > w ? (unsigned)(p - w) : 0, hi = std::min<uintptr_t>(4, p + n - w);
    unsigned m = ((1u << hi) - 1u) & ~((1u << lo) - 1u);
    RaceCell& c = r->race[(w - r->race_origin) >> 2];
    const unsigned wt = c.writer & kTid, rt = c.reader & kTid;
    // A plain read racing with an atomic write is how a compare-and-swap loop
    // starts (read, then atomicCAS validates): not a hazard. Everything else
    // with a plain write in it is, and so is an atomic racing with a plain write.
    const bool w_other = c.wepoch == S.E && wt && wt != me && (cell_mask(c.writer) & m) && !warp_ordered(wt - 1, c.wwarp);
    if (write) {
      if (w_other && !(atom && (c.writer & kAtomic)))
        race_report(H_WAW, r, std::max(p, w), wt - 1, pc);
      else if (global && wt && c.wepoch >= S.E0 && c.wepoch < S.Eb && (cell_mask(c.writer) & m) &&
               !(atom && (c.writer & kAtomic)))
        blocks_report(r, std::max(p, w), c.wepoch, wt - 1, pc);
      if (!atom && c.repoch == S.E && rt && rt != me && (cell_mask(c.reader) & m) &&
          (rt == kMany || !warp_ordered(rt - 1, c.rwarp)))
        race_report(H_WAR, r, std::max(p, w), rt == kMany ? kMany : rt - 1, pc);
    }
    if (read && !write && w_other && !(c.writer & kAtomic)) race_report(H_RAW, r, std::max(p, w), wt - 1, pc);
    if (read) {
      if (c.repoch == S.E && rt && (cell_mask(c.reader) & 0xF)) {
        uint16_t who = (rt == me) ? me : kMany;
        uint16_t a = (atom && (c.reader & kAtomic)) ? kAtomic : 0;
        c.reader = (uint16_t)(a | ((cell_mask(c.reader) | m) << 11) | who);
      } else {
        c.repoch = S.E;
        c.reader = (uint16_t)((atom ? kAtomic : 0) | (m << 11) | me);
      }
      c.rwarp = gen;
    }
    if (write) {
      if (c.wepoch == S.E && wt == me) {
        c.writer = (uint16_t)((c.writer & kAtomic & (atom ? 0xFFFF : 0)) | ((cell_mask(c.writer) | m) << 11) | me);
      } else {
        c.wepoch = S.E;
        c.writer = (uint16_t)((atom ? kAtomic : 0) | (m << 11) | me);
      }
      c.wwarp = gen;
    }
  }
}

__attribute__((noinline, cold)) void init_report(const Region* r, uintptr_t p, size_t n, unsigned fl, const void* pc,
                                                 const uint8_t* s) {
  if (!S.seen.insert({H_INIT, pc}).second) return;
  size_t k = 0;
  for (size_t j = 0; j < n; j++) k += !s[j];
  const char* what = (fl & FG_ACCESS_ATOMIC) ? "atomic" : "read";
  hazard("initcheck", where() + ": " + what + " of " + std::to_string(n) + " bytes at " + hexs(p) + " (" +
                          in_region(r, p) + ")" + at(pc) + ": " + std::to_string(k) +
                          " of them never written (uninitialised memory)");
}

// ------------------------------------------------------------------ modules
void load_symbols(Module* m, void* handle) {
  std::vector<uintptr_t> shptrs;
  link_map* lm = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm) return;
  uintptr_t base = lm->l_addr;
  int fd = open(m->path.c_str(), O_RDONLY);
  if (fd < 0) return;
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
    close(fd);
    return;
  }
  size_t len = (size_t)st.st_size;
  void* map = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return;
  const char* f = (const char*)map;
  const Elf64_Ehdr* eh = (const Elf64_Ehdr*)f;
  auto ok = [&](size_t off, size_t n) { return off <= len && n <= len - off; };
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
      !ok(eh->e_shoff, (size_t)eh->e_shnum * sizeof(Elf64_Shdr))) {
    munmap(map, len);
    return;
  }
  const Elf64_Shdr* sh = (const Elf64_Shdr*)(f + eh->e_shoff);
  const char* shstr = (eh->e_shstrndx < eh->e_shnum && ok(sh[eh->e_shstrndx].sh_offset, sh[eh->e_shstrndx].sh_size))
                          ? f + sh[eh->e_shstrndx].sh_offset
                          : nullptr;
  for (unsigned i = 0; i < eh->e_shnum; i++) {
    if (!(sh[i].sh_flags & SHF_ALLOC) || sh[i].sh_size == 0) continue;
    uintptr_t lo = base + sh[i].sh_addr, hi = lo + sh[i].sh_size;
    if (lo >= (uintptr_t)m->sh_begin && hi <= (uintptr_t)m->sh_end && m->sh_begin != m->sh_end) continue;
    if (sh[i].sh_flags & SHF_WRITE) {
      m->writable.push_back({lo, hi});
    } else if (!(sh[i].sh_flags & SHF_EXECINSTR)) {
      Region* r = new Region();
      r->lo = lo;
      r->hi = hi;
      r->kind = K_READONLY;
      r->name = "the module's read-only section " + std::string(shstr ? shstr + sh[i].sh_name : "?");
      m->readonly.push_back(r);
    }
  }
  for (unsigned i = 0; i < eh->e_shnum; i++) {
    if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
    const Elf64_Shdr& strs = sh[sh[i].sh_link];
    if (!ok(sh[i].sh_offset, sh[i].sh_size) || !ok(strs.sh_offset, strs.sh_size)) continue;
    const Elf64_Sym* sym = (const Elf64_Sym*)(f + sh[i].sh_offset);
    size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; k++) {
      if (ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT || sym[k].st_size == 0 || sym[k].st_shndx == SHN_UNDEF ||
          sym[k].st_shndx >= SHN_LORESERVE || sym[k].st_name >= strs.sh_size)
        continue;
      const char* name = f + strs.sh_offset + sym[k].st_name;
      uintptr_t lo = base + sym[k].st_value, hi = lo + sym[k].st_size;
      // The rewrite's pads are nobody's memory; its pointers name __shared__ variables.
      if (strstr(name, "__frostgrad_emu_pad_")) continue;
      if (strstr(name, "__frostgrad_emu_shptr_")) {
        if (sym[k].st_size == sizeof(void*)) shptrs.push_back(*(uintptr_t*)lo);
        continue;
      }
      Region* r = new Region();
      r->lo = lo;
      r->hi = hi;
      std::string dn = demangle(name);
      char b[64];
      snprintf(b, sizeof b, " (%zu bytes)", (size_t)sym[k].st_size);
      if (lo >= (uintptr_t)m->sh_begin && hi <= (uintptr_t)m->sh_end) {
        r->kind = K_SHARED;
        r->name = "__shared__ '" + dn + "'" + b;
        m->shared.push_back(r);
      } else if (sh[sym[k].st_shndx].sh_flags & SHF_WRITE) {
        r->kind = K_MODULE;
        r->name = "__device__ '" + dn + "'" + b;
        m->globals.push_back(r);
      } else {
        delete r;
      }
    }
  }
  munmap(map, len);
  // __shared__ variables outside the section: move them from the globals.
  for (uintptr_t target : shptrs) {
    if (target >= (uintptr_t)m->sh_begin && target < (uintptr_t)m->sh_end) continue;
    for (size_t k = 0; k < m->globals.size(); k++)
      if (m->globals[k]->lo == target) {
        Region* r = m->globals[k];
        r->kind = K_SHARED;
        r->name = "__shared__" + r->name.substr(strlen("__device__"));
        m->shared.push_back(r);
        m->extra_shared.push_back(r);
        m->globals.erase(m->globals.begin() + (long)k);
        break;
      }
  }
  auto by_lo = [](const Region* a, const Region* b) { return a->lo < b->lo; };
  std::sort(m->shared.begin(), m->shared.end(), by_lo);
  std::sort(m->globals.begin(), m->globals.end(), by_lo);
  std::sort(m->readonly.begin(), m->readonly.end(), by_lo);
  std::sort(m->extra_shared.begin(), m->extra_shared.end(), by_lo);
  m->named = m->shared;
  m->named.insert(m->named.end(), m->globals.begin(), m->globals.end());
  std::sort(m->named.begin(), m->named.end(), by_lo);
}

}  // namespace

// ====================================================================== API
bool configure(std::string* err) {
  static bool done = false;
  static bool ok = true;
  static std::string msg;
  if (!done) {
    done = true;
    const char* e = getenv("FROSTGRAD_CUDA_EMU_CHECK");
    std::string v = e ? e : "";
    size_t i = 0;
    while (i <= v.size() && !v.empty()) {
      size_t j = v.find(',', i);
      if (j == std::string::npos) j = v.size();
      std::string t = v.substr(i, j - i);
      while (!t.empty() && t.back() == ' ') t.pop_back();
      while (!t.empty() && t.front() == ' ') t.erase(0, 1);
      if (t == "memcheck") g_checks |= MEM;
      else if (t == "racecheck") g_checks |= RACE;
      else if (t == "initcheck") g_checks |= INIT;
      else if (t == "synccheck") g_checks |= SYNC;
      else if (t == "all") g_checks |= MEM | RACE | INIT | SYNC;
      else if (t == "unused") g_checks |= UNUSED;
      else if (t == "none" || t == "0" || t == "off" || t.empty()) {
      } else {
        ok = false;
        msg = "FROSTGRAD_CUDA_EMU_CHECK: unknown check '" + t +
              "' (a comma list of memcheck, racecheck, initcheck, synccheck, unused, or all)";
      }
      i = j + 1;
    }
    const char* l = getenv("FROSTGRAD_CUDA_EMU_CHECK_LIMIT");
    if (l && *l) g_limit = (unsigned)strtoul(l, nullptr, 10);
  }
  if (!ok && err) *err = msg;
  return ok;
}

void report(const char* check, const std::string& msg) {
  if (g_reports > g_limit) return;
  std::string s;
  if (g_reports++ == g_limit)
    s = "frostgrad-cuda-emu: further reports are not printed (FROSTGRAD_CUDA_EMU_CHECK_LIMIT=" +
        std::to_string(g_limit) + ")\n";
  else
    s = "frostgrad-cuda-emu: " + std::string(check) + ": " + msg + "\n";
  ssize_t w = write(2, s.data(), s.size());
  (void)w;
}

void hazard(const char* check, const std::string& msg) {
  report(check, msg);
  if (!S.err) S.err = kLaunchFailed;
}

std::string where() {
  char b[64];
  snprintf(b, sizeof b, "(%u,%u,%u)", S.bid.x, S.bid.y, S.bid.z);
  return "kernel '" + std::string(S.kernel) + "' block " + b + " thread " + tid_str(S.tid);
}

void on_alloc(uintptr_t p, size_t n, bool managed) {
  Region* r = new Region();
  r->lo = p;
  r->hi = p + n;
  r->kind = K_GLOBAL;
  r->name = "the " + std::to_string(n) + "-byte allocation at " + hexs(p);
  if (on(INIT | UNUSED)) {
    r->init = shadow_alloc<uint8_t>(n);
    r->init_len = n;
    r->init_origin = p;
    if (managed && r->init) memset(r->init, 1, n);
  }
  if (on(RACE)) {
    r->race_origin = p & ~(uintptr_t)3;
    r->race_len = (p + n - r->race_origin + 3) / 4;
    r->race = shadow_alloc<RaceCell>(r->race_len);
  }
  g_allocs[p] = r;
}

namespace {
void report_unused(const Region* r, const char* when) {
  if (!r->init || !on(UNUSED)) return;
  size_t never = 0, first = SIZE_MAX;
  for (size_t i = 0; i < r->hi - r->lo; i++)
    if (!r->init[i]) {
      never++;
      if (first == SIZE_MAX) first = i;
    }
  if (never)
    report("initcheck", std::to_string(never) + " of the " + std::to_string(r->hi - r->lo) + " bytes of " + r->name +
                            " were never written " + when + " (the first at offset " + std::to_string(first) + ")");
}
struct AtExit {
  ~AtExit() {
    for (auto& kv : g_allocs) report_unused(kv.second, "by the end of the process");
  }
} g_at_exit;
}  // namespace

void on_free(uintptr_t p) {
  auto it = g_allocs.find(p);
  if (it == g_allocs.end()) return;
  Region* r = it->second;
  report_unused(r, "before it was freed");
  g_freed.push_back({r->lo, r->hi});
  if (g_freed.size() > 4096) g_freed.pop_front();
  shadow_free(r->init, r->init_len);
  shadow_free(r->race, r->race_len);
  for (auto& c : S.cache)
    if (c == r) c = nullptr;
  delete r;
  g_allocs.erase(it);
}

void on_write(uintptr_t dst, size_t n) {
  auto it = g_allocs.upper_bound(dst);
  if (it == g_allocs.begin()) return;
  Region* r = std::prev(it)->second;
  if (r->init && dst >= r->lo && dst + n <= r->hi) memset(r->init + (dst - r->init_origin), 1, n);
}

void on_copy(uintptr_t dst, uintptr_t src, size_t n) {
  auto find = [](uintptr_t p, size_t k) -> Region* {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    Region* r = std::prev(it)->second;
    return (r->init && p >= r->lo && p + k <= r->hi) ? r : nullptr;
  };
  Region* d = find(dst, n);
  if (!d) return;
  Region* s = find(src, n);
  // Copying device memory copies what is known about it: unwritten bytes stay unwritten.
  if (s) memmove(d->init + (dst - d->init_origin), s->init + (src - s->init_origin), n);
  else memset(d->init + (dst - d->init_origin), 1, n);
}

void on_module(void* handle, const char* path, char* shared_begin, char* shared_end) {
  Module* m = new Module();
  m->handle = handle;
  m->path = path;
  m->sh_begin = shared_begin;
  m->sh_end = shared_end;
  load_symbols(m, handle);
  size_t n = (size_t)(shared_end - shared_begin);
  if (n) {
    uintptr_t origin = (uintptr_t)shared_begin & ~(uintptr_t)3;
    if (on(INIT)) m->sh_init = shadow_alloc<uint8_t>(n);
    if (on(RACE)) m->sh_race = shadow_alloc<RaceCell>((n + 7) / 4);
    for (Region* r : m->shared) {
      if (r->lo < (uintptr_t)shared_begin || r->hi > (uintptr_t)shared_end) continue;
      r->init = m->sh_init;
      r->init_origin = (uintptr_t)shared_begin;
      r->race = m->sh_race;
      r->race_origin = origin;
    }
  }
  for (Region* r : m->extra_shared) {
    if (on(INIT)) {
      r->init_len = r->hi - r->lo;
      r->init = shadow_alloc<uint8_t>(r->init_len);
      r->init_origin = r->lo;
    }
    if (on(RACE)) {
      r->race_origin = r->lo & ~(uintptr_t)3;
      r->race_len = (r->hi - r->race_origin + 3) / 4;
      r->race = shadow_alloc<RaceCell>(r->race_len);
    }
  }
  if (on(RACE))
    for (Region* r : m->globals) {
      r->race_origin = r->lo & ~(uintptr_t)3;
      r->race_len = (r->hi - r->race_origin + 3) / 4;
      r->race = shadow_alloc<RaceCell>(r->race_len);
    }
  g_modules.push_back(m);
}

void launch_begin(const Launch& l) {
  S.active = true;
  S.kernel = l.kernel;
  S.mod = nullptr;
  for (Module* m : g_modules)
    if (m->handle == l.module) S.mod = m;
  S.bdim = l.bdim;
  S.gdim = l.gdim;
  S.dyn.lo = (uintptr_t)l.dyn_smem;
  S.dyn.hi = S.dyn.lo + l.dyn_smem_bytes;
  S.dyn.kind = K_DYNSHARED;
  S.dyn.name = "the dynamic shared memory (" + std::to_string(l.dyn_smem_bytes) + " bytes)";
  // Past the launch's size up to the end of the emulator's region (and its guard page) is "dynamic shared memory".
  S.dyn_region_end = ((S.dyn.hi + 4095) & ~(uintptr_t)4095) + 4096;
  static uint8_t* dyn_init = nullptr;
  static RaceCell* dyn_race = nullptr;
  static size_t dyn_cap = 0;
  if (l.dyn_smem_bytes > dyn_cap) {
    shadow_free(dyn_init, dyn_cap);
    shadow_free(dyn_race, dyn_cap / 4 + 2);
    dyn_cap = std::max<size_t>(l.dyn_smem_bytes, 64 * 1024);
    dyn_init = on(INIT) ? shadow_alloc<uint8_t>(dyn_cap) : nullptr;
    dyn_race = on(RACE) ? shadow_alloc<RaceCell>(dyn_cap / 4 + 2) : nullptr;
  }
  S.dyn.init = dyn_init;
  S.dyn.init_origin = S.dyn.lo;
  S.dyn.race = dyn_race;
  S.dyn.race_origin = S.dyn.lo & ~(uintptr_t)3;
  S.E0 = ++g_epoch;
  S.block_epochs.clear();
  S.err = 0;
  S.seen.clear();
  S.cache[0] = S.cache[1] = nullptr;
}

void block_begin(uint3 bid) {
  S.bid = bid;
  S.Eb = S.E = ++g_epoch;
  S.block_epochs.push_back(S.Eb);
  memset(S.warpgen, 0, sizeof S.warpgen);
  if (S.dyn.init) reset_shadow_init(&S.dyn);
  if (S.mod && S.mod->sh_init) memset(S.mod->sh_init, 0, (size_t)(S.mod->sh_end - S.mod->sh_begin));
  if (S.mod)
    for (Region* r : S.mod->extra_shared) {  // poisoned per block like the section (the driver does that one)
      memset((void*)r->lo, 0xFF, r->hi - r->lo);
      reset_shadow_init(r);
    }
}

void set_thread(unsigned linear, uint3 tid, char* stack_lo, char* stack_hi) {
  S.tid = linear;
  S.tid3 = tid;
  S.stack_lo = (uintptr_t)stack_lo;
  S.stack_len = (uintptr_t)(stack_hi - stack_lo);
}

void barrier_done() { S.E = ++g_epoch; }
void warp_sync_done(unsigned warp) { S.warpgen[warp & 31]++; }

int launch_end() {
  S.active = false;
  S.stack_len = 0;
  S.dyn.lo = S.dyn.hi = 0;
  S.dyn_region_end = 0;
  S.cache[0] = S.cache[1] = nullptr;
  int e = S.err;
  S.err = 0;
  return e;
}

bool launch_active() { return S.active; }

void access(const void* addr, unsigned long n, unsigned fl, const void* pc) {
  uintptr_t p = (uintptr_t)addr;
  if (p - S.stack_lo < S.stack_len) return;  // the thread's own locals
  if (!S.active || n == 0) return;
  Region* r;
  if (within(S.cache[0], p, n)) {
    r = S.cache[0];
  } else if (within(S.cache[1], p, n)) {
    r = S.cache[1];
    std::swap(S.cache[0], S.cache[1]);
  } else {
    r = lookup(p, n);
    if (!r) {
      if (on(MEM)) unmapped(p, n, fl, pc);
      return;
    }
    if (r != &g_host) {
      S.cache[1] = S.cache[0];
      S.cache[0] = r;
    }
  }
  if (on(MEM)) {
    if ((fl & FG_ACCESS_ALIGNED) && n > 1 && (n & (n - 1)) == 0 && (p & (n - 1))) misaligned(r, p, n, fl, pc);
    if ((fl & FG_ACCESS_WRITE) && r->kind == K_READONLY) read_only(r, p, n, fl, pc);
  }
  if (r->init) {
    uint8_t* s = r->init + (p - r->init_origin);
    if ((fl & FG_ACCESS_READ) && on(INIT)) {
      for (size_t i = 0; i < n; i++)
        if (!s[i]) {
          init_report(r, p, n, fl, pc, s);
          break;
        }
    }
    if (fl & FG_ACCESS_WRITE) {
      if (n <= 16)
        for (size_t i = 0; i < n; i++) s[i] = 1;
      else
        memset(s, 1, n);
    }
  }
  if (r->race && on(RACE)) {
    g_pc = pc;
    race(r, p, n, fl);
  }
}

}  // namespace fgcheck
