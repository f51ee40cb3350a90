//! Shape-aware fallible allocation for tensor creation and host copies.
//!
//! `vec![0.0; n]` aborts the process when the allocator says no (`memory
//! allocation of N bytes failed`, SIGABRT), so a typo such as
//! `--num-classes 100000000000` or an image too large for the machine would
//! kill the program instead of returning an error. These functions compute
//! the size with checked arithmetic and get the memory from the backend's
//! one allocation entry point, [`super::buffer_pool`] (which the kernels use
//! directly); a failure is [`Error::OutOfMemory`] naming the tensor, its
//! whole shape and the bytes asked for.

use super::buffer_pool;
use crate::core_types::HostData;
use crate::error::{Error, Result};

/// The error for a buffer of `shape` with `elem_bytes`-byte elements.
fn out_of_memory(what: &str, shape: &[usize], elem_bytes: usize) -> Error {
    let bytes = shape
        .iter()
        .try_fold(elem_bytes as u128, |acc, &d| acc.checked_mul(d as u128));
    Error::OutOfMemory {
        what: what.to_string(),
        shape: shape.to_vec(),
        bytes,
    }
}

/// The element count of `shape`, if a buffer of it can exist at all.
fn numel<T>(what: &str, shape: &[usize]) -> Result<usize> {
    let elem = std::mem::size_of::<T>();
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| {
            n.checked_mul(elem.max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| out_of_memory(what, shape, elem))
}

/// An empty vector with room for exactly `shape`'s element count.
pub fn with_capacity<T>(what: &str, shape: &[usize]) -> Result<Vec<T>> {
    let n = numel::<T>(what, shape)?;
    buffer_pool::try_alloc("tensor", n)
        .map_err(|_| out_of_memory(what, shape, std::mem::size_of::<T>()))
}

/// A buffer of `shape` filled with `value`.
pub fn filled<T: buffer_pool::Element>(what: &str, shape: &[usize], value: T) -> Result<Vec<T>> {
    let n = numel::<T>(what, shape)?;
    buffer_pool::filled("tensor", n, value)
        .map_err(|_| out_of_memory(what, shape, std::mem::size_of::<T>()))
}

/// A zeroed buffer of `shape` (`0.0` for floats, `0` for integers).
pub fn zeroed<T: buffer_pool::Element>(what: &str, shape: &[usize]) -> Result<Vec<T>> {
    filled(what, shape, T::default())
}

/// A copy of `src`.
pub fn copy_of<T: buffer_pool::Element>(what: &str, src: &[T]) -> Result<Vec<T>> {
    buffer_pool::copy_of("copy", src)
        .map_err(|_| out_of_memory(what, &[src.len()], std::mem::size_of::<T>()))
}

/// A copy of host data.
pub fn copy_host(what: &str, src: &HostData) -> Result<HostData> {
    Ok(match src {
        HostData::F32(v) => HostData::F32(copy_of(what, v)?),
        HostData::I64(v) => HostData::I64(copy_of(what, v)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_an_error_naming_buffer_shape_and_bytes() {
        for shape in [
            vec![100_000_000_000usize, 512],
            vec![usize::MAX, 2],
            vec![1 << 40, 1 << 40, 1 << 40],
        ] {
            let err = zeroed::<f32>("fc.weight", &shape).unwrap_err().to_string();
            assert!(
                err.contains("fc.weight") && err.contains(&format!("{shape:?}")),
                "{err}"
            );
            assert!(err.contains("bytes"), "{err}");
        }
        let err = zeroed::<f32>("w", &[100_000_000_000, 512])
            .unwrap_err()
            .to_string();
        assert!(err.contains("204800000000000 bytes"), "{err}");
    }

    #[test]
    fn possible_sizes_are_allocated_as_asked() {
        assert_eq!(zeroed::<f32>("x", &[2, 3]).unwrap(), vec![0.0; 6]);
        assert_eq!(filled("x", &[3], 7i64).unwrap(), vec![7; 3]);
        assert!(zeroed::<f32>("x", &[0, 5]).unwrap().is_empty());
        assert_eq!(zeroed::<f32>("x", &[]).unwrap(), vec![0.0]);
        assert_eq!(copy_of("x", &[1.0f32, 2.0]).unwrap(), vec![1.0, 2.0]);
    }
}
