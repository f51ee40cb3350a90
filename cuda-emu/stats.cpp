// See stats.h. Kept apart from driver.cpp so the driver only gains one-line
// hooks at the calls it counts.
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>

namespace {

struct Counters {
  unsigned long long launches = 0, syncs = 0, dtoh_calls = 0, dtoh_bytes = 0, htod_calls = 0, htod_bytes = 0,
                     dtod_calls = 0, dtod_bytes = 0, memsets = 0, allocs = 0, alloc_bytes = 0, frees = 0;
  std::map<std::string, unsigned long long> kernels;
};

// Never destroyed: the exit hook below may run after static destructors.
std::mutex& mu() {
  static std::mutex* m = new std::mutex;
  return *m;
}
Counters& counters() {
  static Counters* c = new Counters;
  return *c;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    unsigned char c = (unsigned char)ch;
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// Writes the counters to $FROSTGRAD_CUDA_EMU_STATS at exit (through a
// temporary file and a rename, so a reader never sees half an object).
__attribute__((destructor)) void write_stats() {
  const char* env = getenv("FROSTGRAD_CUDA_EMU_STATS");
  if (!env || !*env) return;
  std::string path;
  for (const char* p = env; *p; p++) {
    if (p[0] == '%' && p[1] == 'p') {
      path += std::to_string((long)getpid());
      p++;
    } else {
      path += *p;
    }
  }
  std::lock_guard<std::mutex> g(mu());
  const Counters& c = counters();
  std::string j = "{";
  auto field = [&](const char* k, unsigned long long v) { j += "\"" + std::string(k) + "\":" + std::to_string(v) + ","; };
  field("launches", c.launches);
  field("syncs", c.syncs);
  field("dtoh_calls", c.dtoh_calls);
  field("dtoh_bytes", c.dtoh_bytes);
  field("htod_calls", c.htod_calls);
  field("htod_bytes", c.htod_bytes);
  field("dtod_calls", c.dtod_calls);
  field("dtod_bytes", c.dtod_bytes);
  field("memsets", c.memsets);
  field("allocs", c.allocs);
  field("alloc_bytes", c.alloc_bytes);
  field("frees", c.frees);
  j += "\"kernels\":{";
  bool first = true;
  for (auto& kv : c.kernels) {
    if (!first) j += ",";
    first = false;
    j += json_string(kv.first) + ":" + std::to_string(kv.second);
  }
  j += "}}\n";
  std::string tmp = path + ".tmp" + std::to_string((long)getpid());
  FILE* f = fopen(tmp.c_str(), "wb");
  bool ok = f && fwrite(j.data(), 1, j.size(), f) == j.size();
  if (f) ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    fprintf(stderr, "frostgrad-cuda-emu: could not write FROSTGRAD_CUDA_EMU_STATS=%s\n", env);
    unlink(tmp.c_str());
  }
}

}  // namespace

namespace fg_stats {
void launch(const char* kernel) {
  std::lock_guard<std::mutex> g(mu());
  counters().launches++;
  counters().kernels[kernel ? kernel : "?"]++;
}
void sync() {
  std::lock_guard<std::mutex> g(mu());
  counters().syncs++;
}
void dtoh(size_t bytes) {
  std::lock_guard<std::mutex> g(mu());
  counters().dtoh_calls++;
  counters().dtoh_bytes += bytes;
}
void htod(size_t bytes) {
  std::lock_guard<std::mutex> g(mu());
  counters().htod_calls++;
  counters().htod_bytes += bytes;
}
void dtod(size_t bytes) {
  std::lock_guard<std::mutex> g(mu());
  counters().dtod_calls++;
  counters().dtod_bytes += bytes;
}
void memset_call() {
  std::lock_guard<std::mutex> g(mu());
  counters().memsets++;
}
void alloc(size_t bytes) {
  std::lock_guard<std::mutex> g(mu());
  counters().allocs++;
  counters().alloc_bytes += bytes;
}
void free_call() {
  std::lock_guard<std::mutex> g(mu());
  counters().frees++;
}
}  // namespace fg_stats
