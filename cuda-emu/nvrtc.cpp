// Host emulation of NVRTC (libnvrtc.so.13) for frostgrad's tests.
//
// "Compiling" a program compiles the same CUDA C++ source as C++ with g++
// against frostgrad_cuda_emu.h, in two steps:
//   1. g++ -E with the emulation header force-included (macros, includes);
//   2. a light token-level rewrite of the preprocessed text: find the
//      `__global__` entry points, turn `__shared__` variables into statics in
//      one ELF section (so the driver can poison them per block), turn
//      `extern __shared__ T name[];` into a reference to the launch's dynamic
//      shared memory, reject inline assembly; then g++ -O2 -shared.
// The result is cached by a hash of the rewritten text and the flags, and the
// "PTX" handed back is a short text naming the cached shared object and the
// entry points, which the emulated cuModuleLoadData understands.
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "include/frostgrad_emu_abi.h"

extern char** environ;

typedef int nvrtcResult;
enum {
  NVRTC_SUCCESS = 0,
  NVRTC_ERROR_OUT_OF_MEMORY = 1,
  NVRTC_ERROR_PROGRAM_CREATION_FAILURE = 2,
  NVRTC_ERROR_INVALID_INPUT = 3,
  NVRTC_ERROR_INVALID_PROGRAM = 4,
  NVRTC_ERROR_INVALID_OPTION = 5,
  NVRTC_ERROR_COMPILATION = 6,
  NVRTC_ERROR_BUILTIN_OPERATION_FAILURE = 7,
  NVRTC_ERROR_INTERNAL_ERROR = 11,
};

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// Bump when the rewrite or the flags change meaning (part of the cache key).
constexpr const char* kEmuVersion = "frostgrad-nvrtc-emu 2";

struct Program {
  std::string src;
  std::string name;
  std::vector<std::pair<std::string, std::string>> headers;  // include name, contents
  std::string log;
  std::string image;
  bool compiled = false;
  // Compiled for a real architecture (sm_XY): NVRTC then also has a cubin.
  bool real_arch = false;
};

std::string self_dir() {
  Dl_info info;
  if (dladdr((void*)&self_dir, &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    char* rp = realpath(p.c_str(), nullptr);
    if (rp) {
      p = rp;
      free(rp);
    }
    size_t s = p.rfind('/');
    if (s != std::string::npos) return p.substr(0, s);
  }
  return ".";
}

bool mkdirs(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) return false;
    i = j + 1;
  }
  return true;
}

bool write_file(const std::string& path, const std::string& data) {
  size_t s = path.rfind('/');
  if (s != std::string::npos && !mkdirs(path.substr(0, s))) return false;
  FILE* f = fopen(path.c_str(), "wb");
  if (!f) return false;
  bool ok = fwrite(data.data(), 1, data.size(), f) == data.size();
  return fclose(f) == 0 && ok;
}

bool read_file(const std::string& path, std::string& out) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return false;
  out.clear();
  char buf[65536];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, k);
  fclose(f);
  return true;
}

void remove_tree(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      std::string p = path + "/" + n;
      struct stat st;
      if (lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(p);
      else unlink(p.c_str());
    }
    closedir(d);
  }
  rmdir(path.c_str());
}

// Runs argv (no shell); stderr and stdout go to err_path. Returns the exit status or -1.
int run(const std::vector<std::string>& argv, const std::string& err_path) {
  std::vector<char*> a;
  for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 2, 1);
  pid_t pid;
  int rc = posix_spawnp(&pid, a[0], &fa, nullptr, a.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  size_t p = 0;
  while ((p = s.find(from, p)) != std::string::npos) {
    s.replace(p, from.size(), to);
    p += to.size();
  }
  return s;
}

unsigned long long fnv1a(const std::string& s, unsigned long long h) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string hex64(unsigned long long v) {
  char b[17];
  snprintf(b, sizeof b, "%016llx", v);
  return b;
}

// ------------------------------------------------------------------ rewrite
enum TokKind { T_IDENT, T_STRING, T_NUMBER, T_PUNCT };
struct Tok {
  TokKind kind;
  size_t off, len;
  int line;
  int file;
  bool sys;
};

struct Rewriter {
  const std::string& s;
  std::vector<Tok> toks;
  std::vector<std::string> files;
  std::vector<std::pair<size_t, std::pair<size_t, std::string>>> edits;  // offset -> (len, text)
  std::vector<std::string> kernels;
  std::string error;
  // Checked build: kernels stay out of line, so that the uninstrumented entry
  // stub (which reads the launch's parameters) does not absorb their code.
  bool checked = false;

  explicit Rewriter(const std::string& text, bool check) : s(text), checked(check) {}

  std::string tok(size_t i) const { return i < toks.size() ? s.substr(toks[i].off, toks[i].len) : std::string(); }
  bool is(size_t i, const char* t) const {
    if (i >= toks.size()) return false;
    size_t n = strlen(t);
    return toks[i].len == n && s.compare(toks[i].off, n, t) == 0;
  }
  std::string where(size_t i) const {
    const Tok& t = toks[i];
    std::string f = t.file >= 0 ? files[(size_t)t.file] : "<input>";
    return f + ":" + std::to_string(t.line);
  }

