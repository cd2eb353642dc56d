//! Reading the gate's /metrics (the Prometheus text format), and promtool's verdict on it.

use std::io::Write;
use std::process::{Command, Stdio};

/// The value of one sample line (`name{labels} value`), the series written exactly.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The sum of the samples of `metric` whose labels contain every one of `labels`.
pub fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            let set = l.split_once('}').map_or("", |(s, _)| s);
            labels.iter().all(|want| set.contains(want))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Runs `promtool ARGS`, `input` on its stdin: (success, stdout + stderr). Fails the
/// test without promtool (Debian's `prometheus`, which scripts/test.sh installs).
pub fn promtool(args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (scripts/test.sh does)"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
