//! The integration tests, as one test binary: the dependency tree is linked once rather
//! than once per file, and every module shares the helpers in `support`. A test's name
//! carries its module (`proxy::the_body_limit_answers_413`); scripts/test.sh reruns the
//! ignored ones by those names.
//!
//! The root-only tests (`compose`, `container`, `netns`, `routed_netns`, `learn_netns`,
//! `tunnel`) and those that read ../shared are `#[ignore]`d with their reason;
//! `cargo test --test it -- --ignored` runs them.

mod support;

mod admin;
mod allowlist;
mod app;
mod cli;
mod client_env;
mod compose;
mod container;
mod decision_log;
mod dns;
mod dns_modes;
mod dns_paths;
mod learn;
mod learn_netns;
mod list_formats;
mod lists_fetch;
mod monitoring;
mod netns;
mod proxy;
mod reload;
mod routed;
mod routed_netns;
mod tunnel;
mod upstream;