  void lex() {
    size_t i = 0, n = s.size();
    int line = 1, file = -1;
    bool sys = false, bol = true;
    while (i < n) {
      char c = s[i];
      if (c == '\n') {
        line++;
        i++;
        bol = true;
        continue;
      }
      if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
        i++;
        continue;
      }
      if (bol && c == '#') {
        size_t e = s.find('\n', i);
        if (e == std::string::npos) e = n;
        std::string l = s.substr(i, e - i);
        // Line marker: # <line> "<file>" [flags]
        size_t p = 1;
        while (p < l.size() && l[p] == ' ') p++;
        if (p < l.size() && isdigit((unsigned char)l[p])) {
          int ln = atoi(l.c_str() + p);
          size_t q1 = l.find('"', p), q2 = q1 == std::string::npos ? q1 : l.rfind('"');
          if (q1 != std::string::npos && q2 > q1) {
            std::string fname = l.substr(q1 + 1, q2 - q1 - 1);
            std::string flags = l.substr(q2 + 1);
            sys = flags.find(" 3") != std::string::npos;
            file = -1;
            for (size_t k = 0; k < files.size(); k++)
              if (files[k] == fname) file = (int)k;
            if (file < 0) {
              files.push_back(fname);
              file = (int)files.size() - 1;
            }
          }
          line = ln - 1;  // the newline ending the marker brings it to ln
        } else if (l.compare(p, 6, "pragma") == 0) {
          std::string rest = l.substr(p + 6);
          size_t a = rest.find_first_not_of(" \t");
          if (a != std::string::npos && rest.compare(a, 6, "unroll") == 0) {
            std::string cnt = rest.substr(a + 6);
            size_t b = cnt.find_first_not_of(" \t(");
            std::string num;
            while (b != std::string::npos && b < cnt.size() && isdigit((unsigned char)cnt[b])) num += cnt[b++];
            edits.push_back({i, {e - i, num.empty() ? std::string() : "#pragma GCC unroll " + num}});
          }
        }
        i = e;
        continue;
      }
      bol = false;
      Tok t{T_PUNCT, i, 1, line, file, sys};
      if (isalpha((unsigned char)c) || c == '_') {
        size_t j = i;
        while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
        // Raw string literal R"delim( ... )delim" (and u8R, LR, ...)
        if (j < n && s[j] == '"' && s[j - 1] == 'R') {
          size_t par = s.find('(', j);
          if (par != std::string::npos) {
            std::string delim = ")" + s.substr(j + 1, par - j - 1) + "\"";
            size_t end = s.find(delim, par);
            if (end != std::string::npos) {
              for (size_t k = i; k < end; k++)
                if (s[k] == '\n') line++;
              t.kind = T_STRING;
              t.len = end + delim.size() - i;
              toks.push_back(t);
              i = end + delim.size();
              continue;
            }
          }
        }
        if (j < n && (s[j] == '"' || s[j] == '\'') && (j - i <= 2)) {
          i = j;  // encoding prefix: lex the literal itself below
          continue;
        }
        t.kind = T_IDENT;
        t.len = j - i;
        toks.push_back(t);
        i = j;
        continue;
      }
      if (isdigit((unsigned char)c) || (c == '.' && i + 1 < n && isdigit((unsigned char)s[i + 1]))) {
        size_t j = i + 1;
        while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '.' || s[j] == '_' || s[j] == '\'' ||
                         ((s[j] == '+' || s[j] == '-') && (s[j - 1] == 'e' || s[j - 1] == 'E' || s[j - 1] == 'p' ||
                                                           s[j - 1] == 'P'))))
          j++;
        t.kind = T_NUMBER;
        t.len = j - i;
        toks.push_back(t);
        i = j;
        continue;
      }
      if (c == '"' || c == '\'') {
        size_t j = i + 1;
        while (j < n && s[j] != c) {
          if (s[j] == '\\') j++;
          if (j < n && s[j] == '\n') line++;
          j++;
        }
        t.kind = T_STRING;
        t.len = (j < n ? j + 1 : n) - i;
        toks.push_back(t);
        i = i + t.len;
        continue;
      }
      toks.push_back(t);
      i++;
    }
  }

  void edit(size_t off, size_t len, std::string text) { edits.push_back({off, {len, std::move(text)}}); }

  // Replace tokens [a, b] by text, keeping the newlines so line numbers hold.
  void replace_range(size_t a, size_t b, std::string text) {
    size_t off = toks[a].off, end = toks[b].off + toks[b].len;
    for (size_t k = off; k < end; k++)
      if (s[k] == '\n') text += '\n';
    edit(off, end - off, text);
  }

  // Checked builds: 64-byte pads (not variables the checker knows) before and
  // after the variable declared by the statement [start, ...;] so that an
  // overflow lands in a pad instead of the next variable, whichever order g++
  // lays them out in. For a __shared__ variable also a pointer to it, found by
  // name in the symbol table: g++ ignores the section attribute for statics of
  // templates and inline functions, and the checker still has to know them.
  // Not for a function (a '(' outside brackets before the end).
  void guard_variable(size_t start, size_t at, bool shared) {
    size_t e = at;
    int depth = 0;
    std::string name;
    bool named = false;
    for (; e < toks.size(); e++) {
      if (is(e, "(") || is(e, "[") || is(e, "{")) {
        if (depth == 0 && is(e, "(") && !(e > 0 && (is(e - 1, "__attribute__") || is(e - 1, "alignas") ||
                                                  is(e - 1, "decltype") || is(e - 1, "__declspec"))) && !named)
          return;  // a function
        if (depth == 0 && (is(e, "[") || is(e, "{"))) named = true;
        depth++;
      } else if (is(e, ")") || is(e, "]") || is(e, "}")) {
        depth--;
      } else if (depth == 0 && (is(e, ";") || is(e, ",") || is(e, "="))) {
        named = true;
        if (is(e, ";")) break;
      } else if (depth == 0 && !named && toks[e].kind == T_IDENT && e > at) {
        name = tok(e);
      }
    }
    if (e >= toks.size() || name.empty() || name == "__attribute__") return;
    std::string n = std::to_string(guards++);
    std::string sec = shared ? "section(\"frostgrad_emu_shared\"), " : "";
    std::string pad = "static __attribute__((" + sec + "used)) char __frostgrad_emu_pad_" + n;
    edit(toks[start].off, 0, pad + "a[64]; ");
    std::string after = " " + pad + "b[64];";
    if (shared)
      after += " static void* const __frostgrad_emu_shptr_" + n + " __attribute__((used)) = (void*)&" + name + ";";
    edit(toks[e].off + 1, 0, after);
  }
  unsigned guards = 0;

  size_t skip_parens(size_t i) const {  // i at '(' -> index after matching ')'
    int depth = 0;
    for (; i < toks.size(); i++) {
      if (is(i, "(")) depth++;
      else if (is(i, ")") && --depth == 0) return i + 1;
    }
    return i;
  }

  bool analyse() {
    static const char* kSection = "__attribute__((section(\"frostgrad_emu_shared\")))";
    std::vector<bool> brace_is_scope;  // true: namespace / extern "C" block
    std::vector<bool> brace_is_externc;
    size_t stmt_start = 0;
    std::set<std::string> seen;
    for (size_t i = 0; i < toks.size(); i++) {
      const Tok& t = toks[i];
      if (t.kind == T_PUNCT) {
        char c = s[t.off];
        if (c == '{') {
          bool scope = false, externc = false;
          if (i >= 1 && toks[i - 1].kind == T_STRING && is(i - 1, "\"C\"") && i >= 2 && is(i - 2, "extern"))
            scope = externc = true;
          else if (i >= 1 && (is(i - 1, "namespace") || (i >= 2 && is(i - 2, "namespace")) ||
                              (i >= 2 && is(i - 1, "inline") && is(i - 2, "namespace"))))
            scope = true;
          brace_is_scope.push_back(scope);
          brace_is_externc.push_back(externc);
          stmt_start = i + 1;
        } else if (c == '}') {
          if (!brace_is_scope.empty()) {
            brace_is_scope.pop_back();
            brace_is_externc.pop_back();
          }
          stmt_start = i + 1;
        } else if (c == ';') {
          stmt_start = i + 1;
        }
        continue;
      }
      if (t.kind != T_IDENT) continue;
      if (!t.sys && (is(i, "asm") || is(i, "__asm__") || is(i, "__asm"))) {
        error += where(i) + ": error: inline assembly ('" + tok(i) +
                 "') is not supported by the frostgrad CUDA emulation (PTX cannot run on the host); "
                 "write the operation in CUDA C++\n";
        continue;
      }
      if (is(i, "__frostgrad_emu_device__")) {  // checked builds: __device__ / __constant__
        bool file_scope = true;
        for (bool b : brace_is_scope) file_scope = file_scope && b;
        if (file_scope) guard_variable(stmt_start, i, false);
        edit(t.off, t.len, "");
        continue;
      }
      if (is(i, "__global__")) {
        edit(t.off, t.len, checked ? "__attribute__((noinline))" : "");
        bool file_scope = true;
        for (bool b : brace_is_scope) file_scope = file_scope && b;
        if (!file_scope) continue;
        bool externc = false, templ = false;
        for (bool b : brace_is_externc) externc = externc || b;
        for (size_t k = stmt_start; k < i; k++) {
          if (is(k, "extern") && k + 1 < toks.size() && is(k + 1, "\"C\"")) externc = true;
          if (is(k, "template")) templ = true;
        }
        // The name: the first identifier followed by '(' that is not an attribute.
        size_t k = i + 1;
        std::string name;
        while (k < toks.size() && !is(k, ";") && !is(k, "{")) {
          if (is(k, "__attribute__") || is(k, "alignas") || is(k, "__declspec") || is(k, "decltype")) {
            k = (k + 1 < toks.size() && is(k + 1, "(")) ? skip_parens(k + 1) : k + 1;
            continue;
          }
          if (is(k, "[") && k + 1 < toks.size() && is(k + 1, "[")) {
            while (k < toks.size() && !(is(k, "]") && k + 1 < toks.size() && is(k + 1, "]"))) k++;
            k += 2;
            continue;
          }
          if (toks[k].kind == T_IDENT && k + 1 < toks.size() && is(k + 1, "(")) {
            name = tok(k);
            break;
          }
          k++;
        }
        if (!name.empty() && externc && !templ && seen.insert(name).second) kernels.push_back(name);
        continue;
      }
      if (is(i, "__shared__")) {
        bool is_extern = false;
        for (size_t k = stmt_start; k < i; k++)
          if (is(k, "extern")) is_extern = true;
        if (!is_extern) {
          bool has_static = false;
          for (size_t k = stmt_start; k < i + 3 && k < toks.size(); k++)
            if (is(k, "static")) has_static = true;
          if (checked) guard_variable(stmt_start, i, true);
          edit(t.off, t.len, has_static ? std::string(kSection) : "static " + std::string(kSection));
          continue;
        }
        // extern __shared__ <type> name[];  ->  <type>* const& name = <the launch's dynamic shared memory>;
        size_t e = i;
        while (e < toks.size() && !is(e, ";")) e++;
        if (e >= toks.size() || e < i + 4 || !is(e - 1, "]") || !is(e - 2, "[") || toks[e - 3].kind != T_IDENT) {
          error += where(i) + ": error: the frostgrad CUDA emulation understands dynamic shared memory only as "
                              "`extern __shared__ T name[];`\n";
          continue;
        }
        std::string type;
        for (size_t k = i + 1; k < e - 3; k++) {
          if (is(k, "__attribute__") || is(k, "alignas")) {
            k = (k + 1 < toks.size() && is(k + 1, "(")) ? skip_parens(k + 1) - 1 : k;
            continue;
          }
          if (is(k, "extern") || is(k, "static")) continue;
          type += tok(k) + " ";
        }
        // Leading tokens before __shared__ (qualifiers such as volatile) belong to the type too.
        std::string pre;
        for (size_t k = stmt_start; k < i; k++)
          if (!is(k, "extern") && !is(k, "static")) pre += tok(k) + " ";
        type = pre + type;
        if (type.empty()) {
          error += where(i) + ": error: `extern __shared__` declaration without a type\n";
          continue;
        }
        bool file_scope = true;
        for (bool b : brace_is_scope) file_scope = file_scope && b;
        std::string name = tok(e - 3);
        std::string text = std::string(file_scope ? "static " : "") + type + "* const& " + name +
                           " = *reinterpret_cast<" + type + "* const*>(&__frostgrad_emu_dyn_smem);";
        replace_range(stmt_start, e, text);
        i = e - 1;
        continue;
      }
    }
    return error.empty();
  }

  std::string apply() const {
    auto ed = edits;
    // Stable: an insertion (length 0) and a replacement at one offset apply in the order they were made.
    std::stable_sort(ed.begin(), ed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out;
    out.reserve(s.size() + 4096);
    size_t pos = 0;
    for (auto& e : ed) {
      if (e.first < pos) continue;  // overlapping edit (inside a replaced range)
      out.append(s, pos, e.first - pos);
      out += e.second.second;
      pos = e.first + e.second.first;
    }
    out.append(s, pos, std::string::npos);
    return out;
  }
};

