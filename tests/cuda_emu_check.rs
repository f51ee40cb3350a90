//! The emulation as a kernel checker (`FROSTGRAD_CUDA_EMU_CHECK`, see
//! cuda-emu/README.md): for each class of bug a wrong kernel
//! (`tests/cuda_emu_kernels/check.cu`, `bad_*`) must be reported, through the
//! driver entry points cudarc uses, with the check's name, the kernel, block,
//! thread and the memory involved, and make the launch fail; the correct
//! kernels (`ok_*`) must pass every check without a report.
//!
//! Each test body runs in a child process on the emulation with the checks
//! enabled (a hazard's error is sticky, so one wrong kernel per process); the
//! parent asserts on the child's stderr.

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

use std::process::Command;
use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

const CHECK: &str = include_str!("cuda_emu_kernels/check.cu");

/// Runs `body` in a child process on the emulation with
/// `FROSTGRAD_CUDA_EMU_CHECK=checks` (and `envs`); returns the child's stderr
/// after asserting that the child ran this test and passed.
/// In the child it runs `body` and returns `None`.
fn checked(name: &str, checks: &str, envs: &[(&str, &str)], body: impl FnOnce()) -> Option<String> {
    if cuda_emu::is_child(name) {
        body();
        return None;
    }
    let dir = cuda_emu::emu_dir();
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(&exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LD_LIBRARY_PATH", dir)
        .env("FROSTGRAD_CUDA_EMU_CHILD", name)
        .env("FROSTGRAD_CUDA", "emu")
        .env("FROSTGRAD_CUDA_EMU_CHECK", checks)
        .env_remove("FROSTGRAD_CUDA_EMU_SHUFFLE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- {name} with FROSTGRAD_CUDA_EMU_CHECK={checks} ---\n{stdout}\n{stderr}");
    assert!(out.status.success(), "child failed ({})", out.status);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child did not run {name}"
    );
    Some(stderr)
}

fn module(ctx: &Arc<CudaContext>) -> Arc<CudaModule> {
    let opts = CompileOptions {
        arch: Some("compute_90"),
        name: Some("check.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(CHECK, opts).expect("check.cu compiles");
    ctx.load_module(ptx).expect("load_module")
}

fn setup(func: &str) -> (Arc<CudaStream>, Arc<CudaModule>, CudaFunction) {
    let ctx = CudaContext::new(0).expect("CudaContext::new");
    let m = module(&ctx);
    let f = m.load_function(func).expect("load_function");
    (ctx.default_stream(), m, f)
}

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn assert_err(r: Result<(), DriverError>, want: CUresult) {
    match r {
        Err(DriverError(e)) => assert_eq!(e, want),
        Ok(()) => panic!("the launch succeeded; expected {want:?}"),
    }
}

/// The one report line of `check` in `stderr`, which must name every part.
fn report<'a>(stderr: &'a str, check: &str, parts: &[&str]) -> &'a str {
    let prefix = format!("frostgrad-cuda-emu: {check}: ");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"));
    for p in parts {
        assert!(line.contains(p), "{p:?} missing from: {line}");
    }
    line
}

fn clean(stderr: &str) {
    assert!(
        !stderr.contains("frostgrad-cuda-emu:"),
        "correct kernels were reported:\n{stderr}"
    );
}

// ------------------------------------------------------------------ memcheck

#[test]
fn memcheck_far_out_of_bounds_write_is_reported_every_time() {
    // The case: without the check this lands in host memory in most runs.
    for run in 0..3 {
        let Some(err) = checked(
            "memcheck_far_out_of_bounds_write_is_reported_every_time",
            "memcheck",
            &[("FROSTGRAD_CHECK_TEST_RUN", &run.to_string())],
            || {
                let (stream, _m, f) = setup("bad_far_write");
                let mut out = stream.alloc_zeros::<f32>(64).unwrap();
                let n = 64i32;
                let mut b = stream.launch_builder(&f);
                b.arg(&mut out).arg(&n);
                // SAFETY: the kernel is wrong on purpose; the checker stops the write.
                assert_err(
                    unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                    CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
                );
                // Sticky, like a real context after a fault.
                assert!(stream.synchronize().is_err());
            },
        ) else {
            return;
        };
        let line = report(
            &err,
            "memcheck",
            &[
                "kernel 'bad_far_write' block (0,0,0) thread (0,0,0)",
                "invalid write of 4 bytes",
                // out[0 + 64*4096]: 1048576 bytes from the start, 1048320 past the end
                "1048320 bytes past the end of the 256-byte allocation at 0x",
                "(at check.cu:",
            ],
        );
        assert!(!line.contains("??"), "{line}");
    }
}

