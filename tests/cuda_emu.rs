//! Tests of the host emulation of the CUDA driver and NVRTC (`cuda-emu/`):
//! kernels written for these tests run through cudarc exactly as the CUDA
//! backend runs its kernels, and are compared with CPU references.
//!
//! Each test body runs in a child process with the emulation on
//! `LD_LIBRARY_PATH` (see `tests/common/cuda_emu.rs`).

#[path = "common/cuda_emu.rs"]
mod cuda_emu;
#[path = "common/emu_stats.rs"]
mod emu_stats;

use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

const TRANSPOSE: &str = include_str!("cuda_emu_kernels/transpose.cu");
const REDUCE: &str = include_str!("cuda_emu_kernels/reduce.cu");
const ATOMICS: &str = include_str!("cuda_emu_kernels/atomics.cu");
const MISSING_BARRIER: &str = include_str!("cuda_emu_kernels/missing_barrier.cu");
const BUGS: &str = include_str!("cuda_emu_kernels/bugs.cu");
const WARP: &str = include_str!("cuda_emu_kernels/warp.cu");
const BUSY: &str = include_str!("cuda_emu_kernels/busy.cu");
const FMA: &str = include_str!("cuda_emu_kernels/fma.cu");

fn opts(name: &str, extra: &[&str]) -> CompileOptions {
    CompileOptions {
        arch: Some("compute_90"),
        name: Some(name.to_string()),
        options: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Compiles `src` and loads `func` from it, on a fresh context.
fn kernel(src: &str, name: &str, extra: &[&str], func: &str) -> (Arc<CudaStream>, CudaFunction) {
    let ctx = CudaContext::new(0).expect("CudaContext::new");
    let ptx = compile_ptx_with_opts(src, opts(name, extra)).unwrap_or_else(|e| match e {
        CompileError::CompileError { log, .. } => panic!("{name}: {}", log.to_string_lossy()),
        e => panic!("{name}: {e:?}"),
    });
    let module = ctx.load_module(ptx).expect("load_module");
    let f = module.load_function(func).expect("load_function");
    (ctx.default_stream(), f)
}

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: smem,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn device_looks_like_an_h200() {
    cuda_emu::with_emulation("device_looks_like_an_h200", &[], || {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let ctx = CudaContext::new(0).unwrap();
        assert_eq!(ctx.compute_capability().unwrap(), (9, 0));
        assert_eq!(
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
                .unwrap(),
            1024
        );
        assert_eq!(ctx.attribute(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE).unwrap(), 32);
        assert_eq!(
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)
                .unwrap(),
            48 * 1024
        );
        assert_eq!(
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .unwrap(),
            227 * 1024
        );
        assert_eq!(
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .unwrap(),
            132
        );
        assert!(ctx.name().unwrap().contains("emulation"));
    });
}

#[test]
fn tiled_transpose_is_exact() {
    cuda_emu::with_cuda("tiled_transpose_is_exact", || {
        let (stream, f) = kernel(TRANSPOSE, "transpose.cu", &[], "transpose");
        for &(rows, cols) in &[(67usize, 45usize), (32, 32), (1, 100), (129, 3)] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let da = stream.clone_htod(&a).unwrap();
            let mut db = stream.alloc_zeros::<f32>(rows * cols).unwrap();
            let (r, c) = (rows as i32, cols as i32);
            let grid = (cols.div_ceil(32) as u32, rows.div_ceil(32) as u32, 1);
            let mut b = stream.launch_builder(&f);
            b.arg(&da).arg(&mut db).arg(&r).arg(&c);
            // SAFETY: the kernel reads rows*cols floats of `da` and writes rows*cols of `db`.
            unsafe { b.launch(cfg(grid, (32, 8, 1), 0)) }.unwrap();
            let got = stream.clone_dtoh(&db).unwrap();
            let mut want = vec![0f32; rows * cols];
            for i in 0..rows {
                for j in 0..cols {
                    want[j * rows + i] = a[i * cols + j];
                }
            }
            assert_eq!(bits(&got), bits(&want), "{rows}x{cols}");
        }
    });
}