// Checked builds: the callbacks g++'s -fsanitize=thread instrumentation calls,
// forwarded to the driver with the access's size, kind and address. They are
// defined in the module itself (no ThreadSanitizer runtime is loaded).
static_assert(FG_ACCESS_READ == 1u && FG_ACCESS_WRITE == 2u && FG_ACCESS_ALIGNED == 8u, "the shim below spells these out");
std::string check_shim() {
  // The module text is compiled as preprocessed (-x c++-cpp-output): no macros here.
  const std::string attr = "__attribute__((visibility(\"hidden\"), no_sanitize_thread, used)) ";
  auto fwd = [&](const std::string& name, const std::string& n, const char* flags) {
    return attr + "void " + name + "(void* a) { __frostgrad_emu_rt->check_access(a, " + n + ", " + flags +
           ", __builtin_return_address(0)); }\n";
  };
  std::string f = "extern \"C\" {\n";
  f += attr + "void __tsan_init() {}\n";
  f += attr + "void __tsan_func_entry(void*) {}\n";
  f += attr + "void __tsan_func_exit() {}\n";
  f += attr + "void __tsan_read_range(void* a, unsigned long n) { __frostgrad_emu_rt->check_access(a, n, 1u, "
              "__builtin_return_address(0)); }\n";
  f += attr + "void __tsan_write_range(void* a, unsigned long n) { __frostgrad_emu_rt->check_access(a, n, 2u, "
              "__builtin_return_address(0)); }\n";
  // FG_ACCESS_READ 1, _WRITE 2, _ALIGNED 8
  for (int n : {1, 2, 4, 8, 16}) {
    std::string N = std::to_string(n);
    f += fwd("__tsan_read" + N, N, "9u");
    f += fwd("__tsan_write" + N, N, "10u");
    f += fwd("__tsan_unaligned_read" + N, N, "1u");
    f += fwd("__tsan_unaligned_write" + N, N, "2u");
    f += fwd("__tsan_volatile_read" + N, N, "9u");
    f += fwd("__tsan_volatile_write" + N, N, "10u");
  }
  f += "}\n";
  return f;
}

