//! Decision and build benchmarks for the policy core.
//!
//! `cargo bench --bench policy` (figures in BENCHMARKS.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::policy::Policy;
use portcullis::policy::groups::GroupId;
use portcullis::policy::name::Name;

#[path = "common.rs"]
mod common;

fn decisions(c: &mut Criterion) {
    let (lists, origin) = common::lists_or_synthetic();
    let (rules, _) = common::build(&lists);
    // A name that is certainly listed: take one from the first domains list.
    let listed = lists
        .iter()
        .flat_map(|(_, t)| t.lines())
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with('#')
                && !l.starts_with('!')
                && !l.contains(' ')
                && l.contains('.')
                && !l.contains('|')
                && !l.contains('=')
        })
        .expect("a listed name")
        .to_owned();
    let policy = Policy {
        rules,
        ..Policy::default()
    };
    let g = GroupId::DEFAULT;
    assert_eq!(
        policy.decide(&Name::parse(&listed).unwrap(), g).outcome(),
        "blocked"
    );
    let deep = format!("a.b.c.d.e.{listed}");
    let miss = "www.portcullis-bench-unlisted.org";

    let mut group = c.benchmark_group(format!("decide ({origin} lists)"));
    for (label, input) in [
        ("hit", listed.as_str()),
        ("miss", miss),
        ("deep subdomain hit", deep.as_str()),
        (
            "miss, mixed case and trailing dot",
            "WWW.Portcullis-Bench-Unlisted.ORG.",
        ),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let name = Name::parse(black_box(input)).unwrap();
                black_box(policy.decide(&name, g).outcome())
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let (lists, origin) = common::lists_or_synthetic();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    group.bench_function(format!("parse and build all {origin} lists"), |b| {
        b.iter(|| black_box(common::build(&lists).1))
    });
    group.finish();
}

criterion_group!(benches, decisions, build);
criterion_main!(benches);
