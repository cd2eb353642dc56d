//! List downloads against a local HTTP/HTTPS list server that misbehaves on purpose, with
//! host names resolved through a local DoH server (the gate's own upstream pool): what is
//! served afterwards (the compiled policy blocks a name or not) and what the status says.
//! Everything listens on 127.0.0.1 and is stopped by the test that started it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis::config::Config;
use portcullis::lists::load::{ListStatus, SourceKind, build_policy};
use portcullis::lists::refresh::{Lists, Outcome, RefreshError, RefreshReport, Rejection};
use portcullis::policy::groups::GroupId;
use portcullis::policy::{Policy, Verdict};

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::list_server::{self, ListServer, Reply, gzip_bytes};
use crate::support::upstream_pool;

/// `count` names `bad-N.example`, as a hosts file.
fn hosts_list(count: usize) -> String {
    let mut s = String::from("# test list\n127.0.0.1 localhost\n");
    for i in 0..count {
        s.push_str(&format!("0.0.0.0 bad-{i}.example\n"));
    }
    s
}

struct Env {
    doh: DohServer,
    lists: ListServer,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let zone = TestZone::new().a(list_server::TLS_NAME, Ipv4Addr::LOCALHOST);
        Env {
            doh: DohServer::start(zone).await,
            lists: ListServer::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A configuration whose only upstream is the test DoH server, with `lists` appended.
    fn config(&self, lists: &str) -> Config {
        config_with(&self.doh, &self.lists.ca_file, self.dir.path(), lists)
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

fn config_with(doh: &DohServer, ca: &Path, dir: &Path, lists: &str) -> Config {
    let text = format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]

[upstream]
timeout_ms = 500

[[upstream.servers]]
url = "{url}"
tls_name = "{tls}"
ca_file = "{doh_ca}"

[sources]
cache_dir = "cache"
ca_file = "{ca}"
timeout_secs = 2
connect_timeout_secs = 2
retries = 1
retry_backoff_ms = 50
retry_secs = 1
jitter = 0.0

[[lists]]
name = "local"
inline = "local-bad.example"

{lists}
"#,
        url = doh.url(),
        tls = doh.tls_name,
        doh_ca = doh.ca_file.display(),
        ca = ca.display(),
    );
    Config::parse(&text, "test.toml", dir).unwrap()
}

/// A gate's list machinery without the DNS front: the policy it publishes and its sources.
struct Running {
    policy: Arc<ArcSwap<Policy>>,
    lists: Lists,
}

impl Running {
    fn start(config: Config) -> Running {
        let loaded = build_policy(&config).unwrap();
        let pool = upstream_pool(&config);
        let shared = portcullis::live::Shared::new(config, loaded.policy);
        let policy = shared.policy().clone();
        let lists = Lists::new(shared, loaded.lists, pool).unwrap();
        Running { policy, lists }
    }

    fn blocks(&self, name: &str) -> bool {
        let policy = self.policy.load();
        matches!(
            policy.decide_text(name, GroupId::DEFAULT).1,
            Verdict::Blocked(_)
        )
    }

    fn allows(&self, name: &str) -> bool {
        let policy = self.policy.load();
        matches!(
            policy.decide_text(name, GroupId::DEFAULT).1,
            Verdict::Allowed(_)
        )
    }

    fn status(&self, name: &str) -> ListStatus {
        self.lists
            .statuses()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"))
    }

