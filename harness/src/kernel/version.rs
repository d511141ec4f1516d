//! Debian kernel versions and releases (`7.3.4+deb13`,
//! `7.3.4+deb13-cloud-amd64`): naming, matching a user's spec, ordering.
//! A leaf: the fetcher and the cache both use it.

/// The flavour ktstr fetches: what turns a version into a release name.
pub const FLAVOUR_SUFFIX: &str = "-cloud-amd64";

/// `7.3.4+deb13-cloud-amd64` or `7.3.4+deb13` -> `7.3.4+deb13`.
pub fn version_of(v: &str) -> String {
    v.strip_suffix(FLAVOUR_SUFFIX).unwrap_or(v).to_string()
}

/// `7.3.4+deb13` -> `7.3.4+deb13-cloud-amd64`.
pub fn release_of(version: &str) -> String {
    format!("{version}{FLAVOUR_SUFFIX}")
}

/// Whether `spec` names `version`: equal, or a prefix ending at a
/// component boundary (`6.16` and `6.16.12` match `6.16.12+deb13`; `6.1`
/// does not match `6.16.12+deb13`).
pub fn spec_matches(version: &str, spec: &str) -> bool {
    let spec = version_of(spec);
    version == spec
        || version
            .strip_prefix(spec.as_str())
            .is_some_and(|rest| rest.starts_with(['.', '+']))
}

/// Whether `spec` looks like a kernel version (rather than a mistyped path).
pub fn looks_like_version(spec: &str) -> bool {
    spec.starts_with(|c: char| c.is_ascii_digit())
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-_".contains(c))
}

/// The newest of `versions` matching `spec` (any, without one).
pub fn pick_version(versions: &[String], spec: Option<&str>) -> Option<String> {
    let mut hits: Vec<&String> = versions
        .iter()
        .filter(|v| spec.is_none_or(|s| spec_matches(v, s)))
        .collect();
    hits.sort_by_key(|v| version_key(v));
    hits.pop().cloned()
}

/// Sort key of a package version like `7.3.4+deb13`: the numeric dotted
/// upstream part compares as numbers (7.3.4 > 7.2.12 > 6.19.14), the rest as
/// text. These package names carry only such versions.
pub fn version_key(v: &str) -> (Vec<u64>, String) {
    let (upstream, rest) = v.split_once('+').unwrap_or((v, ""));
    let nums = upstream
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    (nums, rest.to_string())
}
