//! The config loader and validator (`check-config`'s path), and the reload diff, on arbitrary
//! text. Checks, besides never panicking:
//! - an error names a place in the text: a line within the file and a column, and a message;
//! - a valid config diffs with itself as "nothing to change";
//! - reloading the example config into it gives a plan or refusals that name a key, and
//!   describing a refusal (which looks the key up in the text) does not panic either;
//! - a valid config's effective TOML (`check-config`'s output) renders.

#![no_main]

use std::{path::Path, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use redis_ha_ctl::{
    config::{Config, ConfigError, diff},
    fuzzing::check_config,
};

const PATH: &str = "fuzz.toml";
const EXAMPLE: &str = include_str!("../../deploy/redis-ha.toml.example");

/// The example config, as a running controller would hold it.
fn example() -> &'static Config {
    static EXAMPLE_CONFIG: OnceLock<Config> = OnceLock::new();
    EXAMPLE_CONFIG.get_or_init(|| {
        check_config(Path::new("example.toml"), EXAMPLE)
            .expect("the example config is valid")
            .0
    })
}

/// Where every `*_file` key (secrets, TLS certificates and keys) points instead: the loader
/// reads those files, and a fuzzed path could name a device or FIFO that blocks or never ends
/// (`/dev/zero`), which says nothing about the loader. A missing file is a deferred problem.
const NO_FILE: &str = "/nonexistent/redis-ha-fuzz";

/// Rewrites the values of `*_file` keys at any depth; whether any was found.
fn neutralize_files(table: &mut toml::Table) -> bool {
    let mut found = false;
    for (key, value) in table.iter_mut() {
        if key.ends_with("_file") {
            *value = toml::Value::String(NO_FILE.into());
            found = true;
        } else {
            found |= neutralize_value(value);
        }
    }
    found
}

fn neutralize_value(value: &mut toml::Value) -> bool {
    match value {
        toml::Value::Table(t) => neutralize_files(t),
        toml::Value::Array(items) => items.iter_mut().fold(false, |f, v| neutralize_value(v) | f),
        _ => false,
    }
}

fn check_error(text: &str, error: &ConfigError) {
    match error {
        ConfigError::Invalid {
            path,
            line,
            column,
            message,
            ..
        } => {
            assert_eq!(path, Path::new(PATH));
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(line) && *column >= 1,
                "{error} is not a place in a text of {lines} lines"
            );
            assert!(!message.trim().is_empty(), "{error}: no message");
        }
        ConfigError::Read { .. } => panic!("{error}: the text was given, nothing to read"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // A document that is not TOML fails the loader's first step, before any file is read.
    let mut rewritten = None;
    if let Ok(mut table) = text.parse::<toml::Table>()
        && neutralize_files(&mut table)
    {
        let Ok(t) = toml::to_string(&table) else {
            return;
        };
        rewritten = Some(t);
    }
    let text = rewritten.as_deref().unwrap_or(text);

    let config = match check_config(Path::new(PATH), text) {
        Ok((config, deferred)) => {
            for problem in &deferred {
                check_error(text, problem);
            }
            config
        }
        Err(e) => return check_error(text, &e),
    };

    let same = diff::diff(&config, &config);
    assert!(
        same.as_ref().is_ok_and(|plan| plan.is_empty()),
        "a config diffs with itself as {same:?}"
    );
    match diff::diff(example(), &config) {
        Ok(plan) => drop(plan.to_string()),
        Err(refusals) => {
            for refusal in &refusals {
                assert!(!refusal.key.is_empty(), "{refusal:?} names no key");
                drop(diff::describe(Path::new(PATH), text, refusal));
            }
        }
    }
    config
        .effective_toml()
        .expect("a valid config renders as TOML");
});