#[test]
fn memcheck_write_before_an_allocation() {
    let Some(err) = checked(
        "memcheck_write_before_an_allocation",
        "memcheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_write_before");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let n = 64i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: wrong on purpose; nothing is written.
            assert_err(
                unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &["thread (0,0,0)", "12 bytes before the 256-byte allocation"],
    );
}

#[test]
fn memcheck_shared_array_bounds_are_per_variable() {
    let Some(err) = checked(
        "memcheck_shared_array_bounds_are_per_variable",
        "memcheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_shared_overflow");
            let mut out = stream.alloc_zeros::<f32>(32).unwrap();
            let k = 1i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&k);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(1, 32, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "thread (31,0,0)",
            "past the end of __shared__ 'bad_shared_overflow::first' (128 bytes)",
        ],
    );
}

#[test]
fn memcheck_dynamic_shared_memory_has_the_launch_size() {
    let Some(err) = checked(
        "memcheck_dynamic_shared_memory_has_the_launch_size",
        "memcheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_dynamic_shared");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let n = 40i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: wrong on purpose: 40 floats of dynamic shared memory for 64 threads.
            assert_err(
                unsafe { b.launch(cfg(1, 64, 40 * 4)) }.map(|_| ()),
                CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "thread (40,0,0)",
            "offset 160 of the dynamic shared memory, of which the launch gave 160 bytes",
        ],
    );
}

#[test]
fn memcheck_misaligned_float4_load() {
    let Some(err) = checked("memcheck_misaligned_float4_load", "memcheck", &[], || {
        let (stream, _m, f) = setup("bad_misaligned_float4");
        let inp = stream.clone_htod(&vec![1.0f32; 256]).unwrap();
        let mut out = stream.alloc_zeros::<f32>(32).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&inp).arg(&mut out);
        // SAFETY: wrong on purpose (in bounds, misaligned).
        assert_err(
            unsafe { b.launch(cfg(1, 32, 0)) }.map(|_| ()),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        );
    }) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "invalid read of 16 bytes",
            "misaligned",
            "offset 4 of the 1024-byte allocation",
        ],
    );
}

#[test]
fn memcheck_use_after_free() {
    let Some(err) = checked("memcheck_use_after_free", "memcheck", &[], || {
        let (stream, _m, f) = setup("bad_use_after_free");
        let gone = stream.clone_htod(&vec![1.0f32; 32]).unwrap();
        let mut out = stream.alloc_zeros::<f32>(32).unwrap();
        let ptr: u64 = {
            let (p, _sync) = gone.device_ptr(&stream);
            p
        };
        drop(gone);
        stream.synchronize().unwrap();
        // Allocations made after the free do not take its addresses while checking.
        let _later = stream.alloc_zeros::<f32>(32).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&ptr).arg(&mut out);
        // SAFETY: wrong on purpose: `ptr` was freed.
        assert_err(
            unsafe { b.launch(cfg(1, 32, 0)) }.map(|_| ()),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        );
    }) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "invalid read of 4 bytes",
            "offset 0 of the 128-byte allocation at",
            "which has been freed",
        ],
    );
}

#[test]
fn memcheck_template_shared_and_device_globals_have_bounds() {
    let Some(err) = checked(
        "memcheck_template_shared_and_device_globals_have_bounds",
        "memcheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_template_shared");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let k = 2i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&k);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "thread (62,0,0)",
            "0 bytes past the end of __shared__ 'stage<64>(float, int)::tile' (256 bytes)",
        ],
    );
}

#[test]
fn memcheck_device_global_bounds() {
    let Some(err) = checked("memcheck_device_global_bounds", "memcheck", &[], || {
        let (stream, _m, f) = setup("bad_device_global");
        let mut out = stream.alloc_zeros::<f32>(32).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&mut out);
        // SAFETY: wrong on purpose.
        assert_err(
            unsafe { b.launch(cfg(1, 32, 0)) }.map(|_| ()),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        );
    }) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "thread (16,0,0)",
            "past the end of __device__ 'table' (64 bytes)",
        ],
    );
}