/// The additions in the order `reduce.cu` does them on a GPU.
fn block_sum_reference(x: &[f32], blocks: usize, threads: usize) -> Vec<f32> {
    fn warp_tree(v: &mut [f32; 32]) {
        let mut off = 16;
        while off > 0 {
            let old = *v;
            for i in 0..32 {
                // __shfl_down_sync returns the caller's own value past the warp's end.
                v[i] = old[i] + if i + off < 32 { old[i + off] } else { old[i] };
            }
            off /= 2;
        }
    }
    (0..blocks)
        .map(|b| {
            let mut partials = vec![];
            for w in 0..threads / 32 {
                let mut lane = [0f32; 32];
                for (l, v) in lane.iter_mut().enumerate() {
                    let mut i = b * threads + w * 32 + l;
                    while i < x.len() {
                        *v += x[i];
                        i += blocks * threads;
                    }
                }
                warp_tree(&mut lane);
                partials.push(lane[0]);
            }
            let mut lane = [0f32; 32];
            lane[..partials.len()].copy_from_slice(&partials);
            warp_tree(&mut lane);
            lane[0]
        })
        .collect()
}

#[test]
fn block_reduction_with_shuffles_and_dynamic_shared_memory_is_exact() {
    cuda_emu::with_cuda(
        "block_reduction_with_shuffles_and_dynamic_shared_memory_is_exact",
        || {
            let (stream, f) = kernel(REDUCE, "reduce.cu", &[], "block_sum");
            let n = 100_003usize;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
                .collect();
            let dx = stream.clone_htod(&x).unwrap();
            for &(blocks, threads) in &[(7usize, 256usize), (40, 128), (1, 1024)] {
                let mut out = stream.alloc_zeros::<f32>(blocks).unwrap();
                let n_i = n as i32;
                let mut b = stream.launch_builder(&f);
                b.arg(&dx).arg(&mut out).arg(&n_i);
                let smem = (threads / 32 * 4) as u32;
                // SAFETY: reads n floats, writes `blocks` floats, smem holds one float per warp.
                unsafe { b.launch(cfg((blocks as u32, 1, 1), (threads as u32, 1, 1), smem)) }
                    .unwrap();
                let got = stream.clone_dtoh(&out).unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&block_sum_reference(&x, blocks, threads)),
                    "{blocks}x{threads}"
                );
            }
        },
    );
}

#[test]
fn atomics_on_int_and_float() {
    cuda_emu::with_cuda("atomics_on_int_and_float", || {
        let ctx = CudaContext::new(0).unwrap();
        let stream = ctx.default_stream();
        let ptx = compile_ptx_with_opts(ATOMICS, opts("atomics.cu", &[])).unwrap();
        let m = ctx.load_module(ptx).unwrap();
        let n = 5000usize;
        let n_i = n as i32;
        let v: Vec<i32> = (0..n as i32).map(|i| (i * 37 + 11) % 1009 - 300).collect();
        let dv = stream.clone_htod(&v).unwrap();
        let grid = ((n as u32).div_ceil(256), 1, 1);

        let hist = m.load_function("histogram").unwrap();
        let nbins = 17i32;
        let mut bins = stream.alloc_zeros::<i32>(nbins as usize).unwrap();
        let pos: Vec<i32> = v.iter().map(|x| x.rem_euclid(1000)).collect();
        let dpos = stream.clone_htod(&pos).unwrap();
        let mut b = stream.launch_builder(&hist);
        b.arg(&dpos).arg(&n_i).arg(&mut bins).arg(&nbins);
        // SAFETY: n ints in, nbins ints out.
        unsafe { b.launch(cfg(grid, (256, 1, 1), 0)) }.unwrap();
        let mut want = vec![0i32; nbins as usize];
        for p in &pos {
            want[(p % nbins) as usize] += 1;
        }
        assert_eq!(stream.clone_dtoh(&bins).unwrap(), want);

        // Integer-valued floats: the sum is exact in any order, as on a GPU.
        let fv: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let dfv = stream.clone_htod(&fv).unwrap();
        let fsum = m.load_function("float_sum").unwrap();
        let mut total = stream.alloc_zeros::<f32>(1).unwrap();
        let mut b = stream.launch_builder(&fsum);
        b.arg(&dfv).arg(&n_i).arg(&mut total);
        // SAFETY: n floats in, one float out.
        unsafe { b.launch(cfg(grid, (256, 1, 1), 0)) }.unwrap();
        let want_sum: i64 = v.iter().map(|&x| x as i64).sum();
        assert_eq!(stream.clone_dtoh(&total).unwrap()[0], want_sum as f32);

        let mm = m.load_function("int_max_min").unwrap();
        let mut mx = stream.clone_htod(&[i32::MIN]).unwrap();
        let mut mn = stream.clone_htod(&[i32::MAX]).unwrap();
        let mut b = stream.launch_builder(&mm);
        b.arg(&dv).arg(&n_i).arg(&mut mx).arg(&mut mn);
        // SAFETY: n ints in, one int each out.
        unsafe { b.launch(cfg(grid, (256, 1, 1), 0)) }.unwrap();
        assert_eq!(stream.clone_dtoh(&mx).unwrap()[0], *v.iter().max().unwrap());
        assert_eq!(stream.clone_dtoh(&mn).unwrap()[0], *v.iter().min().unwrap());

        let fm = m.load_function("float_max_cas").unwrap();
        let neg: Vec<f32> = v.iter().map(|&x| -(x.abs() as f32) - 0.25).collect();
        let dneg = stream.clone_htod(&neg).unwrap();
        let mut fmx = stream.clone_htod(&[f32::NEG_INFINITY]).unwrap();
        let mut exch = stream.alloc_zeros::<u32>(1).unwrap();
        let mut b = stream.launch_builder(&fm);
        b.arg(&dneg).arg(&n_i).arg(&mut fmx).arg(&mut exch);
        // SAFETY: n floats in, one float and one u32 out.
        unsafe { b.launch(cfg(grid, (256, 1, 1), 0)) }.unwrap();
        let want_max = neg.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(stream.clone_dtoh(&fmx).unwrap()[0], want_max);
        assert_eq!(stream.clone_dtoh(&exch).unwrap()[0], 7);
    });
}

