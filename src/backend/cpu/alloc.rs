//! Every large host buffer is allocated here, fallibly.
//!
//! `vec![0.0; n]` aborts the process when the allocator says no (`memory
//! allocation of N bytes failed`, SIGABRT), so a typo such as
//! `--num-classes 100000000000` or an image too large for the machine would
//! kill the program instead of returning an error. These functions compute
//! the size with checked arithmetic, reserve with `try_reserve_exact`, and
//! return [`Error::OutOfMemory`] naming the buffer, its shape and the bytes
//! asked for.
//!
//! Kept to one small entry point ([`zeroed`], on which the others build) so
//! that a buffer pool can later serve these requests in one place.

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

/// An empty vector with room for exactly `shape`'s element count.
pub fn with_capacity<T>(what: &str, shape: &[usize]) -> Result<Vec<T>> {
    let elem = std::mem::size_of::<T>();
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| {
            n.checked_mul(elem.max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| out_of_memory(what, shape, elem))?;
    let mut v = Vec::new();
    v.try_reserve_exact(numel)
        .map_err(|_| out_of_memory(what, shape, elem))?;
    Ok(v)
}

/// A buffer of `shape` filled with `value`.
pub fn filled<T: Clone>(what: &str, shape: &[usize], value: T) -> Result<Vec<T>> {
    let mut v = with_capacity(what, shape)?;
    let numel = v.capacity().min(shape.iter().product());
    // Within the reserved capacity: cannot reallocate.
    v.resize(numel, value);
    Ok(v)
}

/// A zeroed buffer of `shape` (`0.0` for floats, `0` for integers).
pub fn zeroed<T: Clone + Default>(what: &str, shape: &[usize]) -> Result<Vec<T>> {
    filled(what, shape, T::default())
}

/// A copy of `src`.
pub fn copy_of<T: Clone>(what: &str, src: &[T]) -> Result<Vec<T>> {
    let mut v = with_capacity(what, &[src.len()])?;
    v.extend_from_slice(src);
    Ok(v)
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
