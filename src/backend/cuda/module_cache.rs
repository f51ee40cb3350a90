//! Compiles each `kernels/*.cu` once per device with NVRTC and keeps the
//! loaded functions.
//!
//! The program text is `kernels/common.cuh` followed by the kernel file (the
//! kernels use no `#include`) and the layout checks of its parameter structs
//! (`params.rs`). It is compiled for the device's real
//! architecture (`--gpu-architecture=sm_XY`), which gives a cubin the driver
//! loads as is, with no PTX JIT step. Only when NVRTC has no cubin for that
//! architecture (a device newer than the compiler) does it fall back to PTX
//! for the newest virtual architecture NVRTC knows, which the driver then
//! JIT-compiles. No fast-math options: results must match the CPU backend.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

use crate::error::{Error, Result};

/// Text prepended to every kernel file.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// The kernel files, by the name the launch sites use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Conv2d,
    BatchNorm,
    Pool,
    Gemm,
    Elementwise,
    Loss,
    Sgd,
    General,
    /// Two test programs defining a kernel of the same name (`which_file`).
    #[cfg(test)]
    TestA,
    #[cfg(test)]
    TestB,
}

impl KernelFile {
    /// Every kernel file (not the test programs).
    #[cfg(test)]
    pub const ALL: [KernelFile; 8] = [
        KernelFile::Conv2d,
        KernelFile::BatchNorm,
        KernelFile::Pool,
        KernelFile::Gemm,
        KernelFile::Elementwise,
        KernelFile::Loss,
        KernelFile::Sgd,
        KernelFile::General,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            KernelFile::Conv2d => "conv2d.cu",
            KernelFile::BatchNorm => "batch_norm.cu",
            KernelFile::Pool => "pool.cu",
            KernelFile::Gemm => "gemm.cu",
            KernelFile::Elementwise => "elementwise.cu",
            KernelFile::Loss => "loss.cu",
            KernelFile::Sgd => "sgd.cu",
            KernelFile::General => "general.cu",
            #[cfg(test)]
            KernelFile::TestA => "test_a.cu",
            #[cfg(test)]
            KernelFile::TestB => "test_b.cu",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            KernelFile::Conv2d => include_str!("../../../kernels/conv2d.cu"),
            KernelFile::BatchNorm => include_str!("../../../kernels/batch_norm.cu"),
            KernelFile::Pool => include_str!("../../../kernels/pool.cu"),
            KernelFile::Gemm => include_str!("../../../kernels/gemm.cu"),
            KernelFile::Elementwise => include_str!("../../../kernels/elementwise.cu"),
            KernelFile::Loss => include_str!("../../../kernels/loss.cu"),
            KernelFile::Sgd => include_str!("../../../kernels/sgd.cu"),
            KernelFile::General => include_str!("../../../kernels/general.cu"),
            #[cfg(test)]
            KernelFile::TestA => {
                "extern \"C\" __global__ void which_file(int* out) { out[0] = 1; }\n"
            }
            #[cfg(test)]
            KernelFile::TestB => {
                "extern \"C\" __global__ void which_file(int* out) { out[0] = 2; }\n"
            }
        }
    }
}

