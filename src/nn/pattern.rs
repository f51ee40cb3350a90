//! Selecting parameters by name: shell globs, comma-separated.
//!
//! `*` matches any run of characters, dots included, so `layer4.*` selects
//! every parameter of `layer4` and `*` selects them all; `?` matches one
//! character, `[34]` one of the listed characters, `[1-3]` a range and
//! `[!4]` (or `[^4]`) any character but those, as in a shell. Every other
//! character matches itself. A list such as `layer3.*,layer4.*,fc.*`
//! selects a parameter when any of its patterns does.

use crate::error::{Error, Result};

/// One piece of a parsed glob.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    AnyOne,
    /// `[...]`: inclusive ranges (a single character is `(c, c)`).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Literal(char),
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::AnyOne => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
            Token::Literal(l) => *l == c,
        }
    }
}

/// The tokens of `pattern`, or why it is not a glob (an unclosed `[`).
fn tokenize(pattern: &str) -> std::result::Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let token = match chars[i] {
            '*' => Token::Star,
            '?' => Token::AnyOne,
            '[' => {
                let mut j = i + 1;
                let negated = matches!(chars.get(j), Some('!' | '^'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                // A `]` right after `[` or `[!` is a member, as in a shell.
                let mut first = true;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(format!(
                                "`[` at character {} is never closed by `]`",
                                i + 1
                            ))
                        }
                        Some(']') if !first => break,
                        Some(&lo) => {
                            if chars.get(j + 1) == Some(&'-')
                                && chars.get(j + 2).is_some_and(|&c| c != ']')
                            {
                                let hi = chars[j + 2];
                                if hi < lo {
                                    return Err(format!("range `{lo}-{hi}` is backwards"));
                                }
                                ranges.push((lo, hi));
                                j += 3;
                            } else {
                                ranges.push((lo, lo));
                                j += 1;
                            }
                        }
                    }
                    first = false;
                }
                i = j;
                Token::Class { negated, ranges }
            }
            c => Token::Literal(c),
        };
        tokens.push(token);
        i += 1;
    }
    Ok(tokens)
}

/// Whether `name` matches the glob `pattern` in full. A malformed pattern
/// (an unclosed `[`) matches nothing; [`ParamPatterns::parse`] refuses it.
///
/// Greedy matching with one backtrack point, the last `*` seen: on a
/// mismatch, let that star swallow one more character and retry. This is
/// linear in practice and never recurses.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match tokenize(pattern) {
        Ok(tokens) => tokens_match(&tokens, name),
        Err(_) => false,
    }
}

fn tokens_match(p: &[Token], name: &str) -> bool {
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // (position of the last star in p, position in n it currently matches up to)
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == Token::Star {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi].matches(n[ni]) {
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
    p[pi..].iter().all(|t| *t == Token::Star)
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
        for p in &patterns {
            if let Err(why) = tokenize(p) {
                return Err(Error::invalid(
                    "parameter patterns",
                    format!("`{}`: {why}", crate::error::cut_text(p, 60)),
                ));
            }
        }
        if patterns.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "parameter patterns",
                format!(
                    "`{}` has an empty pattern; give comma-separated globs such as `layer4.*,fc.*`",
                    crate::error::cut_text(list, 60)
                ),
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
    fn question_marks_and_classes_work_as_in_a_shell() {
        assert!(glob_match("layer?.0.*", "layer3.0.conv1.weight"));
        assert!(!glob_match("layer?.0.*", "layer.0.conv1.weight"));
        assert!(glob_match("layer[34].*", "layer4.1.bn2.bias"));
        assert!(!glob_match("layer[34].*", "layer2.1.bn2.bias"));
        assert!(glob_match("layer[2-4].*", "layer2.1.bn2.bias"));
        assert!(!glob_match("layer[!1-3].*", "layer2.1.bn2.bias"));
        assert!(glob_match("layer[^1-3].*", "layer4.1.bn2.bias"));
        assert!(glob_match("a[]]b", "a]b"));
        assert!(glob_match("fc.[bw]*", "fc.bias"));
        let err = ParamPatterns::parse("layer[34.*").unwrap_err().to_string();
        assert!(err.contains("never closed"), "{err}");
        assert!(ParamPatterns::parse("layer[4-1].*").is_err());
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