    async fn refresh(&self) -> RefreshReport {
        self.lists.refresh_all().await
    }
}

fn only(report: &RefreshReport) -> &Result<Outcome, RefreshError> {
    assert_eq!(report.sources.len(), 1, "{report:?}");
    &report.sources[0].result
}

#[tokio::test]
async fn https_list_resolved_through_the_gate_fetched_cached_then_304() {
    let env = Env::start().await;
    env.lists
        .set_list("/threats.txt", &hosts_list(10), "\"v1\"");
    let url = env.lists.https_url("/threats.txt");
    let gate =
        Running::start(env.config(&format!("[[lists]]\nname = \"threats\"\nurl = \"{url}\"\n")));

    // Cold start, no cache: local rules serve, the url list is not ready yet.
    assert!(gate.blocks("local-bad.example"));
    assert!(!gate.blocks("bad-3.example"));
    assert!(!gate.lists.ready());
    let status = gate.status("threats");
    assert!(!status.ready);
    assert_eq!(status.kind, SourceKind::Url);
    assert!(status.error.as_deref().unwrap().contains("no cached copy"));

    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Updated { entries: 10, .. })),
        "{report:?}"
    );
    assert!(report.rebuilt);
    assert!(gate.blocks("bad-3.example"));
    assert!(gate.blocks("www.bad-9.example"), "subdomains are covered");
    assert!(!gate.blocks("localhost.example"));
    assert!(
        env.doh.queries() > 0,
        "lists.test was resolved through the gate's upstream"
    );
    let status = gate.status("threats");
    assert!(status.ready && status.error.is_none(), "{status:?}");
    assert_eq!(status.entries, 10);
    assert_eq!(status.skipped, 1, "the localhost line is reported skipped");
    assert_eq!(
        status.skipped_by_reason,
        vec![("hosts_boilerplate".into(), 1)]
    );
    assert_eq!(status.etag.as_deref(), Some("\"v1\""));
    assert!(status.last_success.is_some() && status.last_error.is_none());
    assert!(gate.lists.ready());
    // The cache holds the body and its metadata.
    assert!(env.cache().join("threats.list").is_file());
    assert!(env.cache().join("threats.meta.json").is_file());

    // Second round: a conditional GET answered 304; nothing is parsed or rebuilt.
    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Unchanged)),
        "{report:?}"
    );
    assert!(!report.rebuilt);
    let last = env.lists.seen().pop().unwrap();
    assert_eq!(
        (last.status, last.if_none_match.as_deref()),
        (304, Some("\"v1\""))
    );
    assert!(gate.blocks("bad-3.example"));

    // The status serialises (for `portcullis lists --json` and /api/lists).
    let json = serde_json::to_string(&gate.lists.statuses()).unwrap();
    assert!(json.contains("\"etag\":\"\\\"v1\\\"\""), "{json}");
    // And prints.
    let text = gate.status("threats").to_string();
    assert!(
        text.contains("entries:  10") && text.contains("hosts_boilerplate"),
        "{text}"
    );
}

/// A server that sends Last-Modified and no ETag: every later download carries
/// If-Modified-Since with that date (taken from the cached metadata after a restart too),
/// and the server's 304 leaves the served list as it is, with nothing parsed or rebuilt.
#[tokio::test]
async fn last_modified_makes_the_next_download_conditional() {
    let env = Env::start().await;
    let v1 = "Wed, 21 Oct 2015 07:28:00 GMT";
    env.lists.set(
        "/dated.txt",
        Reply::Dated {
            body: hosts_list(20).into_bytes(),
            last_modified: v1.into(),
        },
    );
    let url = env.lists.https_url("/dated.txt");
    let lists = format!("[[lists]]\nname = \"dated\"\nurl = \"{url}\"\n");
    let last_request = || {
        let seen = env.lists.seen().pop().expect("a request");
        (seen.status, seen.if_modified_since, seen.if_none_match)
    };

    let gate = Running::start(env.config(&lists));
    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Updated { entries: 20, .. })),
        "{report:?}"
    );
    // Nothing held yet: an unconditional GET.
    assert_eq!(last_request(), (200, None, None));
    assert_eq!(gate.status("dated").last_modified.as_deref(), Some(v1));

    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Unchanged)),
        "{report:?}"
    );
    assert!(!report.rebuilt, "a 304 rebuilds nothing");
    assert_eq!(last_request(), (304, Some(v1.to_owned()), None));
    assert!(gate.blocks("bad-19.example"));
    let status = gate.status("dated");
    assert!(status.ready && status.last_error.is_none(), "{status:?}");
    assert_eq!(status.entries, 20);
    drop(gate);

    // A restart serves the cached copy and asks with the date in its metadata.
    let gate = Running::start(env.config(&lists));
    assert!(gate.blocks("bad-19.example"));
    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Unchanged)),
        "{report:?}"
    );
    assert_eq!(last_request(), (304, Some(v1.to_owned()), None));

    // The list changes upstream: the conditional GET gets the new body, whose date is the
    // one asked with next.
    let v2 = "Thu, 22 Oct 2015 07:28:00 GMT";
    env.lists.set(
        "/dated.txt",
        Reply::Dated {
            body: hosts_list(30).into_bytes(),
            last_modified: v2.into(),
        },
    );
    let report = gate.refresh().await;
    assert!(
        matches!(
            only(&report),
            Ok(Outcome::Updated {
                entries: 30,
                previous: 20
            })
        ),
        "{report:?}"
    );
    assert_eq!(last_request(), (200, Some(v1.to_owned()), None));
    assert!(gate.blocks("bad-29.example"));
    let report = gate.refresh().await;
    assert!(
        matches!(only(&report), Ok(Outcome::Unchanged)),
        "{report:?}"
    );
    assert_eq!(last_request(), (304, Some(v2.to_owned()), None));
}

