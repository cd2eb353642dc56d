//! Resident memory of the compiled deny set: RSS loaded minus RSS empty; then what a refresh
//! of each list holds beside the running set.
//!
//! `cargo bench --bench memory` prints bytes per distinct name and load time for
//! the shared lists (or 750k synthetic names without them), then replays a refresh round the
//! way the gate does it (each list in turn: read its text, compile it, publish a rule set that
//! shares every other list, drop the old one) and prints the peak RSS above the loaded figure
//! (VmHWM, reset before the round). `SYNTHETIC_NAMES=2000000 cargo bench --bench memory` does
//! the same for that many generated names, for scale. The allocator is tuned as the gate tunes
//! it (`tune_allocator()`); `NO_TUNE=1` keeps glibc's defaults.

use std::sync::Arc;
use std::time::Instant;

use portcullis::lists::load::compile_list;
use portcullis::lists::parse::Format;
use portcullis::policy::rules::ListId;

#[path = "common.rs"]
mod common;

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// The distinct count as a rule set computes it after a publication (when first asked for).
fn recount(rules: &portcullis::policy::rules::RuleSet) -> u64 {
    let same = rules.list_rules(0).expect("a list").clone();
    rules.with_list(0, same).deny_name_count() as u64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn main() {
    if std::env::var_os("NO_TUNE").is_none() {
        portcullis::sys::tune_allocator();
    }
    // Criterion passes flags like --bench; ignore them.
    let before = rss_bytes();
    let synthetic = std::env::var("SYNTHETIC_NAMES")
        .ok()
        .and_then(|n| n.parse().ok());
    let load = || match synthetic {
        Some(n) => (
            vec![("synthetic.txt".to_owned(), common::synthetic_list(n))],
            "synthetic",
        ),
        None => common::lists_or_synthetic(),
    };
    let (lists, origin) = load();
    let input_bytes: usize = lists.iter().map(|(_, t)| t.len()).sum();
    let started = Instant::now();
    let (rules, entries) = common::build(&lists);
    let elapsed = started.elapsed();
    // Drop the list texts so only the compiled set remains resident.
    let sizes: Vec<(String, usize)> = lists.iter().map(|(n, t)| (n.clone(), t.len())).collect();
    drop(lists);
    let after = rss_bytes();
    let names = rules.deny_name_count() as u64;
    let delta = after.saturating_sub(before);
    let tables = rules.table_bytes();
    println!(
        "lists:             {origin} ({:.1} MB of text, {} lists)",
        input_bytes as f64 / 1e6,
        sizes.len()
    );
    println!("entries parsed:    {entries}");
    let count = Instant::now();
    assert_eq!(recount(&rules), names);
    println!(
        "distinct names:    {names} (a publication and a fresh count: {:.1} ms)",
        count.elapsed().as_secs_f64() * 1e3
    );
    println!("parse+build time:  {:.3} s", elapsed.as_secs_f64());
    println!("RSS empty:         {:.1} MiB", mib(before));
    println!(
        "RSS loaded:        {:.1} MiB (list text dropped)",
        mib(after)
    );
    println!(
        "bytes per name:    {:.1} (RSS); tables {:.1} (lists {:.1} + union index {:.1})",
        delta as f64 / names.max(1) as f64,
        (tables.lists + tables.index) as f64 / names.max(1) as f64,
        tables.lists as f64 / names.max(1) as f64,
        tables.index as f64 / names.max(1) as f64,
    );

    // A refresh round, one list at a time, as the refresher publishes it.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let base = rss_bytes();
    let mut current = Arc::new(rules);
    let mut worst: (u64, String) = (0, String::new());
    let round = Instant::now();
    let mut publishing = std::time::Duration::ZERO;
    for (id, (name, _)) in sizes.iter().enumerate() {
        let hwm_before = status_kib("VmHWM:") * 1024;
        // The text is re-read (the gate holds the downloaded body at this point).
        let text = match synthetic {
            Some(n) => common::synthetic_list(n),
            None => common::shared_list(name).unwrap_or_else(|| common::synthetic_list(750_000)),
        };
        let compiled = compile_list(common::info(name), &text, Format::Auto, 0, &[]).expect("list");
        drop(text);
        let publish = Instant::now();
        let next = Arc::new(current.with_list(id as ListId, Arc::new(compiled.list)));
        publishing += publish.elapsed();
        current = next;
        let hwm = status_kib("VmHWM:") * 1024;
        if hwm > hwm_before && hwm - base > worst.0 {
            worst = (hwm - base, name.clone());
        }
    }
    let hwm = status_kib("VmHWM:") * 1024;
    println!(
        "refresh round:     {:.3} s for {} lists ({:.1} ms a publication: new rule set and union index); peak RSS {:.1} MiB = loaded + {:.1} MiB ({:.2}x of the loaded set's RSS; worst at {}); RSS after {:.1} MiB",
        round.elapsed().as_secs_f64(),
        sizes.len(),
        publishing.as_secs_f64() * 1e3 / sizes.len().max(1) as f64,
        mib(hwm),
        mib(hwm.saturating_sub(base)),
        hwm as f64 / base.max(1) as f64,
        worst.1,
        mib(rss_bytes()),
    );
    std::hint::black_box(&current);
}
