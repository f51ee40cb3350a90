//! Running a whole pass of ops on one of rayon's worker threads.
//!
//! Every CPU kernel that splits its work with rayon, called from a thread
//! outside rayon's pool (a program's main thread), hands the work to the
//! pool and blocks until a worker has finished it: a wake-up of a worker
//! and of the caller, about 10 us a call on Zen 2 (AMD EPYC family 23
//! model 49), with the caller's spinning counted as CPU time. At batch 1 a
//! ResNet-18 step runs a few hundred such calls. Called from a worker, the
//! same kernel pushes its tasks onto that worker's own queue and runs them
//! there, the other workers stealing some: a 512x7x7 `grad_add` took 2.3-3.0
//! us on a worker instead of 12.5-13.2 us from the main thread (one and two
//! threads, `examples/layer_timing.rs`, see the commit that added this
//! file). PyTorch's OpenMP pool has the calling thread do its share, so it
//! pays no such hand-off either. [`on_workers`] makes the hand-off once,
//! for a whole backward pass ([`crate::Tensor::backward`]) or optimizer
//! step ([`crate::optim::Sgd::step`]).
//!
//! Not (yet) the forward: `ResNet::forward_stages` run through it, and the
//! whole bench step too, took an occasional minor fault in steady-state
//! steps (`tests/cpu_buffer_pool.rs`: glibc's `sysmalloc` growing a
//! worker's heap arena again), which these two do not.

use crate::autograd::grad_mode::{is_grad_enabled, GradModeGuard};
use crate::core_types::Device;
use crate::error::{Error, Result};
use crate::ops::flops;
use std::sync::{Mutex, PoisonError};

/// Held by the caller of [`on_workers`] while its `f` runs on the pool.
static TURN: Mutex<()> = Mutex::new(());

/// Runs `f` on worker 0 of rayon's global pool and returns its result,
/// when `device` is the CPU and the caller is not already on a rayon
/// worker; otherwise runs `f` here. Either way `f` sees the caller's
/// grad mode and FLOP count ([`crate::ops::flops`]), and the caller sees
/// the FLOP count `f` left, as if `f` had run on the calling thread.
/// A panic in `f` is passed on to the caller (rayon's `broadcast`).
///
/// One `f` at a time runs this way (callers on other threads wait for
/// their turn, off the pool): a worker waiting inside `f` for a parallel
/// kernel may run any job queued on the pool meanwhile, and were that
/// another thread's whole `f`, it would run on a thread that may hold a
/// lock it needs (a parameter's gradient or storage, taken by the outer
/// `f` around a parallel kernel), a deadlock. The pool's threads are
/// shared by all callers anyway, so taking turns costs little.
///
/// Not for CUDA work: a CUDA context is current on the thread that made
/// it, so on a CUDA `device` `f` always runs on the calling thread.
pub fn on_workers<R: Send>(device: Device, f: impl FnOnce() -> R + Send) -> Result<R> {
    if device != Device::Cpu || rayon::current_thread_index().is_some() {
        return Ok(f());
    }
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let (grad_enabled, count) = (is_grad_enabled(), flops::executed());
    // Always on worker 0 (a broadcast that only worker 0 acts on), not on
    // whichever worker wakes first: the caller's serial parts (a GEMM's
    // packing of the whole left operand, a kernel's tables) grow the
    // per-thread scratch of the thread that runs them, and on a varying
    // thread each would grow again in some steady-state step
    // (`tests/cpu_buffer_pool.rs` saw that growth, and its page faults).
    let work = Mutex::new(Some(f));
    let results = rayon::broadcast(|ctx| {
        if ctx.index() != 0 {
            return None;
        }
        let f = work.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        let _mode = GradModeGuard::new(grad_enabled);
        let worker_count = flops::executed();
        flops::set(count);
        let result = f();
        let count = flops::executed();
        flops::set(worker_count);
        Some((result, count))
    });
    let (result, count) = results
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| Error::invalid("on_workers", "rayon's worker 0 did not run the work"))?;
    flops::set(count);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::grad_mode::NoGradGuard;

    #[test]
    fn runs_on_a_worker_with_the_callers_grad_mode_and_flop_count() {
        // From a thread outside any rayon pool (a test thread).
        assert!(rayon::current_thread_index().is_none());
        flops::set(100);
        let (on_worker, grad, seen) = on_workers(Device::Cpu, || {
            let seen = flops::executed();
            flops::add_macs(5);
            (rayon::current_thread_index(), is_grad_enabled(), seen)
        })
        .unwrap();
        // Always worker 0, so the same thread's scratch serves every call.
        assert_eq!(on_worker, Some(0));
        assert!(grad);
        assert_eq!(seen, 100);
        assert_eq!(flops::executed(), 110);
        let _no_grad = NoGradGuard::new();
        let grad = on_workers(Device::Cpu, || {
            // A reset inside counts as on the caller's thread.
            flops::reset();
            flops::add_macs(1);
            is_grad_enabled()
        })
        .unwrap();
        assert!(!grad);
        assert_eq!(flops::executed(), 2);
    }

    #[test]
    fn stays_on_the_calling_thread_for_cuda_and_inside_the_pool() {
        let here = std::thread::current().id();
        assert_eq!(
            on_workers(Device::Cuda(0), || std::thread::current().id()).unwrap(),
            here
        );
        rayon::scope(|_| {
            let worker = std::thread::current().id();
            assert_eq!(
                on_workers(Device::Cpu, || std::thread::current().id()).unwrap(),
                worker
            );
        });
    }

    #[test]
    fn callers_on_several_threads_take_turns() {
        // Each `f` holds one shared lock around a parallel loop, as the
        // engine holds a gradient's lock around a parallel sum. Were two
        // `f`s on the pool at once, a worker waiting in the loop could
        // start the other `f`, which would wait for the lock its own thread
        // holds: this test would hang.
        use rayon::prelude::*;
        let shared = std::sync::Mutex::new(vec![0u64; 1 << 16]);
        std::thread::scope(|threads| {
            for t in 0..4u64 {
                let shared = &shared;
                threads.spawn(move || {
                    for _ in 0..50 {
                        on_workers(Device::Cpu, || {
                            let mut v = shared.lock().unwrap();
                            v.par_chunks_mut(1024)
                                .for_each(|c| c.iter_mut().for_each(|x| *x += t));
                        })
                        .unwrap();
                    }
                });
            }
        });
        let v = shared.into_inner().unwrap();
        assert!(v.iter().all(|&x| x == 50 * (1 + 2 + 3)));
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught =
            std::panic::catch_unwind(|| on_workers(Device::Cpu, || -> () { panic!("in f") }));
        assert!(caught.is_err());
        assert!(is_grad_enabled());
    }
}