fn run_neighbour(with_barrier: bool) -> (Vec<f32>, Vec<f32>) {
    let extra: &[&str] = if with_barrier {
        &["-DWITH_BARRIER"]
    } else {
        &[]
    };
    let (stream, f) = kernel(MISSING_BARRIER, "missing_barrier.cu", extra, "neighbour");
    let blocks = 4usize;
    let x: Vec<f32> = (0..blocks * 256).map(|i| i as f32 + 1.0).collect();
    let dx = stream.clone_htod(&x).unwrap();
    let mut out = stream.alloc_zeros::<f32>(x.len()).unwrap();
    let mut b = stream.launch_builder(&f);
    b.arg(&dx).arg(&mut out);
    // SAFETY: one float in and out per thread.
    unsafe { b.launch(cfg((blocks as u32, 1, 1), (256, 1, 1), 0)) }.unwrap();
    let want = (0..x.len())
        .map(|i| if i % 256 == 0 { 0.0 } else { x[i - 1] })
        .collect();
    (stream.clone_dtoh(&out).unwrap(), want)
}

/// The tests of what the *unchecked* emulation does with a hazardous kernel
/// run their child with the checks off, whatever the caller set: the
/// checker is meant to stop such a launch (tests/cuda_emu_check.rs tests
/// those reports).
const UNCHECKED: (&str, &str) = ("FROSTGRAD_CUDA_EMU_CHECK", "none");

/// Why `warp_intrinsics_half_and_math` leaves out its `partial_warp` part
/// under synccheck (it runs through `with_cuda`, on a GPU too).
const DELIBERATE: &str = "its kernel has such a hazard on purpose, to show what the \
     unchecked emulation does with it; the checker reports the hazard and fails the launch \
     (tests/cuda_emu_check.rs tests those reports)";

#[test]
fn missing_barrier_is_exposed_by_shuffled_thread_order() {
    let name = "missing_barrier_is_exposed_by_shuffled_thread_order";
    cuda_emu::with_emulation(
        name,
        &[("FROSTGRAD_CUDA_EMU_SHUFFLE", "12345"), UNCHECKED],
        || {
            let (got, want) = run_neighbour(false);
            let wrong = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert!(wrong > 100, "only {wrong} wrong values without the barrier");
            // What the missing barrier lets a thread see is poison (NaN), not stale data.
            assert!(got.iter().any(|v| v.is_nan()));
            let (got, want) = run_neighbour(true);
            assert_eq!(bits(&got), bits(&want));
        },
    );
}

