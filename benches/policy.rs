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

/// The DNS door's per-query extras: the registered domain (Public Suffix List), the
/// tunnel guard and the rate limiter.
fn dns_guard(c: &mut Criterion) {
    use portcullis::dns::limit::RateLimiter;
    use portcullis::dns::tunnel::{GuardSettings, TunnelGuard};
    use portcullis::policy::dns::{GuardAction, Rate};
    use portcullis::policy::suffix::Suffixes;
    use std::net::{IpAddr, Ipv4Addr};

    let suffixes = Suffixes::builtin();
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let settings = GuardSettings::default();
    let mut group = c.benchmark_group("dns guard");
    group.bench_function("registered domain of objects.githubusercontent.com", |b| {
        b.iter(|| black_box(suffixes.split(black_box("objects.githubusercontent.com"))))
    });
    group.bench_function("registered domain of a.b.c.example.co.uk", |b| {
        b.iter(|| black_box(suffixes.split(black_box("a.b.c.example.co.uk"))))
    });
    let guard = TunnelGuard::new();
    group.bench_function("observe a repeated name", |b| {
        let name = "api.example.com";
        let (domain, prefix) = suffixes.split(name);
        b.iter(|| {
            black_box(guard.observe(
                &settings,
                GuardAction::Log,
                client,
                name,
                domain,
                prefix,
                true,
            ))
        })
    });
    group.bench_function("observe a fresh 32-character label (log)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let name = format!("{i:032x}.tunnel.example");
            let (domain, prefix) = suffixes.split(&name);
            black_box(guard.observe(
                &settings,
                GuardAction::Log,
                client,
                &name,
                domain,
                prefix,
                true,
            ))
        })
    });
    let limiter = RateLimiter::new();
    let rate = Rate {
        queries: u32::MAX,
        per_secs: 1,
    };
    group.bench_function("rate limiter admit", |b| {
        b.iter(|| black_box(limiter.admit(black_box(client), rate, 65_536)))
    });
    group.finish();
}

criterion_group!(benches, decisions, build, dns_guard);
criterion_main!(benches);