#[test]
fn memcheck_memcpy_in_a_kernel() {
    let Some(err) = checked("memcheck_memcpy_in_a_kernel", "memcheck", &[], || {
        let (stream, _m, f) = setup("copy_rows");
        let src = stream.clone_htod(&vec![1.0f32; 4 * 16]).unwrap();
        let mut dst = stream.alloc_zeros::<f32>(4 * 16).unwrap();
        let (n, extra) = (16i32, 1i32);
        let mut b = stream.launch_builder(&f);
        b.arg(&mut dst).arg(&src).arg(&n).arg(&extra);
        // SAFETY: wrong on purpose: the last row copies one float too many.
        assert_err(
            unsafe { b.launch(cfg(4, 32, 0)) }.map(|_| ()),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        );
    }) else {
        return;
    };
    report(
        &err,
        "memcheck",
        &[
            "kernel 'copy_rows' block (3,0,0) thread (0,0,0): invalid read of 68 bytes",
            "offset 192 of the 256-byte allocation",
            "ends 4 bytes past its end",
        ],
    );
}

// ------------------------------------------------------------------ racecheck

#[test]
fn racecheck_missing_barrier_in_shared_memory() {
    let Some(err) = checked(
        "racecheck_missing_barrier_in_shared_memory",
        "racecheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_shared_race");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose (a race, in bounds).
            assert_err(
                unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    // In thread order thread 0 reads s[1] before thread 1 writes it.
    report(
        &err,
        "racecheck",
        &[
            "write-after-read hazard: thread (1,0,0) writes offset 4 of __shared__ 'bad_shared_race::s' (1024 bytes)",
            "read by thread (0,0,0) since the last __syncthreads()",
        ],
    );
    report(
        &err,
        "racecheck",
        &["kernel 'bad_shared_race' block (0,0,0)"],
    );
}

#[test]
fn racecheck_missing_barrier_in_shuffled_order() {
    let Some(err) = checked(
        "racecheck_missing_barrier_in_shuffled_order",
        "racecheck",
        &[("FROSTGRAD_CUDA_EMU_SHUFFLE", "5")],
        || {
            let (stream, _m, f) = setup("bad_shared_race");
            let mut out = stream.alloc_zeros::<f32>(256).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(1, 256, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    assert!(err.contains("frostgrad-cuda-emu: racecheck: "), "{err}");
    assert!(err.contains("__shared__ 'bad_shared_race::s'"), "{err}");
}

#[test]
fn racecheck_threads_of_a_block_writing_one_global_word() {
    let Some(err) = checked(
        "racecheck_threads_of_a_block_writing_one_global_word",
        "racecheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_global_race_in_block");
            let mut out = stream.alloc_zeros::<f32>(4).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(1, 32, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "racecheck",
        &[
            "write-after-write hazard: thread (1,0,0) writes offset 0 of the 16-byte allocation",
            "written by thread (0,0,0)",
        ],
    );
}

#[test]
fn racecheck_two_blocks_writing_one_global_word() {
    let Some(err) = checked(
        "racecheck_two_blocks_writing_one_global_word",
        "racecheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_blocks_race");
            let mut out = stream.alloc_zeros::<f32>(32).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(3, 32, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "racecheck",
        &[
            "kernel 'bad_blocks_race' block (1,0,0) thread (0,0,0)",
            "write-after-write hazard between blocks",
            "written by block (0,0,0) thread (0,0,0) of the same launch",
        ],
    );
}

// ------------------------------------------------------------------ initcheck

#[test]
fn initcheck_integer_buffer_nothing_wrote() {
    let Some(err) = checked(
        "initcheck_integer_buffer_nothing_wrote",
        "initcheck",
        &[],
        || {
            let (stream, _m, f) = setup("relu_int");
            // SAFETY: deliberately left unwritten: that is what is checked.
            let inp = unsafe { stream.alloc::<i32>(100) }.unwrap();
            let mut out = stream.alloc_zeros::<i32>(100).unwrap();
            let n = 100i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&inp).arg(&mut out).arg(&n);
            // SAFETY: in bounds; reads memory nothing wrote (the bug).
            assert_err(
                unsafe { b.launch(cfg(2, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "initcheck",
        &[
            "kernel 'relu_int' block (0,0,0) thread (0,0,0)",
            "read of 4 bytes",
            "offset 0 of the 400-byte allocation",
            "4 of them never written",
        ],
    );
}

#[test]
fn initcheck_shared_memory_nothing_wrote() {
    let Some(err) = checked(
        "initcheck_shared_memory_nothing_wrote",
        "initcheck",
        &[],
        || {
            let (stream, _m, f) = setup("bad_uninit_shared");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose.
            assert_err(
                unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    report(
        &err,
        "initcheck",
        &[
            "thread (32,0,0)",
            "offset 128 of __shared__ 'bad_uninit_shared::s' (256 bytes)",
        ],
    );
}

#[test]
fn initcheck_unused_reports_bytes_never_written() {
    let Some(err) = checked(
        "initcheck_unused_reports_bytes_never_written",
        "unused",
        &[],
        || {
            let (stream, _m, f) = setup("ok_fill");
            // SAFETY: the kernel writes the first 100 of the 128 ints.
            let mut out = unsafe { stream.alloc::<i32>(128) }.unwrap();
            let n = 100i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: writes out[0..100].
            unsafe { b.launch(cfg(2, 64, 0)) }.unwrap();
            drop(out);
            stream.synchronize().unwrap();
        },
    ) else {
        return;
    };
    report(
        &err,
        "initcheck",
        &[
            "112 of the 512 bytes of the 512-byte allocation at",
            "never written before it was freed",
            "offset 400",
        ],
    );
}

// ------------------------------------------------------------------ synccheck

fn sync_case(name: &str, func: &str, threads: u32, extra_int: Option<i32>) -> Option<String> {
    checked(name, "synccheck", &[], || {
        let (stream, _m, f) = setup(func);
        let mut out = stream.alloc_zeros::<f32>(64).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&mut out);
        if let Some(n) = &extra_int {
            b.arg(n);
        }
        // SAFETY: wrong on purpose; writes at most 64 elements.
        assert_err(
            unsafe { b.launch(cfg(1, threads, 0)) }.map(|_| ()),
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
        );
    })
}

#[test]
fn synccheck_barriers_at_different_call_sites() {
    let Some(err) = sync_case(
        "synccheck_barriers_at_different_call_sites",
        "bad_divergent_barrier",
        64,
        None,
    ) else {
        return;
    };
    report(
        &err,
        "synccheck",
        &[
            "kernel 'bad_divergent_barrier' block (0,0,0) thread (32,0,0)",
            "reached __syncthreads() at check.cu:",
            "wait at the one at check.cu:",
        ],
    );
}

#[test]
fn synccheck_barrier_after_some_threads_exit() {
    let Some(err) = sync_case(
        "synccheck_barrier_after_some_threads_exit",
        "bad_barrier_after_exit",
        64,
        Some(40),
    ) else {
        return;
    };
    report(
        &err,
        "synccheck",
        &[
            "kernel 'bad_barrier_after_exit' block (0,0,0)",
            "__syncthreads()",
        ],
    );
}

#[test]
fn synccheck_shuffle_mask_naming_missing_lanes() {
    let Some(err) = sync_case(
        "synccheck_shuffle_mask_naming_missing_lanes",
        "bad_shfl_missing_lanes",
        48,
        None,
    ) else {
        return;
    };
    report(
        &err,
        "synccheck",
        &[
            "thread (32,0,0)",
            "__shfl_xor_sync with mask 0xffffffff",
            "names lane 16 of warp 1, which does not exist",
        ],
    );
}

#[test]
fn synccheck_syncwarp_naming_exited_lanes() {
    let Some(err) = sync_case(
        "synccheck_syncwarp_naming_exited_lanes",
        "bad_syncwarp_exited_lanes",
        32,
        None,
    ) else {
        return;
    };
    report(
        &err,
        "synccheck",
        &[
            "thread (16,0,0) exited while lanes of its warp wait for it in __syncwarp (mask 0xffffffff)",
        ],
    );
}

// ------------------------------------------------------------------ correct kernels

#[test]
fn correct_kernels_pass_every_check() {
    for shuffle in ["", "3"] {
        let Some(err) = checked(
            "correct_kernels_pass_every_check",
            "all",
            &[("FROSTGRAD_CUDA_EMU_SHUFFLE", shuffle)],
            || {
                let ctx = CudaContext::new(0).unwrap();
                let stream = ctx.default_stream();
                let m = module(&ctx);

                let inp: Vec<f32> = (0..32).map(|i| i as f32 * 0.25).collect();
                let din = stream.clone_htod(&inp).unwrap();
                let mut out = stream.alloc_zeros::<f32>(32).unwrap();
                let n = 32i32;
                let f = m.load_function("ok_memory").unwrap();
                let mut b = stream.launch_builder(&f);
                b.arg(&din).arg(&mut out).arg(&n);
                // SAFETY: 32 floats in and out, 128 bytes of dynamic shared memory.
                unsafe { b.launch(cfg(1, 32, 128)) }.unwrap();
                let got = stream.clone_dtoh(&out).unwrap();
                for t in 0..32 {
                    let v = (inp[t % 8 * 4], inp[t % 8 * 4 + 3]);
                    let want = inp[31 - t] + 2.0 * inp[t] + 1.0 + (v.0 + v.1);
                    assert_eq!(got[t], want, "ok_memory[{t}]");
                }

                let mut out = stream.alloc_zeros::<f32>(3 * 64).unwrap();
                let mut count = stream.alloc_zeros::<i32>(1).unwrap();
                let f = m.load_function("ok_race_free").unwrap();
                let mut b = stream.launch_builder(&f);
                b.arg(&mut out).arg(&mut count);
                // SAFETY: 64 floats per block.
                unsafe { b.launch(cfg(3, 64, 0)) }.unwrap();
                assert_eq!(stream.clone_dtoh(&count).unwrap(), vec![192]);
                let got = stream.clone_dtoh(&out).unwrap();
                for t in 0..64usize {
                    let v = ((t + 1) % 64) as f32;
                    let partner = ((t ^ 1) + 1) % 64;
                    assert_eq!(got[64 + t], v + partner as f32, "ok_race_free[{t}]");
                }

                // initcheck: written by the host, by a kernel, by a memset: all fine.
                let n = 100i32;
                let src: Vec<i32> = (0..100).map(|i| i - 50).collect();
                let din = stream.clone_htod(&src).unwrap();
                let mut mid = unsafe { stream.alloc::<i32>(100) }.unwrap();
                let fill = m.load_function("ok_fill").unwrap();
                let mut b = stream.launch_builder(&fill);
                b.arg(&mut mid).arg(&n);
                // SAFETY: writes 100 ints.
                unsafe { b.launch(cfg(2, 64, 0)) }.unwrap();
                let relu = m.load_function("relu_int").unwrap();
                let mut out = stream.alloc_zeros::<i32>(100).unwrap();
                for input in [&din, &mid] {
                    let mut b = stream.launch_builder(&relu);
                    b.arg(input).arg(&mut out).arg(&n);
                    // SAFETY: 100 ints in and out.
                    unsafe { b.launch(cfg(2, 64, 0)) }.unwrap();
                    let want: Vec<i32> = (0..100).map(|i| (i - 50).max(0)).collect();
                    assert_eq!(stream.clone_dtoh(&out).unwrap(), want);
                }
                let copy = stream.clone_dtod(&mid).unwrap();
                let mut b = stream.launch_builder(&relu);
                b.arg(&copy).arg(&mut out).arg(&n);
                // SAFETY: 100 ints in and out.
                unsafe { b.launch(cfg(2, 64, 0)) }.unwrap();

                // memcpy / memset in kernel code: checked, and what they write counts as written.
                let f = m.load_function("copy_rows").unwrap();
                let src: Vec<f32> = (0..64).map(|i| i as f32).collect();
                let dsrc = stream.clone_htod(&src).unwrap();
                // SAFETY: written by the copies below before anything reads it.
                let mut mid = unsafe { stream.alloc::<f32>(64) }.unwrap();
                let mut dst = stream.alloc_zeros::<f32>(64).unwrap();
                let (n, extra) = (16i32, 0i32);
                let mut b = stream.launch_builder(&f);
                b.arg(&mut mid).arg(&dsrc).arg(&n).arg(&extra);
                // SAFETY: 4 rows of 16 floats.
                unsafe { b.launch(cfg(4, 32, 0)) }.unwrap();
                let mut b = stream.launch_builder(&f);
                b.arg(&mut dst).arg(&mid).arg(&n).arg(&extra);
                // SAFETY: as above.
                unsafe { b.launch(cfg(4, 32, 0)) }.unwrap();
                let want: Vec<f32> = (0..64)
                    .map(|i| if i % 16 == 0 { 0.0 } else { i as f32 })
                    .collect();
                assert_eq!(stream.clone_dtoh(&dst).unwrap(), want);

                let mut out = stream.alloc_zeros::<i32>(48).unwrap();
                let f = m.load_function("ok_sync").unwrap();
                let mut b = stream.launch_builder(&f);
                b.arg(&mut out);
                // SAFETY: 48 ints.
                unsafe { b.launch(cfg(1, 48, 0)) }.unwrap();
                let got = stream.clone_dtoh(&out).unwrap();
                let v = |u: usize| ((u + 1) % 48) as i32;
                let want: Vec<i32> = (0..48).map(|t| v(t) + v(t ^ 1)).collect();
                assert_eq!(got, want, "ok_sync");
                stream.synchronize().unwrap();
            },
        ) else {
            return;
        };
        clean(&err);
    }
}

// ------------------------------------------------------------------ lane order

#[test]
fn shuffled_mode_shuffles_the_lanes_of_a_warp() {
    for (shuffle, in_order) in [("", true), ("7", false)] {
        let _ = checked(
            "shuffled_mode_shuffles_the_lanes_of_a_warp",
            "none",
            &[
                ("FROSTGRAD_CUDA_EMU_SHUFFLE", shuffle),
                (
                    "FROSTGRAD_CHECK_TEST_IN_ORDER",
                    if in_order { "1" } else { "0" },
                ),
            ],
            || {
                let in_order = std::env::var("FROSTGRAD_CHECK_TEST_IN_ORDER").unwrap() == "1";
                let (stream, _m, f) = setup("lane_order");
                let mut order = stream.alloc_zeros::<i32>(32).unwrap();
                let mut next = stream.alloc_zeros::<i32>(1).unwrap();
                let mut b = stream.launch_builder(&f);
                b.arg(&mut order).arg(&mut next);
                // SAFETY: one warp, 32 tickets.
                unsafe { b.launch(cfg(1, 32, 0)) }.unwrap();
                let got = stream.clone_dtoh(&order).unwrap();
                let mut sorted = got.clone();
                sorted.sort();
                assert_eq!(sorted, (0..32).collect::<Vec<i32>>());
                assert_eq!(got == sorted, in_order, "lane order {got:?}");
            },
        );
    }
}

#[test]
fn a_program_that_is_not_cudarc_runs_clean_under_every_check() {
    // cuda-emu/standalone_test.cpp: dlopens libcuda.so.1 / libnvrtc.so.13 and
    // drives a block reduction (shuffles, dynamic shared memory, an atomic)
    // through the raw entry points.
    let dir = cuda_emu::emu_dir();
    let out = Command::new(dir.join("standalone-test"))
        .arg(dir)
        .env("FROSTGRAD_CUDA_EMU_CHECK", "all")
        .output()
        .expect("run standalone-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("standalone: OK"),
        "{stdout}\n{stderr}"
    );
    for check in ["memcheck", "racecheck", "initcheck", "synccheck"] {
        assert!(
            !stderr.contains(&format!("frostgrad-cuda-emu: {check}:")),
            "{stderr}"
        );
    }
}

#[test]
fn an_unknown_check_name_is_an_error() {
    let Some(err) = checked(
        "an_unknown_check_name_is_an_error",
        "memcheck,bogus",
        &[],
        || {
            assert!(
                CudaContext::new(0).is_err(),
                "cuInit accepted a bad check name"
            );
        },
    ) else {
        return;
    };
    assert!(
        err.contains("FROSTGRAD_CUDA_EMU_CHECK: unknown check 'bogus'"),
        "{err}"
    );
}

#[test]
fn the_report_limit_bounds_the_output() {
    let Some(err) = checked(
        "the_report_limit_bounds_the_output",
        "racecheck",
        &[("FROSTGRAD_CUDA_EMU_CHECK_LIMIT", "1")],
        || {
            let (stream, _m, f) = setup("bad_shared_race");
            let mut out = stream.alloc_zeros::<f32>(64).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out);
            // SAFETY: wrong on purpose (two hazards: write-after-read, read-after-write).
            assert_err(
                unsafe { b.launch(cfg(1, 64, 0)) }.map(|_| ()),
                CUresult::CUDA_ERROR_LAUNCH_FAILED,
            );
        },
    ) else {
        return;
    };
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("frostgrad-cuda-emu:"))
        .collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("frostgrad-cuda-emu: racecheck: "),
        "{err}"
    );
    assert!(
        lines[1].contains("further reports are not printed (FROSTGRAD_CUDA_EMU_CHECK_LIMIT=1)"),
        "{err}"
    );
}