std::string footer(const std::vector<std::string>& kernels, bool checked) {
  std::string f = "\n# 1 \"<frostgrad-cuda-emu module footer>\"\n";
  if (checked) f += check_shim();
  f += "extern \"C\" {\n"
       "__attribute__((visibility(\"hidden\"))) FrostgradEmuThread* __frostgrad_emu_thr = nullptr;\n"
       "__attribute__((visibility(\"hidden\"))) FrostgradEmuBlock* __frostgrad_emu_blk = nullptr;\n"
       "__attribute__((visibility(\"hidden\"))) void* __frostgrad_emu_dyn_smem = nullptr;\n"
       "__attribute__((visibility(\"hidden\"))) const FrostgradEmuRuntime* __frostgrad_emu_rt = nullptr;\n"
       "__attribute__((weak, visibility(\"hidden\"))) extern char __start_frostgrad_emu_shared[];\n"
       "__attribute__((weak, visibility(\"hidden\"))) extern char __stop_frostgrad_emu_shared[];\n"
       "}\n"
       "static const FrostgradEmuKernel __frostgrad_emu_kernels[] = {\n";
  for (auto& k : kernels)
    f += "  {\"" + k + "\", &__frostgrad_emu::invoker<decltype(&" + k + ")>::entry<&" + k +
         ">, __frostgrad_emu::invoker<decltype(&" + k + ")>::n, __frostgrad_emu::invoker<decltype(&" + k +
         ")>::sizes, __frostgrad_emu::invoker<decltype(&" + k + ")>::aligns},\n";
  f += "  {nullptr, nullptr, 0, nullptr, nullptr}};\n";
  f += "extern \"C\" __attribute__((visibility(\"default\"), no_sanitize_thread)) int " FROSTGRAD_EMU_MODULE_INIT
       "(const FrostgradEmuRuntime* rt, FrostgradEmuModuleInfo* info) {\n"
       "  if (rt->abi != " + std::to_string(FROSTGRAD_EMU_ABI) + ") return 1;\n"
       "  __frostgrad_emu_rt = rt;\n"
       "  info->abi = " + std::to_string(FROSTGRAD_EMU_ABI) + ";\n"
       "  info->cur_thread = &__frostgrad_emu_thr;\n"
       "  info->cur_block = &__frostgrad_emu_blk;\n"
       "  info->dyn_smem = &__frostgrad_emu_dyn_smem;\n"
       "  info->kernels = __frostgrad_emu_kernels;\n"
       "  info->shared_begin = __start_frostgrad_emu_shared;\n"
       "  info->shared_end = __stop_frostgrad_emu_shared;\n"
       "  if (!info->shared_begin || !info->shared_end) info->shared_begin = info->shared_end = nullptr;\n"
       "  return 0;\n"
       "}\n";
  return f;
}

