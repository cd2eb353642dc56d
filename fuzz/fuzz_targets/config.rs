//! The configuration loader: TOML syntax, validation, `PORTCULLIS_*` overrides, and, for a
//! configuration that reads no file (inline lists, built-in allowlist), the policy build
//! that `config check` and `run` do.
//!
//! Input: the TOML text, optionally followed by a NUL byte and `VAR=value` lines.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::lists::load::build_policy;

fuzz_target!(|data: &[u8]| {
    let (toml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(toml) else {
        return;
    };
    // Relative paths resolve under a directory that does not exist: nothing is read.
    let Ok(mut config) =
        Config::parse(text, "fuzz.toml", Path::new("/nonexistent-portcullis-fuzz"))
    else {
        return;
    };
    assert!(config.restart_needed(&config).is_empty());
    let vars = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("PORTCULLIS_{k}"), v.to_owned()))
        .collect::<Vec<_>>();
    if !vars.is_empty() && config.apply_env(vars).is_err() {
        return;
    }
    let reads_files = config.allowlist.is_some()
        || config
            .lists
            .iter()
            .any(|l| l.path().is_some() || l.url().is_some());
    if !reads_files {
        let _ = build_policy(&config);
    }
});
