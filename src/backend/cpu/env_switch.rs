//! The CPU backend's environment switches (`FROSTGRAD_CPU_POOL`,
//! `FROSTGRAD_CONV_DIRECT`, ...), read one way: once per process, on first
//! use, into the caller's `static` [`OnceLock`], so a switch costs one
//! atomic load after that and changing the variable later has no effect.
//! Each switch's meaning stays documented on the function that reads it
//! (and in README.md's `cpu/` entry); `FROSTGRAD_SIMD` has its own parsing
//! and warning (`simd::active`).
//!
//! A variable that is unset and one whose value is not Unicode read the
//! same (`None`), and values are trimmed, as every switch did before this
//! module gathered them.

use std::sync::OnceLock;

/// The switch `name` as `parse` maps its trimmed value (`None`: unset or
/// not Unicode), read once into `cell`; later calls return that value.
pub(super) fn choice<T: Copy>(
    cell: &'static OnceLock<T>,
    name: &str,
    parse: impl FnOnce(Option<&str>) -> T,
) -> T {
    *cell.get_or_init(|| parse(std::env::var(name).ok().as_deref().map(str::trim)))
}

/// An on/off switch that is on unless `name` is `0` (after trimming): unset,
/// empty or any other value leaves it on. Read once into `cell`.
pub(super) fn on_unless_zero(cell: &'static OnceLock<bool>, name: &str) -> bool {
    choice(cell, name, unless_zero)
}

/// [`on_unless_zero`]'s rule for a trimmed value.
pub(super) fn unless_zero(value: Option<&str>) -> bool {
    value != Some("0")
}

/// A comparison switch: `Some(true)` where `name` is `on`, `Some(false)`
/// where it is `off` (after trimming), `None` (the caller's own rule)
/// otherwise, unset or unknown alike. Read once into `cell`.
pub(super) fn forced(
    cell: &'static OnceLock<Option<bool>>,
    name: &str,
    on: &str,
    off: &str,
) -> Option<bool> {
    choice(cell, name, |v| forced_by(v, on, off))
}

/// [`forced`]'s rule for a trimmed value.
fn forced_by(value: Option<&str>, on: &str, off: &str) -> Option<bool> {
    match value {
        Some(v) if v == on => Some(true),
        Some(v) if v == off => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rules are checked on values, not by setting variables: setting
    // one while other test threads read the environment is not safe.

    #[test]
    fn unless_zero_turns_off_only_at_zero() {
        assert!(!unless_zero(Some("0")));
        for v in [None, Some(""), Some("1"), Some("off"), Some("00")] {
            assert!(unless_zero(v), "{v:?}");
        }
    }

    #[test]
    fn forced_by_maps_both_values_and_nothing_else() {
        assert_eq!(forced_by(Some("flip"), "flip", "col2im"), Some(true));
        assert_eq!(forced_by(Some("col2im"), "flip", "col2im"), Some(false));
        for v in [None, Some(""), Some("both"), Some("Flip")] {
            assert_eq!(forced_by(v, "flip", "col2im"), None, "{v:?}");
        }
    }

    #[test]
    fn choice_reads_once_trimmed() {
        static SET: OnceLock<Option<usize>> = OnceLock::new();
        static UNSET: OnceLock<Option<usize>> = OnceLock::new();
        // PATH is set in any test run; no other code reads it through here.
        let want = std::env::var("PATH").ok().map(|p| p.trim().len());
        assert_eq!(choice(&SET, "PATH", |v| v.map(str::len)), want);
        assert_eq!(
            choice(&SET, "PATH", |_| Some(usize::MAX)),
            want,
            "read once"
        );
        let name = "FROSTGRAD_TEST_ENV_SWITCH_NEVER_SET";
        assert_eq!(choice(&UNSET, name, |v| v.map(str::len)), None);
    }
}