#[tokio::test]
async fn gzip_bodies_plain_http_and_file_urls() {
    let env = Env::start().await;
    env.lists.set(
        "/encoded.txt",
        Reply::List {
            body: b"enc-1.example\nenc-2.example\n".to_vec(),
            etag: None,
            gzip: true,
        },
    );
    // A .gz file served as it is (no Content-Encoding), with a BOM and CRLF inside.
    env.lists.set(
        "/list.txt.gz",
        Reply::List {
            body: gzip_bytes(b"\xef\xbb\xbfgz-1.example\r\ngz-2.example\r\n"),
            etag: None,
            gzip: false,
        },
    );
    let file = env.dir.path().join("on-disk.txt");
    std::fs::write(&file, "||file-1.example^\n||file-2.example^\n").unwrap();
    let gate = Running::start(env.config(&format!(
        "[[lists]]\nname = \"encoded\"\nurl = \"{}\"\n\n\
         [[lists]]\nname = \"gz\"\nurl = \"{}\"\n\n\
         [[lists]]\nname = \"file\"\nurl = \"file://{}\"\n",
        env.lists.https_url("/encoded.txt"),
        env.lists.http_url("/list.txt.gz"),
        file.display()
    )));
    let report = gate.refresh().await;
    assert_eq!(report.failures().count(), 0, "{report:?}");
    for name in [
        "enc-2.example",
        "gz-1.example",
        "gz-2.example",
        "file-2.example",
    ] {
        assert!(gate.blocks(name), "{name}");
    }
    assert_eq!(gate.status("gz").entries, 2);
    assert_eq!(gate.status("file").format, "adblock");
    // An unchanged file:// body is recognised by its digest: nothing rebuilt.
    let report = gate.refresh().await;
    assert!(!report.rebuilt, "{report:?}");
}

/// Every bad download keeps the older copy serving, and the status says why.
#[tokio::test]
async fn bad_downloads_never_replace_a_good_list() {
    let env = Env::start().await;
    env.lists.set_list("/list.txt", &hosts_list(100), "\"v1\"");
    let url = env.lists.https_url("/list.txt");
    let gate =
        Running::start(env.config(&format!("[[lists]]\nname = \"threats\"\nurl = \"{url}\"\n")));
    let report = gate.refresh().await;
    assert!(report.rebuilt, "{report:?}");
    assert!(gate.blocks("bad-99.example"));

    let cases: Vec<(&str, Reply, &str)> = vec![
        ("404", Reply::Status(404), "HTTP status 404"),
        ("500", Reply::Status(500), "HTTP status 500"),
        ("html", Reply::Html, "HTML page"),
        (
            "slow",
            Reply::Slow {
                body: hosts_list(100).into_bytes(),
                stall: Duration::from_secs(5),
            },
            "no complete answer within",
        ),
        (
            "truncated gzip",
            Reply::TruncatedGzip {
                body: hosts_list(200).into_bytes(),
            },
            "gzip",
        ),
        (
            "shrunk to 10%",
            Reply::List {
                body: hosts_list(10).into_bytes(),
                etag: Some("\"v2\"".into()),
                gzip: false,
            },
            "10 entries is less than 0.5 of the 100 entries",
        ),
        (
            "empty",
            Reply::List {
                body: Vec::new(),
                etag: None,
                gzip: false,
            },
            "the body is empty",
        ),
    ];
    for (case, reply, expected) in cases {
        env.lists.set("/list.txt", reply);
        let started = Instant::now();
        let report = gate.refresh().await;
        let result = only(&report);
        assert!(result.is_err(), "{case}: {report:?}");
        assert!(!report.rebuilt, "{case}");
        assert!(
            gate.blocks("bad-99.example"),
            "{case}: the old list keeps serving"
        );
        let status = gate.status("threats");
        assert_eq!(status.entries, 100, "{case}");
        assert!(status.ready, "{case}");
        let error = status.last_error.clone().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{case}: last_error {error:?} should contain {expected:?}"
        );
        if case == "html" || case == "shrunk to 10%" || case == "empty" {
            assert!(
                matches!(result, Err(RefreshError::Rejected { .. })),
                "{case}"
            );
            assert!(error.starts_with("download rejected"), "{case}: {error}");
        }
        if case == "slow" {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{case}: the timeout bounds it"
            );
        }
    }
    // 5xx is retried (retries = 1); 404 is not.
    let seen = env.lists.seen();
    assert_eq!(seen.iter().filter(|s| s.status == 500).count(), 2);
    assert_eq!(seen.iter().filter(|s| s.status == 404).count(), 1);
    // The rejection reason is typed.
    env.lists.set(
        "/list.txt",
        Reply::List {
            body: hosts_list(10).into_bytes(),
            etag: None,
            gzip: false,
        },
    );
    let report = gate.refresh().await;
    assert!(matches!(
        only(&report),
        Err(RefreshError::Rejected {
            reason: Rejection::Shrunk {
                entries: 10,
                previous: 100,
                ..
            },
            ..
        })
    ));

    // A list that grows replaces the old one, and the error clears.
    env.lists.set_list("/list.txt", &hosts_list(150), "\"v3\"");
    let report = gate.refresh().await;
    assert!(
        matches!(
            only(&report),
            Ok(Outcome::Updated {
                entries: 150,
                previous: 100
            })
        ),
        "{report:?}"
    );
    assert!(gate.blocks("bad-149.example"));
    let status = gate.status("threats");
    assert_eq!(status.entries, 150);
    assert_eq!(status.last_error, None);
    assert_eq!(status.etag.as_deref(), Some("\"v3\""));
}

