//! `portcullis env`: the environment a client container needs to use the egress proxy,
//! for the clients that read proxy settings (curl, Python, Go, git, Java, gRPC, Node 24+
//! with `NODE_USE_ENV_PROXY`). Clients that ignore them (Node's built-in fetch before 24)
//! need routed mode instead (README, "Routed mode").
//!
//! Pure: an address in, lines out. The address is the one clients dial, so a wildcard
//! listener (`0.0.0.0:3128`) cannot stand for it and `--proxy HOST:PORT` must.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::Config;

/// How the variables are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvFormat {
    /// `export K='V'` lines, for `. file` in a shell or an entrypoint.
    Shell,
    /// An `environment:` mapping for a Compose service.
    Compose,
    /// An `env:` list of `name`/`value` for a Kubernetes container.
    Kubernetes,
}

/// The proxy's address as clients write it: a host (a name or an IP) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyEndpoint {
    host: String,
    port: u16,
}

impl ProxyEndpoint {
    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6). The host is an IP address or a DNS
    /// name of letters, digits, `-`, `_` and `.`; nothing else gets into the output.
    pub fn parse(text: &str) -> Result<ProxyEndpoint, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return ProxyEndpoint::from_addr(addr);
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(name_byte))
            && !host.starts_with('-');
        if !name_ok {
            return Err(format!(
                "{text:?}: the host must be an IP address or a DNS name (IPv6 as [addr]:port)"
            ));
        }
        Ok(ProxyEndpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// An address a client can dial: not a wildcard, not port 0.
    pub fn from_addr(addr: SocketAddr) -> Result<ProxyEndpoint, String> {
        if addr.ip().is_unspecified() {
            return Err(format!(
                "the proxy listens on {addr}, which is no address a client can dial: give \
                 --proxy HOST:PORT (the gate's name or address as the clients reach it)"
            ));
        }
        if addr.port() == 0 {
            return Err(format!(
                "the proxy listens on {addr} (port 0: chosen at start): give --proxy HOST:PORT"
            ));
        }
        Ok(ProxyEndpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        })
    }

    /// The first `[proxy] listen` address of `config`.
    pub fn from_config(config: &Config) -> Result<ProxyEndpoint, String> {
        let addr = config
            .proxy
            .listen
            .first()
            .ok_or_else(|| "[proxy] listen is empty: give --proxy HOST:PORT".to_owned())?;
        ProxyEndpoint::from_addr(*addr)
    }

    fn is_v6(&self) -> bool {
        matches!(self.host.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
    }

    /// `http://host:port` (IPv6 in brackets).
    pub fn url(&self) -> String {
        if self.is_v6() {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Checks one extra `NO_PROXY` entry: a name, `.suffix`, `*`, an IP or a CIDR.
pub fn check_no_proxy_entry(entry: &str) -> Result<(), String> {
    let ok = !entry.is_empty()
        && entry
            .bytes()
            .all(|b| name_byte(b) || matches!(b, b'.' | b'*' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--no-proxy {entry:?}: a host name, .domain, IP address or CIDR"
        ))
    }
}

/// The variables, in order, for a client of the proxy at `proxy`; `extra_no_proxy` are the
/// client's own tier (services it reaches directly), after loopback and the gate itself.
pub fn client_env(proxy: &ProxyEndpoint, extra_no_proxy: &[String]) -> Vec<(String, String)> {
    let url = proxy.url();
    let mut no_proxy = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    // Java's list: `|`-separated, IPv6 in brackets, `*` wildcards (the JDK's own default
    // is localhost|127.*|[::1]).
    let mut java_no_proxy = vec![
        "localhost".to_owned(),
        "127.*".to_owned(),
        "[::1]".to_owned(),
    ];
    for host in std::iter::once(&proxy.host).chain(extra_no_proxy) {
        if !no_proxy.contains(host) {
            no_proxy.push(host.clone());
            let java = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => format!("[{host}]"),
                _ => host.replacen('.', "*.", usize::from(host.starts_with('.'))),
            };
            java_no_proxy.push(java);
        }
    }
    let no_proxy = no_proxy.join(",");
    let port = proxy.port.to_string();
    // Java wants the bare host (no brackets for IPv6).
    let host = &proxy.host;
    let java = format!(
        "-Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.proxyHost={host} \
         -Dhttp.proxyPort={port} -Dhttp.nonProxyHosts={}",
        java_no_proxy.join("|")
    );
    [
        ("HTTPS_PROXY", url.clone()),
        ("HTTP_PROXY", url.clone()),
        ("https_proxy", url.clone()),
        ("http_proxy", url.clone()),
        ("NO_PROXY", no_proxy.clone()),
        ("no_proxy", no_proxy),
        // Node.js 24+: fetch and http(s) read the variables above only with this.
        ("NODE_USE_ENV_PROXY", "1".to_owned()),
        ("JAVA_TOOL_OPTIONS", java),
        ("grpc_proxy", url.clone()),
        // git reads http_proxy too; this holds even where a global git config sets another.
        ("GIT_CONFIG_COUNT", "1".to_owned()),
        ("GIT_CONFIG_KEY_0", "http.proxy".to_owned()),
        ("GIT_CONFIG_VALUE_0", url),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `value` in single quotes for a POSIX shell: `'` becomes `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `value` as a YAML double-quoted scalar (a JSON string is one).
fn yaml_quote(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// The variables in `format`, with a comment naming the proxy first.
pub fn render(vars: &[(String, String)], proxy: &ProxyEndpoint, format: EnvFormat) -> String {
    let mut out = format!(
        "# portcullis env: clients that read proxy settings use the gate's proxy at {}\n",
        proxy.url()
    );
    match format {
        EnvFormat::Shell => {
            for (k, v) in vars {
                let _ = writeln!(out, "export {k}={}", shell_quote(v));
            }
        }
        EnvFormat::Compose => {
            out.push_str("environment:\n");
            for (k, v) in vars {
                let _ = writeln!(out, "  {k}: {}", yaml_quote(v));
            }
        }
        EnvFormat::Kubernetes => {
            out.push_str("env:\n");
            for (k, v) in vars {
                let _ = writeln!(out, "  - name: {k}\n    value: {}", yaml_quote(v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_map(proxy: &str, extra: &[&str]) -> std::collections::HashMap<String, String> {
        let p = ProxyEndpoint::parse(proxy).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        client_env(&p, &extra).into_iter().collect()
    }

    #[test]
    fn endpoints_parse_and_refuse() {
        assert_eq!(
            ProxyEndpoint::parse("portcullis:3128").unwrap().url(),
            "http://portcullis:3128"
        );
        assert_eq!(
            ProxyEndpoint::parse("172.30.0.53:3128").unwrap().url(),
            "http://172.30.0.53:3128"
        );
        assert_eq!(
            ProxyEndpoint::parse("[fd00::53]:3128").unwrap().url(),
            "http://[fd00::53]:3128"
        );
        for bad in [
            "portcullis",
            "portcullis:0",
            "portcullis:99999",
            "a b:3128",
            "it's:3128",
            ":3128",
            "a..b:3128",
            "0.0.0.0:3128",
            "[::]:3128",
            "-x:3128",
        ] {
            assert!(ProxyEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_variables_name_the_proxy_everywhere() {
        let env = env_map("172.30.0.53:3128", &["litellm", ".svc.cluster.local"]);
        let url = "http://172.30.0.53:3128";
        for k in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "grpc_proxy",
            "GIT_CONFIG_VALUE_0",
        ] {
            assert_eq!(env[k], url, "{k}");
        }
        assert_eq!(
            env["NO_PROXY"],
            "localhost,127.0.0.1,::1,172.30.0.53,litellm,.svc.cluster.local"
        );
        assert_eq!(env["no_proxy"], env["NO_PROXY"]);
        assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
        assert_eq!(env["GIT_CONFIG_COUNT"], "1");
        assert_eq!(env["GIT_CONFIG_KEY_0"], "http.proxy");
        assert_eq!(
            env["JAVA_TOOL_OPTIONS"],
            "-Dhttps.proxyHost=172.30.0.53 -Dhttps.proxyPort=3128 -Dhttp.proxyHost=172.30.0.53 \
             -Dhttp.proxyPort=3128 -Dhttp.nonProxyHosts=localhost|127.*|[::1]|172.30.0.53|\
             litellm|*.svc.cluster.local"
        );
        let v6 = env_map("[fd00::53]:3128", &[]);
        assert_eq!(v6["HTTPS_PROXY"], "http://[fd00::53]:3128");
        assert!(v6["NO_PROXY"].ends_with(",fd00::53"));
        assert!(
            v6["JAVA_TOOL_OPTIONS"].contains("-Dhttps.proxyHost=fd00::53 ")
                && v6["JAVA_TOOL_OPTIONS"].ends_with("|[fd00::53]")
        );
    }

    #[test]
    fn no_proxy_entries_are_checked() {
        for good in ["litellm", ".svc", "10.0.0.0/8", "*", "fd00::1", "a_b-c"] {
            assert!(check_no_proxy_entry(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a'b", "a\"b", "a;b", "a,b", "$(x)"] {
            assert!(check_no_proxy_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("$HOME `x` \\"), "'$HOME `x` \\'");
    }

    #[test]
    fn formats() {
        let p = ProxyEndpoint::parse("gate:3128").unwrap();
        let vars = vec![("A".to_owned(), "x'y \"z\"".to_owned())];
        assert!(render(&vars, &p, EnvFormat::Shell).ends_with("export A='x'\\''y \"z\"'\n"));
        assert!(
            render(&vars, &p, EnvFormat::Compose)
                .ends_with("environment:\n  A: \"x'y \\\"z\\\"\"\n")
        );
        assert!(
            render(&vars, &p, EnvFormat::Kubernetes)
                .ends_with("env:\n  - name: A\n    value: \"x'y \\\"z\\\"\"\n")
        );
    }
}
