//! Resident memory of the compiled deny set: RSS loaded minus RSS empty.
//!
//! `cargo bench --bench memory` prints bytes per distinct name and load time for
//! the shared lists (or 750k synthetic names without them);
//! `SYNTHETIC_NAMES=2000000 cargo bench --bench memory` does the same for that
//! many generated names, for scale.

use std::time::Instant;

#[path = "common.rs"]
mod common;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    // Criterion passes flags like --bench; ignore them.
    let before = rss_bytes();
    let (lists, origin) = match std::env::var("SYNTHETIC_NAMES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) => (
            vec![("synthetic.txt".to_owned(), common::synthetic_list(n))],
            "synthetic",
        ),
        None => common::lists_or_synthetic(),
    };
    let input_bytes: usize = lists.iter().map(|(_, t)| t.len()).sum();
    let started = Instant::now();
    let (rules, entries) = common::build(&lists);
    let elapsed = started.elapsed();
    // Drop the list texts so only the compiled set remains resident.
    drop(lists);
    let after = rss_bytes();
    let names = rules.deny_name_count() as u64;
    let delta = after.saturating_sub(before);
    println!(
        "lists:             {origin} ({:.1} MB of text)",
        input_bytes as f64 / 1e6
    );
    println!("entries parsed:    {entries}");
    println!("distinct names:    {names}");
    println!("parse+build time:  {:.3} s", elapsed.as_secs_f64());
    println!("RSS empty:         {:.1} MiB", before as f64 / 1048576.0);
    println!(
        "RSS loaded:        {:.1} MiB (list text dropped)",
        after as f64 / 1048576.0
    );
    println!(
        "bytes per name:    {:.1}",
        delta as f64 / names.max(1) as f64
    );
    std::hint::black_box(&rules);
}