#[tokio::test]
async fn restart_without_network_serves_the_cache() {
    let mut env = Env::start().await;
    env.lists.set_list("/list.txt", &hosts_list(50), "\"v1\"");
    let url = env.lists.https_url("/list.txt");
    let lists = format!("[[lists]]\nname = \"threats\"\nurl = \"{url}\"\n");
    {
        let gate = Running::start(env.config(&lists));
        assert!(gate.refresh().await.rebuilt);
    }
    // The network goes away: no list server, no DNS.
    env.lists.stop();
    let mut doh = env.doh;
    doh.halt().await;

    let started = Instant::now();
    let config = config_with(&doh, &env.lists.ca_file, env.dir.path(), &lists);
    let gate = Running::start(config);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "warm cold start took {:?}",
        started.elapsed()
    );
    assert!(gate.lists.ready());
    assert!(gate.blocks("bad-49.example"));
    assert_eq!(gate.status("threats").entries, 50);

    // Refreshing fails, and changes nothing served.
    let report = gate.refresh().await;
    assert!(matches!(only(&report), Err(RefreshError::Fetch { .. })));
    assert!(gate.blocks("bad-49.example"));
    let status = gate.status("threats");
    assert!(status.ready);
    assert!(status.last_error.is_some(), "{status:?}");
    doh.stop().await;
}

#[tokio::test]
async fn cold_start_without_network_or_cache_serves_the_allowlist_and_keeps_retrying() {
    let env = Env::start().await;
    // The list server answers 404 until the list appears.
    let url = env.lists.https_url("/late.txt");
    let gate =
        Running::start(env.config(&format!("[[lists]]\nname = \"late\"\nurl = \"{url}\"\n")));
    assert!(!gate.lists.ready());
    assert!(gate.allows("api.anthropic.com"), "the allowlist serves");
    assert!(gate.blocks("local-bad.example"), "local lists serve");
    let task = gate.lists.spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = gate.status("late");
    assert!(!status.ready);
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("404"),
        "{status:?}"
    );

    // The list appears: the refresher's retry (retry_secs = 1, doubling) picks it up.
    env.lists.set_list("/late.txt", &hosts_list(5), "\"v1\"");
    let deadline = Instant::now() + Duration::from_secs(8);
    while !gate.lists.ready() {
        assert!(Instant::now() < deadline, "the refresher never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gate.blocks("bad-4.example"));
    task.abort();
}

/// The real lists in `../shared/data/blocklists/`, subscribed as `file://` URLs: every one
/// passes the guard, is cached, and its status accounts for every line. (The line-by-line
/// check against an independent count is `list_formats::real_shared_lists`.)
#[tokio::test]
#[ignore = "needs ../shared/data/blocklists (the real lists): scripts/test.sh runs it when present"]
async fn real_shared_lists_through_the_cache() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/blocklists");
    assert!(
        shared.is_dir(),
        "this test reads the real lists in {}, which are not there",
        shared.display()
    );
    let env = Env::start().await;
    let mut lists = String::new();
    let mut files: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    for path in &files {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        lists.push_str(&format!(
            "[[lists]]\nname = \"{stem}\"\nurl = \"file://{}\"\n\n",
            path.canonicalize().unwrap().display()
        ));
    }
    let gate = Running::start(env.config(&lists));
    let report = gate.refresh().await;
    assert_eq!(report.failures().count(), 0, "{report:?}");
    assert!(gate.lists.ready());
    for path in &files {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let status = gate.status(stem);
        let text = std::fs::read_to_string(path).unwrap();
        let independent = portcullis::lists::parse::parse_list(
            &text,
            portcullis::lists::parse::Format::Auto,
            |_, _| {},
        );
        assert!(status.entries > 0, "{stem}");
        assert_eq!(
            (status.lines, status.entries + status.skipped),
            (independent.lines, independent.entries + independent.skipped),
            "{stem}: every line loaded or reported skipped"
        );
        let by_reason: u32 = status.skipped_by_reason.iter().map(|(_, n)| n).sum();
        assert_eq!(by_reason, status.skipped, "{stem}");
    }
}