/// Loaded modules and functions of one device. Functions are keyed by file
/// and name: two files may define kernels of the same name, and each launch
/// site must get the one of the file it names.
#[derive(Default)]
pub struct KernelCache {
    modules: Mutex<HashMap<KernelFile, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(KernelFile, &'static str), CudaFunction>>,
}

impl KernelCache {
    /// The kernel `name` of `file`, compiling and loading the file on first use.
    pub fn function(
        &self,
        ctx: &Arc<CudaContext>,
        compute_capability: (i32, i32),
        file: KernelFile,
        name: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(file, name))
        {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(&file) {
                Some(m) => m.clone(),
                None => {
                    let image = compile(file, compute_capability)?;
                    let m = ctx
                        .load_module(image)
                        .map_err(|e| Error::Cuda(format!("loading {}: {e}", file.file_name())))?;
                    modules.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel {name} in {}: {e}", file.file_name())))?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((file, name), f.clone());
        Ok(f)
    }
}

/// Compiles `file` for a device of the given compute capability.
pub fn compile(file: KernelFile, compute_capability: (i32, i32)) -> Result<Ptx> {
    compile_program(file.file_name(), &program_text(file), compute_capability)
}

/// What NVRTC compiles for `file`: `common.cuh`, the file, and the layout
/// checks of its parameter structs last, after the declarations they check
/// (params.rs).
pub(crate) fn program_text(file: KernelFile) -> String {
    format!(
        "{COMMON}\n{}\n{}",
        file.source(),
        super::params::layout_checks(file)
    )
}

/// Compiles program `text` (named `name` in messages) for a device of the
/// given compute capability.
pub(crate) fn compile_program(name: &str, text: &str, (major, minor): (i32, i32)) -> Result<Ptx> {
    let real = format!("sm_{major}{minor}");
    match compile_for(name, text, &real, true) {
        Ok(image) => Ok(image),
        Err(first) => {
            // A device newer than this NVRTC: PTX for the newest virtual
            // architecture it supports, JIT-compiled by the driver.
            let wanted = major * 10 + minor;
            let Some(arch) = supported_archs().into_iter().filter(|&a| a <= wanted).max() else {
                return Err(first);
            };
            if arch == wanted {
                return Err(first);
            }
            compile_for(name, text, &format!("compute_{arch}"), false).map_err(|_| first)
        }
    }
}

fn supported_archs() -> Vec<i32> {
    let mut n = 0;
    // SAFETY: NVRTC writes one int.
    if unsafe { nvrtc_sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .is_err()
        || n <= 0
    {
        return Vec::new();
    }
    let mut archs = vec![0i32; n as usize];
    // SAFETY: the buffer holds the `n` ints NVRTC reported.
    if unsafe { nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .is_err()
    {
        return Vec::new();
    }
    archs
}

/// Owns an `nvrtcProgram` and destroys it on every path.
struct Program {
    handle: nvrtc_sys::nvrtcProgram,
    _source: CString,
    _name: CString,
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `handle` came from nvrtcCreateProgram and is destroyed once.
        let _ = unsafe { nvrtc::destroy_program(self.handle) };
    }
}

fn compile_for(name: &str, text: &str, arch: &str, want_cubin: bool) -> Result<Ptx> {
    let fail = |what: String| Error::Cuda(format!("NVRTC, {name} for {arch}: {what}"));
    let source = CString::new(text).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(name).map_err(|_| fail("bad file name".into()))?;
    let handle = nvrtc::create_program(&source, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let program = Program {
        handle,
        _source: source,
        _name: name,
    };
    // NVRTC 13's default dialect (C++17) is what the kernels are written in.
    let options = [format!("--gpu-architecture={arch}")];
    // SAFETY: a live program from create_program.
    if let Err(e) = unsafe { nvrtc::compile_program(program.handle, &options) } {
        // SAFETY: as above; the log is a NUL-terminated string.
        let log = unsafe { nvrtc::get_program_log(program.handle) }
            .map(|raw| c_chars_to_string(&raw))
            .unwrap_or_default();
        return Err(fail(format!("{e:?}\n{log}")));
    }
    if want_cubin {
        let mut size = 0usize;
        // SAFETY: a compiled program; NVRTC writes one size.
        let has_cubin = unsafe { nvrtc_sys::nvrtcGetCUBINSize(program.handle, &mut size) }
            .result()
            .is_ok()
            && size > 0;
        if has_cubin {
            let mut cubin = vec![0u8; size];
            // SAFETY: the buffer has the size NVRTC reported.
            unsafe { nvrtc_sys::nvrtcGetCUBIN(program.handle, cubin.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| fail(format!("{e:?}")))?;
            return Ok(Ptx::from_binary(cubin));
        }
    }
    // SAFETY: a compiled program.
    let ptx = unsafe { nvrtc::get_ptx(program.handle) }.map_err(|e| fail(format!("{e:?}")))?;
    Ok(Ptx::from_src(c_chars_to_string(&ptx)))
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::cuda_emu;
    use cudarc::driver::{LaunchConfig, PushKernelArg};

    /// Runs `name` of `file` with one thread and returns what it wrote.
    fn run(file: KernelFile, name: &'static str) -> i32 {
        let dev = crate::backend::cuda::device::get(0).unwrap();
        let f = dev
            .kernels()
            .function(dev.stream().context(), dev.compute_capability(), file, name)
            .unwrap();
        let mut out = dev.stream().alloc_zeros::<i32>(1).unwrap();
        let mut builder = dev.stream().launch_builder(&f);
        builder.arg(&mut out);
        let one_thread = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `which_file(int* out)` writes out[0]; `out` holds one int,
        // and one thread writes it (no race under the emulation's checks).
        unsafe { builder.launch(one_thread) }.unwrap();
        dev.stream().clone_dtoh(&out).unwrap()[0]
    }

    /// Two files defining a kernel of the same name: each launch gets its
    /// own file's kernel, whichever was loaded first and however often the
    /// cache is asked.
    #[test]
    fn functions_are_keyed_by_file_and_name() {
        cuda_emu::cuda_test(
            "backend::cuda::module_cache::tests::functions_are_keyed_by_file_and_name",
            || {
                assert_eq!(run(KernelFile::TestA, "which_file"), 1);
                assert_eq!(run(KernelFile::TestB, "which_file"), 2);
                assert_eq!(run(KernelFile::TestA, "which_file"), 1);
                assert_eq!(run(KernelFile::TestB, "which_file"), 2);
            },
        );
    }
}