bool host_has_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("fma");
}

// FROSTGRAD_CUDA_EMU_CHECK names checks (see the driver): any value other than
// empty / none / 0 makes programs compile instrumented.
bool check_requested() {
  const char* e = getenv("FROSTGRAD_CUDA_EMU_CHECK");
  if (!e) return false;
  std::string v = e;
  return !(v.empty() || v == "0" || v == "none" || v == "off");
}

std::string sanitize_name(const std::string& n) {
  std::string base = n;
  size_t s = base.rfind('/');
  if (s != std::string::npos) base = base.substr(s + 1);
  std::string out;
  for (char c : base) out += (isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-') ? c : '_';
  if (out.empty() || out == "." || out == "..") out = "default_program";
  return out;
}

nvrtcResult compile(Program* p, int nopts, const char* const* opts) {
  std::string dir = self_dir();
  std::string incdir = dir + "/include";
  const char* cache_env = getenv("FROSTGRAD_CUDA_EMU_CACHE");
  std::string cache = cache_env && *cache_env ? cache_env : dir + "/cache";
  const char* cxx_env = getenv("FROSTGRAD_CUDA_EMU_CXX");
  std::string cxx = cxx_env && *cxx_env ? cxx_env : "g++";

  std::vector<std::string> pre_flags, user_inc;
  std::string std_flag = "-std=c++20";
  int arch = 900;
  bool ftz = false;
  // NVRTC's default is --fmad=true: the compiler may contract a*b+c into one
  // fused multiply-add (one rounding). The emulation does the same through
  // g++'s -ffp-contract=fast with the host's FMA instructions, so emulated
  // results round like a GPU's rather than like --fmad=false.
  bool fmad = true;
  std::string extra_warn;
  for (int i = 0; i < nopts; i++) {
    std::string o = opts[i] ? opts[i] : "";
    auto val = [&](const std::string& prefix) -> std::string {
      if (o.size() > prefix.size()) return o.substr(prefix.size());
      if (i + 1 < nopts && opts[i + 1]) return opts[++i];
      return "";
    };
    auto starts = [&](const char* pfx) { return o.rfind(pfx, 0) == 0; };
    if (starts("--include-path=")) user_inc.push_back(o.substr(15));
    else if (starts("-I")) user_inc.push_back(val("-I"));
    else if (starts("--define-macro=")) pre_flags.push_back("-D" + o.substr(15));
    else if (starts("-D")) pre_flags.push_back("-D" + val("-D"));
    else if (starts("--undefine-macro=")) pre_flags.push_back("-U" + o.substr(17));
    else if (starts("-U")) pre_flags.push_back("-U" + val("-U"));
    else if (starts("--pre-include=")) { pre_flags.push_back("-include"); pre_flags.push_back(o.substr(14)); }
    else if (o == "-include" && i + 1 < nopts) { pre_flags.push_back("-include"); pre_flags.push_back(opts[++i]); }
    else if (starts("--gpu-architecture=") || starts("-arch=") || o == "-arch" || starts("--gpu-architecture")) {
      std::string a = starts("--gpu-architecture=") ? o.substr(19) : starts("-arch=") ? o.substr(6) : val(o);
      std::string digits;
      for (char c : a)
        if (isdigit((unsigned char)c)) digits += c;
      if (digits.empty()) {
        p->log = "nvrtc: error: invalid value for --gpu-architecture: '" + a + "'\n";
        return NVRTC_ERROR_INVALID_OPTION;
      }
      arch = atoi(digits.c_str()) * 10;
      p->real_arch = a.rfind("sm_", 0) == 0;
    } else if (starts("--std=") || starts("-std=")) {
      std::string v = o.substr(o.find('=') + 1);
      if (v != "c++03" && v != "c++11" && v != "c++14" && v != "c++17" && v != "c++20") {
        p->log = "nvrtc: error: invalid value for --std: '" + v + "'\n";
        return NVRTC_ERROR_INVALID_OPTION;
      }
      std_flag = "-std=" + std::string(v == "c++03" || v == "c++11" || v == "c++14" ? "c++17" : v);
    } else if (o == "--ftz=true" || o == "-ftz=true" || o == "--use_fast_math" || o == "-use_fast_math") {
      ftz = true;
    } else if (o == "--fmad=true" || o == "-fmad=true" || o == "--fmad=false" || o == "-fmad=false") {
      fmad = o.find("true") != std::string::npos;
    } else if (starts("--fmad=") || starts("-fmad=")) {
      p->log = "nvrtc: error: invalid value for --fmad: '" + o.substr(o.find('=') + 1) + "'\n";
      return NVRTC_ERROR_INVALID_OPTION;
    } else if (o == "--disable-warnings" || o == "-w") {
      extra_warn = "-w";
    } else if (starts("--prec-div=") || starts("-prec-div=") ||
               starts("--prec-sqrt=") || starts("-prec-sqrt=") || starts("--ftz=") || starts("-ftz=") ||
               starts("--maxrregcount=") || starts("-maxrregcount=") || o == "-lineinfo" ||
               o == "--generate-line-info" || o == "-G" || o == "--device-debug" || starts("-rdc=") ||
               starts("--relocatable-device-code=") || starts("-dopt=") || starts("--dopt=") ||
               o == "--extra-device-vectorization" || o == "-extra-device-vectorization" || o == "-default-device" ||
               o == "--device-as-default-execution-space" || o == "--restrict" || o == "-restrict" ||
               starts("--ptxas-options=") || starts("-Xptxas") || o == "--dlink-time-opt" || o == "-dlto" ||
               starts("--time=") || starts("--split-compile=") || o == "--device-int128" ||
               o == "-device-int128" || starts("--optimization-info=") || o == "--display-error-number" ||
               o == "--no-display-error-number" || starts("--diag-") || starts("-diag-") ||
               starts("--brief-diagnostics") || starts("--builtin-") || o == "--minimal" || o == "-minimal" ||
               o == "--fdevice-syntax-only" || o == "-ewp" || o == "--extensible-whole-program" ||
               starts("--jump-table-density") || o == "--no-source-include" || starts("--device-stack-protector") ||
               starts("-fdevice-time-trace") || o == "--Wreorder" || o == "--Wno-deprecated-declarations" ||
               o == "-Wno-deprecated-declarations" || o == "--allow-unsupported-compiler") {
      // accepted; no effect on the host (see README: no timing model)
    } else {
      p->log = "nvrtc: error: unrecognized option '" + o + "' (frostgrad CUDA emulation)\n";
      return NVRTC_ERROR_INVALID_OPTION;
    }
  }

  if (!mkdirs(cache)) {
    p->log = "nvrtc (frostgrad emulation): cannot create the cache folder " + cache + ": " + strerror(errno) + "\n";
    return NVRTC_ERROR_INTERNAL_ERROR;
  }
  std::string tmpl = cache + "/tmp-XXXXXX";
  std::vector<char> tb(tmpl.begin(), tmpl.end());
  tb.push_back(0);
  if (!mkdtemp(tb.data())) {
    p->log = "nvrtc (frostgrad emulation): mkdtemp failed: " + std::string(strerror(errno)) + "\n";
    return NVRTC_ERROR_INTERNAL_ERROR;
  }
  std::string tmp = tb.data();
  struct Cleanup {
    std::string d;
    ~Cleanup() {
      const char* keep = getenv("FROSTGRAD_CUDA_EMU_KEEP");
      if (!(keep && *keep)) remove_tree(d);
    }
  } cleanup{tmp};

  std::string srcname = sanitize_name(p->name);
  std::string srcdir = tmp + "/src";
  std::string srcpath = srcdir + "/" + srcname;
  for (auto& h : p->headers) {
    if (h.first.find("..") != std::string::npos || (!h.first.empty() && h.first[0] == '/')) {
      p->log = "nvrtc (frostgrad emulation): unsupported header name '" + h.first + "'\n";
      return NVRTC_ERROR_INVALID_INPUT;
    }
    if (!write_file(srcdir + "/" + h.first, h.second)) return NVRTC_ERROR_INTERNAL_ERROR;
  }
  if (!write_file(srcpath, p->src)) return NVRTC_ERROR_INTERNAL_ERROR;

  auto clean_log = [&](std::string log) {
    log = replace_all(log, srcdir + "/", "");
    log = replace_all(log, tmp + "/", "");
    return log;
  };

  // 1. preprocess
  std::vector<std::string> pre = {cxx, "-E", "-x", "c++", std_flag, "-D__CUDACC__", "-D__CUDACC_RTC__",
                                  "-D__NVCC__", "-D__CUDA_ARCH__=" + std::to_string(arch),
                                  "-D__CUDACC_VER_MAJOR__=13", "-D__CUDACC_VER_MINOR__=0",
                                  "-isystem", incdir, "-include", "frostgrad_cuda_emu.h", "-iquote", srcdir};
  if (ftz) pre.push_back("-D__USE_FAST_MATH__");
  const bool checked = check_requested();
  if (checked) pre.push_back("-D__FROSTGRAD_EMU_CHECK__");
  for (auto& f : pre_flags) pre.push_back(f);
  for (auto& d : user_inc) pre.push_back("-I" + d);
  pre.push_back(srcpath);
  pre.push_back("-o");
  pre.push_back(tmp + "/pre.ii");
  int rc = run(pre, tmp + "/pre.log");
  std::string log;
  read_file(tmp + "/pre.log", log);
  if (rc != 0) {
    p->log = clean_log(log);
    if (rc < 0) p->log += "nvrtc (frostgrad emulation): could not run '" + cxx + "' (is g++ installed?)\n";
    return NVRTC_ERROR_COMPILATION;
  }
  std::string text;
  if (!read_file(tmp + "/pre.ii", text)) return NVRTC_ERROR_INTERNAL_ERROR;
  // Line markers name the program's files by their NVRTC names, not by the
  // temporary folder: messages read like NVRTC's and the cache key is stable.
  text = replace_all(text, "\"" + srcdir + "/", "\"");

  // 2. rewrite
  Rewriter rw(text, checked);
  rw.lex();
  if (!rw.analyse()) {
    p->log = clean_log(log + rw.error);
    return NVRTC_ERROR_COMPILATION;
  }
  std::string out = rw.apply() + footer(rw.kernels, checked);

  std::vector<std::string> cc = {cxx, "-x", "c++-cpp-output", std_flag, "-O2", "-fPIC", "-shared",
                                 "-fno-strict-aliasing", "-fno-math-errno", "-fwrapv",
                                 "-fno-exceptions", "-fno-gnu-unique", "-Wno-unknown-pragmas", "-Wl,-z,defs", "-Wl,-z,noexecstack"};
  if (fmad && !host_has_fma()) {
    // Without FMA instructions g++ cannot contract; say so rather than
    // silently computing --fmad=false results.
    log += "nvrtc (frostgrad emulation): warning: this CPU has no FMA instructions, so a*b+c is not contracted "
           "(results round like --fmad=false)\n";
    fmad = false;
  }
  if (fmad) {
    cc.push_back("-mfma");
    cc.push_back("-ffp-contract=fast");
  } else {
    cc.push_back("-ffp-contract=off");
  }
  if (!extra_warn.empty()) cc.push_back(extra_warn);
  // Checked build: compile with g++'s ThreadSanitizer instrumentation (the
  // callbacks are the shim in the footer, not libtsan: the object is linked
  // separately, without -fsanitize, so libtsan is never loaded), keep
  // aggregate loads whole (-fno-tree-sra: a float4 load stays one 16-byte
  // access whose alignment is checked) and line tables for the reports.
  if (checked) {
    cc.erase(std::find(cc.begin(), cc.end(), std::string("-shared")));
    for (const char* f : {"-c", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-fno-tree-sra", "-g1"})
      cc.push_back(f);
  }
  std::string key;
  for (auto& a : cc) key += a + "\n";
  key += kEmuVersion;
  key += "\nabi " + std::to_string(FROSTGRAD_EMU_ABI) + "\n";
  std::string hash = hex64(fnv1a(key + out, 0xcbf29ce484222325ull)) + hex64(fnv1a(out + key, 0x84222325cbf29ce4ull));
  std::string so = cache + "/" + hash + ".so";

  struct stat st;
  if (stat(so.c_str(), &st) != 0) {
    std::string kpath = tmp + "/" + srcname + ".emu.ii";
    if (!write_file(kpath, out)) return NVRTC_ERROR_INTERNAL_ERROR;
    std::string tmp_so = tmp + "/out.so";
    std::string tmp_o = tmp + "/out.o";
    cc.push_back(kpath);
    cc.push_back("-o");
    cc.push_back(checked ? tmp_o : tmp_so);
    if (!checked) cc.push_back("-lm");
    rc = run(cc, tmp + "/cc.log");
    std::string cclog;
    read_file(tmp + "/cc.log", cclog);
    log += cclog;
    if (rc == 0 && checked) {
      rc = run({cxx, "-shared", "-fPIC", tmp_o, "-o", tmp_so, "-lm", "-Wl,-z,defs", "-Wl,-z,noexecstack"},
               tmp + "/ld.log");
      read_file(tmp + "/ld.log", cclog);
      log += cclog;
    }
    if (rc != 0) {
      p->log = clean_log(log);
      if (rc < 0) p->log += "nvrtc (frostgrad emulation): could not run '" + cxx + "'\n";
      return NVRTC_ERROR_COMPILATION;
    }
    if (rename(tmp_so.c_str(), so.c_str()) != 0) {
      p->log = "nvrtc (frostgrad emulation): cannot store " + so + ": " + strerror(errno) + "\n";
      return NVRTC_ERROR_INTERNAL_ERROR;
    }
  }
  p->log = clean_log(log);
  std::string img = "//frostgrad-cuda-emu image\n// Not PTX: a host shared object built by the frostgrad NVRTC emulation.\n";
  img += ".abi " + std::to_string(FROSTGRAD_EMU_ABI) + "\n";
  img += ".target sm_" + std::to_string(arch / 10) + "\n";
  img += std::string(".ftz ") + (ftz ? "1" : "0") + "\n";
  img += std::string(".check ") + (checked ? "1" : "0") + "\n";
  img += ".so " + so + "\n";
  for (auto& k : rw.kernels) img += ".entry " + k + "\n";
  p->image = img;
  p->compiled = true;
  return NVRTC_SUCCESS;
}

}  // namespace

EXPORT const char* nvrtcGetErrorString(nvrtcResult r) {
  switch (r) {
    case 0: return "NVRTC_SUCCESS";
    case 1: return "NVRTC_ERROR_OUT_OF_MEMORY";
    case 2: return "NVRTC_ERROR_PROGRAM_CREATION_FAILURE";
    case 3: return "NVRTC_ERROR_INVALID_INPUT";
    case 4: return "NVRTC_ERROR_INVALID_PROGRAM";
    case 5: return "NVRTC_ERROR_INVALID_OPTION";
    case 6: return "NVRTC_ERROR_COMPILATION";
    case 7: return "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE";
    case 8: return "NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION";
    case 9: return "NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION";
    case 10: return "NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID";
    case 11: return "NVRTC_ERROR_INTERNAL_ERROR";
    default: return "NVRTC_ERROR unknown";
  }
}
EXPORT nvrtcResult nvrtcVersion(int* major, int* minor) {
  if (!major || !minor) return NVRTC_ERROR_INVALID_INPUT;
  *major = 13;
  *minor = 0;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetNumSupportedArchs(int* n) {
  if (!n) return NVRTC_ERROR_INVALID_INPUT;
  *n = 1;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetSupportedArchs(int* a) {
  if (!a) return NVRTC_ERROR_INVALID_INPUT;
  a[0] = 90;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char* name, int nh, const char* const* headers,
                                      const char* const* names) {
  if (!prog || !src || nh < 0 || (nh > 0 && (!headers || !names))) return NVRTC_ERROR_INVALID_INPUT;
  Program* p = new Program();
  p->src = src;
  p->name = name && *name ? name : "default_program";
  for (int i = 0; i < nh; i++) {
    if (!names[i]) {
      delete p;
      return NVRTC_ERROR_INVALID_INPUT;
    }
    p->headers.push_back({names[i], headers[i] ? headers[i] : ""});
  }
  *prog = p;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcDestroyProgram(void** prog) {
  if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
  delete (Program*)*prog;
  *prog = nullptr;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcCompileProgram(void* prog, int nopts, const char* const* opts) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (nopts < 0 || (nopts > 0 && !opts)) return NVRTC_ERROR_INVALID_INPUT;
  p->log.clear();
  p->image.clear();
  p->compiled = false;
  return compile(p, nopts, opts);
}
EXPORT nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* n) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!n) return NVRTC_ERROR_INVALID_INPUT;
  *n = p->log.size() + 1;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetProgramLog(void* prog, char* out) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!out) return NVRTC_ERROR_INVALID_INPUT;
  memcpy(out, p->log.c_str(), p->log.size() + 1);
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetPTXSize(void* prog, size_t* n) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!n) return NVRTC_ERROR_INVALID_INPUT;
  if (!p->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
  *n = p->image.size() + 1;
  return NVRTC_SUCCESS;
}
// The emulation's image serves as PTX and, for a real architecture, as the
// cubin; like NVRTC, a virtual architecture (compute_XY) has no cubin: size 0.
EXPORT nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* n) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!n) return NVRTC_ERROR_INVALID_INPUT;
  if (!p->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
  *n = p->real_arch ? p->image.size() + 1 : 0;
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetCUBIN(void* prog, char* out) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!out) return NVRTC_ERROR_INVALID_INPUT;
  if (!p->compiled || !p->real_arch) return NVRTC_ERROR_INVALID_PROGRAM;
  memcpy(out, p->image.c_str(), p->image.size() + 1);
  return NVRTC_SUCCESS;
}
EXPORT nvrtcResult nvrtcGetPTX(void* prog, char* out) {
  Program* p = (Program*)prog;
  if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
  if (!out) return NVRTC_ERROR_INVALID_INPUT;
  if (!p->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
  memcpy(out, p->image.c_str(), p->image.size() + 1);
  return NVRTC_SUCCESS;
}
