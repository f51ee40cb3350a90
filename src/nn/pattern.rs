//! Selecting parameters by name: `*` globs, comma-separated.
//!
//! `*` matches any run of characters, dots included, so `layer4.*` selects
//! every parameter of `layer4` and `*` selects them all. Every other
//! character matches itself. A list such as `layer3.*,layer4.*,fc.*`
//! selects a parameter when any of its patterns does.

use crate::error::{Error, Result};

/// Whether `name` matches the glob `pattern` in full (`*` = any characters).
///
/// Greedy matching with one backtrack point, the last `*` seen: on a
/// mismatch, let that star swallow one more character and retry. This is
/// linear in practice and never recurses.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // (position of the last star in p, position in n it currently matches up to)
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ni = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    // The name is used up: what is left of the pattern must be all stars.
    p[pi..].iter().all(|&c| c == b'*')
}

/// A comma-separated list of glob patterns over parameter names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamPatterns {
    patterns: Vec<String>,
}

impl ParamPatterns {
    /// Parses `"fc.*"` or `"layer3.*, layer4.*, fc.*"` (spaces around
    /// commas are ignored). An empty list or an empty entry is an error:
    /// it would silently select nothing.
    pub fn parse(list: &str) -> Result<Self> {
        let patterns: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
        if patterns.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "parameter patterns",
                format!("`{list}` has an empty pattern; give comma-separated globs such as `layer4.*,fc.*`"),
            ));
        }
        Ok(Self { patterns })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True when any pattern matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, name))
    }

    /// The patterns that match none of `names` (each one surely a typo).
    pub fn unmatched<'a, I>(&self, names: I) -> Vec<&str>
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let names = names.into_iter();
        self.patterns
            .iter()
            .filter(|p| !names.clone().any(|n| glob_match(p, n)))
            .map(String::as_str)
            .collect()
    }
}

impl std::str::FromStr for ParamPatterns {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for ParamPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_characters_including_dots() {
        assert!(glob_match("*", "layer1.0.conv1.weight"));
        assert!(glob_match("*", ""));
        assert!(glob_match("fc.*", "fc.weight"));
        assert!(glob_match("fc.*", "fc."));
        assert!(!glob_match("fc.*", "fc"));
        assert!(glob_match("layer4.*", "layer4.1.bn2.bias"));
        assert!(!glob_match("layer4.*", "layer3.1.bn2.bias"));
        assert!(glob_match("*.bn*.weight", "layer2.0.bn1.weight"));
        assert!(
            !glob_match("*.bn*.weight", "bn1.weight"),
            "needs a dot before bn"
        );
        assert!(glob_match("*bias", "layer2.0.downsample.1.bias"));
        assert!(glob_match(
            "layer*.downsample.*",
            "layer3.0.downsample.0.weight"
        ));
        assert!(glob_match("a*b*c", "a__b__b__c"));
        assert!(!glob_match("a*b*c", "a__b__b__"));
        assert!(glob_match("**x", "yyx"));
    }

    #[test]
    fn without_star_the_match_is_exact() {
        assert!(glob_match("fc.weight", "fc.weight"));
        assert!(!glob_match("fc.weight", "fc.weights"));
        assert!(!glob_match("fc.weight", "xfc.weight"));
        assert!(!glob_match("conv1.weight", "layer1.0.conv1.weight"));
        // `.` is literal, not a regex wildcard.
        assert!(!glob_match("fc.weight", "fcxweight"));
    }

    #[test]
    fn a_list_matches_when_any_pattern_does() {
        let p = ParamPatterns::parse("layer3.*, layer4.*,fc.*").unwrap();
        assert_eq!(p.patterns(), ["layer3.*", "layer4.*", "fc.*"]);
        assert!(p.matches("layer3.0.conv1.weight"));
        assert!(p.matches("fc.bias"));
        assert!(!p.matches("layer2.1.bn1.bias"));
        assert!(!p.matches("conv1.weight"));
        assert_eq!(p.to_string(), "layer3.*,layer4.*,fc.*");
    }

    #[test]
    fn empty_patterns_are_rejected() {
        assert!(ParamPatterns::parse("").is_err());
        assert!(ParamPatterns::parse("fc.*,").is_err());
        assert!(ParamPatterns::parse("fc.*,,conv1.*").is_err());
    }

    #[test]
    fn unmatched_names_the_typos() {
        let p = ParamPatterns::parse("fc.*,layer5.*,conv1.weight").unwrap();
        let names = ["conv1.weight", "fc.weight", "fc.bias"];
        assert_eq!(p.unmatched(names.iter().copied()), ["layer5.*"]);
    }
}