#[test]
fn in_order_threads_hide_the_missing_barrier() {
    // Documents why the shuffle option exists: thread-index order happens to
    // satisfy this kernel's (unsynchronised) dependency.
    let name = "in_order_threads_hide_the_missing_barrier";
    cuda_emu::with_emulation(name, &[UNCHECKED], || {
        let (got, want) = run_neighbour(false);
        assert_eq!(bits(&got), bits(&want));
    });
}

#[test]
fn out_of_bounds_write_into_the_guard_page_is_an_illegal_address() {
    cuda_emu::with_emulation(
        "out_of_bounds_write_into_the_guard_page_is_an_illegal_address",
        &[],
        || {
            let (stream, f) = kernel(BUGS, "bugs.cu", &[], "write_one_past");
            let n = 1024i32; // 4 KiB: the allocation ends exactly at its guard page
            let mut out = stream.alloc_zeros::<f32>(n as usize).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: deliberately writes one float past the end; the emulation catches it.
            let err = unsafe { b.launch(cfg((5, 1, 1), (256, 1, 1), 0)) }.unwrap_err();
            assert_eq!(err.0, CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
            // Sticky, like a real context after a fault.
            let err = stream.synchronize().unwrap_err();
            assert_eq!(err.0, CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
            std::mem::forget(out); // freeing would report the sticky error again
        },
    );
}

#[test]
fn out_of_bounds_write_short_of_the_guard_page_is_an_illegal_address() {
    cuda_emu::with_emulation(
        "out_of_bounds_write_short_of_the_guard_page_is_an_illegal_address",
        &[],
        || {
            let (stream, f) = kernel(BUGS, "bugs.cu", &[], "write_one_past");
            let n = 10i32; // 40 bytes: 256-byte alignment leaves slack before the guard page
            let mut out = stream.alloc_zeros::<f32>(n as usize).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: deliberately writes one float past the end; the emulation catches it.
            let err = unsafe { b.launch(cfg((1, 1, 1), (32, 1, 1), 0)) }.unwrap_err();
            assert_eq!(err.0, CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
            std::mem::forget(out);
        },
    );
}

#[test]
fn thread_exiting_while_others_wait_at_a_barrier_is_an_error() {
    cuda_emu::with_emulation(
        "thread_exiting_while_others_wait_at_a_barrier_is_an_error",
        &[],
        || {
            let (stream, f) = kernel(BUGS, "bugs.cu", &[], "early_exit_then_barrier");
            let n = 100i32;
            let mut out = stream.alloc_zeros::<f32>(128).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut out).arg(&n);
            // SAFETY: writes at most 128 floats.
            let err = unsafe { b.launch(cfg((1, 1, 1), (128, 1, 1), 0)) }.unwrap_err();
            assert_eq!(err.0, CUresult::CUDA_ERROR_LAUNCH_FAILED);
            std::mem::forget(out);
        },
    );
}

#[test]
fn device_memory_and_shared_memory_start_poisoned() {
    let name = "device_memory_and_shared_memory_start_poisoned";
    cuda_emu::with_emulation(name, &[UNCHECKED], || {
        let (stream, f) = kernel(BUGS, "bugs.cu", &[], "read_uninitialised_shared");
        // SAFETY: reading uninitialised device memory is the point of the test; f32 has no invalid bits.
        let fresh = unsafe { stream.alloc::<f32>(64) }.unwrap();
        let host = stream.clone_dtoh(&fresh).unwrap();
        assert!(host.iter().all(|v| v.to_bits() == 0xFFFF_FFFF), "{host:?}");
        let mut out = stream.alloc_zeros::<f32>(64).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&mut out);
        // SAFETY: writes 64 floats.
        unsafe { b.launch(cfg((2, 1, 1), (64, 1, 1), 0)) }.unwrap();
        assert!(stream.clone_dtoh(&out).unwrap().iter().all(|v| v.is_nan()));
    });
}

#[test]
fn compile_errors_come_back_with_the_log() {
    cuda_emu::with_emulation("compile_errors_come_back_with_the_log", &[], || {
        let bad = "extern \"C\" __global__ void k(float* x) {\n  x[0] = 1.0f\n}\n";
        match compile_ptx_with_opts(bad, opts("syntax.cu", &[])) {
            Err(CompileError::CompileError { nvrtc, log, .. }) => {
                let log = log.to_string_lossy();
                assert_eq!(
                    nvrtc.0,
                    cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_COMPILATION
                );
                assert!(
                    log.contains("syntax.cu:2") && log.contains("error: expected"),
                    "{log}"
                );
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
        let asm = "extern \"C\" __global__ void k(unsigned* x) {\n  unsigned l;\n  asm(\"mov.u32 %0, %%laneid;\" : \"=r\"(l));\n  x[0] = l;\n}\n";
        match compile_ptx_with_opts(asm, opts("asm.cu", &[])) {
            Err(CompileError::CompileError { log, .. }) => {
                let log = log.to_string_lossy();
                assert!(
                    log.contains("asm.cu:3") && log.contains("inline assembly"),
                    "{log}"
                );
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
        match compile_ptx_with_opts(
            "__global__ void k() {}",
            opts("opt.cu", &["--no-such-option"]),
        ) {
            Err(CompileError::CompileError { nvrtc, .. }) => {
                assert_eq!(
                    nvrtc.0,
                    cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION
                )
            }
            other => panic!("expected an option error, got {other:?}"),
        }
    });
}

#[test]
fn include_paths_are_honoured() {
    cuda_emu::with_emulation("include_paths_are_honoured", &[], || {
        let dir = std::env::temp_dir().join(format!("frostgrad-emu-inc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("scale.cuh"), "#define SCALE 3.0f\n").unwrap();
        let src = "#include \"scale.cuh\"\nextern \"C\" __global__ void k(float* x) { x[threadIdx.x] = SCALE * threadIdx.x; }\n";
        let ctx = CudaContext::new(0).unwrap();
        let o = CompileOptions {
            include_paths: vec![dir.to_string_lossy().into_owned()],
            ..Default::default()
        };
        let m = ctx
            .load_module(compile_ptx_with_opts(src, o).unwrap())
            .unwrap();
        let f = m.load_function("k").unwrap();
        let stream = ctx.default_stream();
        let mut x = stream.alloc_zeros::<f32>(4).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&mut x);
        // SAFETY: writes 4 floats.
        unsafe { b.launch(cfg((1, 1, 1), (4, 1, 1), 0)) }.unwrap();
        assert_eq!(stream.clone_dtoh(&x).unwrap(), vec![0.0, 3.0, 6.0, 9.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn warp_intrinsics_half_and_math() {
    let name = "warp_intrinsics_half_and_math";
    // `partial_warp` shuffles with a full mask in a warp of 16 lanes, as much
    // real code does; synccheck reports the mask's missing lanes.
    let partial_warp = cuda_emu::backend() == cuda_emu::Backend::Real
        || !cuda_emu::skip_under_checks(
            &format!("{name}, its `partial_warp` part"),
            &["synccheck"],
            DELIBERATE,
        );
    cuda_emu::with_cuda(name, || {
        let ctx = CudaContext::new(0).unwrap();
        let stream = ctx.default_stream();
        let m = ctx
            .load_module(compile_ptx_with_opts(WARP, opts("warp.cu", &[])).unwrap())
            .unwrap();

        let threads = 64usize;
        let v: Vec<i32> = (0..threads as i32).map(|i| (i * 13 + 5) % 50).collect();
        let dv = stream.clone_htod(&v).unwrap();
        let mut out = stream.alloc_zeros::<i32>(threads * 8).unwrap();
        let f = m.load_function("warp_ops").unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&dv).arg(&mut out);
        // SAFETY: one int in, eight out, per thread.
        unsafe { b.launch(cfg((1, 1, 1), (threads as u32, 1, 1), 0)) }.unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        for t in 0..threads {
            let (w, l) = (t / 32 * 32, t % 32);
            let lane = |i: usize| v[w + i];
            let ballot = (0..32)
                .filter(|&i| lane(i) & 1 == 1)
                .fold(0u32, |a, i| a | (1 << i));
            let seg = l & !7;
            let down = if (l & 7) + 2 >= 8 {
                lane(l)
            } else {
                lane(seg + (l & 7) + 2)
            };
            let want = [
                lane(3),
                if l >= 1 { lane(l - 1) } else { lane(l) },
                lane(l ^ 5),
                ballot as i32,
                (0..32).any(|i| lane(i) == 42) as i32,
                (0..32).all(|i| lane(i) >= 0) as i32,
                down,
                (0..32).map(lane).sum(),
            ];
            assert_eq!(&got[t * 8..t * 8 + 8], &want, "thread {t}");
        }

        if partial_warp {
            let f = m.load_function("partial_warp").unwrap();
            let mut pw = stream.alloc_zeros::<i32>(16).unwrap();
            let mut b = stream.launch_builder(&f);
            b.arg(&mut pw);
            // SAFETY: writes 16 ints.
            unsafe { b.launch(cfg((1, 1, 1), (48, 1, 1), 0)) }.unwrap();
            assert_eq!(
                stream.clone_dtoh(&pw).unwrap(),
                vec![(32..48).sum::<i32>(); 16]
            );
        }

        let xs: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            1.0 / 3.0,
            65504.0,
            65520.0,
            1e-7,
            -2.5e-5,
            2.71,
            f32::INFINITY,
            1e30,
        ];
        let n = xs.len();
        let dx = stream.clone_htod(&xs).unwrap();
        let mut h = stream.alloc_zeros::<u16>(n).unwrap();
        let mut bf = stream.alloc_zeros::<u16>(n).unwrap();
        let mut back = stream.alloc_zeros::<f32>(n).unwrap();
        let n_i = n as i32;
        let f = m.load_function("to_half").unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&dx).arg(&mut h).arg(&mut bf).arg(&mut back).arg(&n_i);
        // SAFETY: n elements in and out.
        unsafe { b.launch(cfg((1, 1, 1), (32, 1, 1), 0)) }.unwrap();
        let want_h: Vec<u16> = xs
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        let want_b: Vec<u16> = xs
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect();
        assert_eq!(stream.clone_dtoh(&h).unwrap(), want_h);
        assert_eq!(stream.clone_dtoh(&bf).unwrap(), want_b);
        let want_back: Vec<f32> = xs
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32() + half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(bits(&stream.clone_dtoh(&back).unwrap()), bits(&want_back));

        let f = m.load_function("math_ops").unwrap();
        let mut out = stream.alloc_zeros::<f32>(4 * n).unwrap();
        let mut b = stream.launch_builder(&f);
        b.arg(&dx).arg(&mut out).arg(&n_i);
        // SAFETY: n floats in, 4n out.
        unsafe { b.launch(cfg((1, 1, 1), (32, 1, 1), 0)) }.unwrap();
        let got = stream.clone_dtoh(&out).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(got[4 * i].to_bits(), x.max(0.5).to_bits());
            assert_eq!(got[4 * i + 1].to_bits(), x.min(0.5).to_bits());
            assert!((got[4 * i + 2] - x / 3.0).abs() <= (x / 3.0).abs() * 1e-6 || !x.is_finite());
            let r = 1.0 / (x.abs() + 1.0).sqrt();
            assert!((got[4 * i + 3] - r).abs() <= r * 1e-6);
        }
    });
}

#[test]
fn many_blocks_with_barriers_sum_exactly() {
    cuda_emu::with_emulation("many_blocks_with_barriers_sum_exactly", &[], || {
        let (stream, f) = kernel(BUSY, "busy.cu", &[], "busy");
        let blocks = 1000usize;
        let n = blocks * 256;
        let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32).collect();
        let dx = stream.clone_htod(&x).unwrap();
        let mut y = stream.alloc_zeros::<f32>(blocks).unwrap();
        let n_i = n as i32;
        let start = std::time::Instant::now();
        let mut b = stream.launch_builder(&f);
        b.arg(&dx).arg(&mut y).arg(&n_i);
        // SAFETY: n floats in, one float per block out.
        unsafe { b.launch(cfg((blocks as u32, 1, 1), (256, 1, 1), 0)) }.unwrap();
        stream.synchronize().unwrap();
        let took = start.elapsed();
        // Printed for whoever tunes the emulation; speed is never asserted in a test.
        println!("1000 blocks x 256 threads, 3 barriers + shuffles: {took:?}");
        let got = stream.clone_dtoh(&y).unwrap();
        for (bi, g) in got.iter().enumerate() {
            let want: f32 = x[bi * 256..(bi + 1) * 256].iter().sum();
            assert_eq!(*g, want, "block {bi}"); // small integers: exact in any order
        }
    });
}

#[test]
fn standalone_program_uses_the_raw_entry_points() {
    let dir = cuda_emu::emu_dir();
    let out = std::process::Command::new(dir.join("standalone-test"))
        .arg(dir)
        .output()
        .expect("run standalone-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("standalone: OK"),
        "{stdout}\n{stderr}"
    );
}

/// `a*b + c` with a = b = 1 + 2^-12, c = -(1 + 2^-11): the exact product is
/// 1 + 2^-11 + 2^-24, which float rounds to 1 + 2^-11, so one rounding (FMA)
/// gives 2^-24 and two give 0.
fn run_mad(extra: &[&str]) -> Vec<f32> {
    let (stream, f) = kernel(FMA, "fma.cu", extra, "mad");
    let a = 1.0f32 + 2f32.powi(-12);
    let c = -(1.0f32 + 2f32.powi(-11));
    let (da, db, dc) = (
        stream.clone_htod(&[a]).unwrap(),
        stream.clone_htod(&[a]).unwrap(),
        stream.clone_htod(&[c]).unwrap(),
    );
    let mut out = stream.alloc_zeros::<f32>(3).unwrap();
    let mut b = stream.launch_builder(&f);
    b.arg(&da).arg(&db).arg(&dc).arg(&mut out);
    // SAFETY: the kernel reads one float of each input and writes 3 of `out`.
    unsafe { b.launch(cfg((1, 1, 1), (1, 1, 1), 0)) }.unwrap();
    stream.clone_dtoh(&out).unwrap()
}

#[test]
fn multiply_add_is_contracted_like_nvrtc_by_default() {
    cuda_emu::with_emulation(
        "multiply_add_is_contracted_like_nvrtc_by_default",
        &[],
        || {
            let fused = 2f32.powi(-24);
            // NVRTC's default (--fmad=true) contracts; the intrinsics never do
            // anything but what they name.
            assert_eq!(run_mad(&[]), vec![fused, fused, 0.0]);
            assert_eq!(run_mad(&["--fmad=true"]), vec![fused, fused, 0.0]);
            assert_eq!(run_mad(&["--fmad=false"]), vec![0.0, fused, 0.0]);
        },
    );
}

#[test]
fn statistics_count_launches_syncs_copies_and_allocations() {
    let name = "statistics_count_launches_syncs_copies_and_allocations";
    let path =
        std::env::temp_dir().join(format!("frostgrad-emu-stats-{}.json", std::process::id()));
    let path_s = path.to_str().unwrap().to_string();
    cuda_emu::with_emulation(name, &[("FROSTGRAD_CUDA_EMU_STATS", &path_s)], || {
        let (stream, f) = kernel(FMA, "fma.cu", &[], "twice");
        let x = stream.clone_htod(&[1.5f32; 1000]).unwrap();
        // SAFETY: the kernel writes all 1000 elements before they are read.
        let mut y = unsafe { stream.alloc::<f32>(1000) }.unwrap();
        let n = 1000i32;
        for _ in 0..3 {
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&mut y).arg(&n);
            // SAFETY: 1000 floats in each buffer, one thread per element.
            unsafe { b.launch(cfg((4, 1, 1), (256, 1, 1), 0)) }.unwrap();
        }
        let host = stream.clone_dtoh(&y).unwrap();
        assert!(host.iter().all(|&v| v == 3.0));
        stream.synchronize().unwrap();
    });
    if cuda_emu::is_child(name) {
        return; // the counts are written when the child exits
    }
    let stats = emu_stats::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(stats.get("launches"), 3, "{stats:?}");
    assert_eq!(stats.kernels.get("twice"), Some(&3), "{stats:?}");
    assert_eq!(stats.get("htod_calls"), 1, "{stats:?}");
    assert_eq!(stats.get("htod_bytes"), 4000, "{stats:?}");
    assert_eq!(stats.get("dtoh_calls"), 1, "{stats:?}");
    assert_eq!(stats.get("dtoh_bytes"), 4000, "{stats:?}");
    assert_eq!(stats.get("allocs"), 2, "{stats:?}");
    assert_eq!(stats.get("alloc_bytes"), 8000, "{stats:?}");
    assert_eq!(stats.get("frees"), 2, "{stats:?}");
    // clone_dtoh waits for the stream, then the explicit synchronize: at
    // least those two host waits (cudarc may add its own).
    assert!(stats.get("syncs") >= 2, "{stats:?}");
}
