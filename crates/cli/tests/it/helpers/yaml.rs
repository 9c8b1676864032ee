//! Reading the deployment files' YAML: a string at a path of keys, a list under a key.

use serde_yaml_ng::Value as Yaml;

/// The string at `path` (a key per level) in `value`; panics naming the path when absent.
pub fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in {value:?}"))
}

/// The list under `key`; panics naming the key when absent.
pub fn seq<'a>(value: &'a Yaml, key: &str) -> &'a [Yaml] {
    value
        .get(key)
        .and_then(Yaml::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no list `{key}` in {value:?}"))
}

/// The strings of the list under `key`.
pub fn str_seq<'a>(value: &'a Yaml, key: &str) -> Vec<&'a str> {
    seq(value, key)
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect()
}
