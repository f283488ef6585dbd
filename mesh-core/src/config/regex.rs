//! The one regex compiler of the config: validation judges a pattern with
//! it and the snapshot compiles routes with it, so what validates is what
//! runs.

use regex::Regex;

/// The most memory a compiled pattern may take (a config's regexes are
/// written by operators and control planes: bounded like everything else).
pub(crate) const SIZE_LIMIT: usize = 1 << 20;

/// Compiles a regex that must match the whole input (Envoy's `safe_regex`).
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, regex::Error> {
    // The pattern alone first, so a syntax error speaks of what was written
    // rather than of the anchored form.
    let build = |p: &str| regex::RegexBuilder::new(p).size_limit(SIZE_LIMIT).build();
    build(pattern)?;
    build(&format!("^(?:{pattern})$"))
}
