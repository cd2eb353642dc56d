//! Whether the gate's network namespace routes packets between its interfaces.
//!
//! The gate is its clients' only way out only while its namespace does not forward: with
//! `net.ipv4.ip_forward = 1`, a client that routes through the gate's address reaches the
//! networks behind it without the DNS firewall or the proxy seeing a packet. A namespace
//! inherits the setting from the host that creates it, and a host running containers
//! usually forwards. The gate runs without capabilities and cannot turn it off, so it says
//! so at start; the compose file sets it to 0 for the gate's namespace.

use std::path::Path;

/// The forwarding sysctls, and where `/proc` shows them for the caller's namespace.
const SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.ip_forward", "proc/sys/net/ipv4/ip_forward"),
    (
        "net.ipv6.conf.all.forwarding",
        "proc/sys/net/ipv6/conf/all/forwarding",
    ),
];

/// The forwarding sysctls that are on, read under `root` (`/` for the running process).
/// A file that cannot be read (IPv6 disabled in the kernel) counts as off.
pub fn enabled_under(root: &Path) -> Vec<&'static str> {
    SYSCTLS
        .iter()
        .filter(|(_, file)| {
            std::fs::read_to_string(root.join(file)).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
        })
        .map(|(name, _)| *name)
        .collect()
}

/// Logs one warning when this process's namespace forwards packets.
pub fn warn_if_forwarding() {
    let on = enabled_under(Path::new("/"));
    if on.is_empty() {
        return;
    }
    tracing::warn!(
        sysctls = %on.join(", "),
        "this network namespace forwards packets: a client that routes through the gate's \
         address reaches the networks behind it unfiltered. Set them to 0 for the gate's \
         namespace (the compose file sets net.ipv4.ip_forward: 0), or make sure no client \
         can route through it (Kubernetes: the NetworkPolicy)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(v4: Option<&str>, v6: Option<&str>) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (value, (_, file)) in [v4, v6].into_iter().zip(SYSCTLS) {
            if let Some(value) = value {
                let path = root.path().join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, value).unwrap();
            }
        }
        root
    }

    #[test]
    fn reads_each_family() {
        let off = root_with(Some("0\n"), Some("0\n"));
        assert!(enabled_under(off.path()).is_empty());
        let v4 = root_with(Some("1\n"), Some("0\n"));
        assert_eq!(enabled_under(v4.path()), ["net.ipv4.ip_forward"]);
        let both = root_with(Some("1\n"), Some("1\n"));
        assert_eq!(
            enabled_under(both.path()),
            ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]
        );
    }

    #[test]
    fn a_missing_file_is_off() {
        let no_v6 = root_with(Some("0\n"), None);
        assert!(enabled_under(no_v6.path()).is_empty());
        let nothing = root_with(None, None);
        assert!(enabled_under(nothing.path()).is_empty());
    }
}
