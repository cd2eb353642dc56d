//! Shared by the benches: load the real lists from ../shared, or synthesise names.

use std::path::PathBuf;

use std::sync::Arc;

use portcullis::lists::load::compile_list;
use portcullis::lists::parse::Format;
use portcullis::policy::groups::ALL_GROUPS;
use portcullis::policy::rules::{ListInfo, RuleSetBuilder};

fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/blocklists")
}

/// One shared list's text, by file name.
#[allow(dead_code)] // not every bench uses it
pub fn shared_list(file: &str) -> Option<String> {
    std::fs::read_to_string(shared_dir().join(file)).ok()
}

pub fn shared_lists() -> Option<Vec<(String, String)>> {
    let dir = shared_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    let lists = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .filter_map(|p| {
            Some((
                p.file_name()?.to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).ok()?,
            ))
        })
        .collect::<Vec<_>>();
    (!lists.is_empty()).then_some(lists)
}

/// `n` synthetic names in a plain domains list (deterministic).
pub fn synthetic_list(n: usize) -> String {
    let mut out = String::with_capacity(n * 24);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!(
            "h{:x}-{i}.example{}.com\n",
            x & 0xffff_ffff,
            i % 97
        ));
    }
    out
}

/// The lists to benchmark with: the real ones when present, else synthetic ones.
pub fn lists_or_synthetic() -> (Vec<(String, String)>, &'static str) {
    match shared_lists() {
        Some(lists) => (lists, "shared"),
        None => {
            eprintln!("../shared/data/blocklists not found: using 750k synthetic names");
            (
                vec![("synthetic.txt".into(), synthetic_list(750_000))],
                "synthetic",
            )
        }
    }
}

/// Builds a rule set from every list plus the shipped allowlist; returns it and the
/// number of parsed entries.
pub fn build(lists: &[(String, String)]) -> (portcullis::policy::rules::RuleSet, u64) {
    let mut builder = RuleSetBuilder::new();
    let groups = portcullis::policy::groups::Groups::default();
    for rule in portcullis::config::allowlist::parse(
        portcullis::config::allowlist::BUILTIN_ALLOWLIST,
        "allowlist.toml",
        &groups,
    )
    .expect("shipped allowlist")
    {
        builder.add_allow(rule);
    }
    let mut entries = 0u64;
    for (name, text) in lists {
        // As the gate does: each list compiled on its own, one at a time.
        let compiled = compile_list(info(name), text, Format::Auto, 0, &[]).expect("list");
        entries += u64::from(compiled.report.entries);
        builder.add_compiled(Arc::new(compiled.list)).expect("list");
    }
    (builder.build().expect("rule set"), entries)
}

/// How the benches describe a list: applies to every group.
pub fn info(name: &str) -> ListInfo {
    ListInfo {
        name: name.to_owned(),
        source: name.to_owned(),
        groups: ALL_GROUPS,
    }
}
