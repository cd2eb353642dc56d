//! Configuration: `portcullis.toml`, the separate `allowlist.toml`, and
//! `PORTCULLIS_*` environment overrides.
//!
//! Every error names the file (or variable), the line and the key. A file that
//! does not validate is refused whole; the caller keeps whatever it ran before.

pub mod admin;
pub mod allowlist;
pub mod allowlist_merge;
pub mod dns;
pub mod lists;
use lists::RawListConfig;
pub mod learn;
pub mod locate;
pub mod proxy;
pub mod routed;
pub mod upstream;
pub mod watch;

pub use admin::{AdminConfig, AdminToken};
pub use dns::{BareNames, BlockAnswer, DnsConfig, GuardConfig, RateLimitConfig};
pub use learn::LearnConfig;
pub use lists::{
    Format, ListConfig, ListSource, MAX_LIST_NAME_BYTES, MIN_KEYWORD_LEN, SourcesConfig,
};
pub use proxy::{ProxyConfig, ProxyMode};
pub use routed::RoutedConfig;
pub use upstream::{Strategy, UpstreamConfig, UpstreamSpec};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Fault, HasFault};

/// The configuration shipped inside the binary; `portcullis` with no arguments runs on it.
pub const BUILTIN_CONFIG: &str = include_str!("../../portcullis.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `reason` is not a `source`: the message already carries it, once.
    #[error("{file}: cannot read: {reason}")]
    Read {
        file: String,
        reason: std::io::Error,
    },
    /// toml's message already names the line, column and key.
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

impl HasFault for ConfigError {
    fn fault(&self) -> Fault {
        // The operator's input; never the DNS client's.
        Fault::Internal
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Entries kept at most (0 disables the cache).
    pub max_entries: usize,
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// Longest time a negative answer (NXDOMAIN, NODATA) is cached, seconds.
    pub negative_ttl: u32,
    /// Serve expired answers when no upstream answers (RFC 8767).
    pub serve_stale: bool,
    /// How long past expiry an answer may still be served stale, seconds.
    pub stale_max_age: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 50_000,
            min_ttl: 0,
            max_ttl: 86_400,
            negative_ttl: 300,
            serve_stale: true,
            stale_max_age: 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text when it is.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `portcullis=debug`.
    pub level: String,
    /// Log one line per allowed/forwarded query too (blocked ones are always logged).
    pub allowed_queries: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
            allowed_queries: true,
        }
    }
}

/// The whole configuration, as read from `portcullis.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dns: DnsConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub proxy: ProxyConfig,
    pub routed: RoutedConfig,
    pub admin: AdminConfig,
    pub learn: LearnConfig,
    /// Group name → client networks.
    pub groups: BTreeMap<String, Vec<Spanned<ipnet::IpNet>>>,
    /// Path of the allowlist; the shipped allowlist (built in) when absent.
    pub allowlist: Option<PathBuf>,
    /// `[[lists]]` as read; [`Config::parse`] turns them into `lists` and leaves this empty.
    #[serde(rename = "lists")]
    raw_lists: Vec<RawListConfig>,
    #[serde(skip)]
    pub lists: Vec<ListConfig>,
    pub sources: SourcesConfig,
    /// Where the file came from (not a TOML key).
    #[serde(skip)]
    pub origin: ConfigOrigin,
}

/// The file a configuration was read from, for error messages and relative paths.
#[derive(Debug, Clone, Default)]
pub struct ConfigOrigin {
    /// Display name: the path, or `<built-in>`.
    pub file: String,
    /// Directory that relative paths are resolved against.
    pub dir: PathBuf,
    pub source: String,
}

impl ConfigOrigin {
    /// 1-based line of a byte offset in the source.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(&self.source, offset)
    }

    /// An error at the key `path` (`dns.listen`, `lists[2].keywords`: see
    /// [`locate::key_offset`]), named `key` in the message.
    pub fn invalid_key(
        &self,
        path: &str,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let at = locate::key_offset(&self.source, path).unwrap_or(0);
        self.invalid(at, key, message)
    }

    pub fn invalid(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line_of(offset),
            key: key.into(),
            message: message.into(),
        }
    }
}

pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// The built-in default configuration; relative paths resolve against the working directory.
    pub fn builtin() -> Result<Config, ConfigError> {
        Self::parse(BUILTIN_CONFIG, "<built-in>", Path::new("."))
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            file: path.display().to_string(),
            reason,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), dir)
    }

    pub fn parse(text: &str, file: &str, dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.origin = ConfigOrigin {
            file: file.to_owned(),
            dir: dir.to_owned(),
            source: text.to_owned(),
        };
        config.lists = std::mem::take(&mut config.raw_lists)
            .into_iter()
            .map(|raw| raw.checked(&config.origin))
            .collect::<Result<_, _>>()?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `PORTCULLIS_*` overrides (the settings a compose file sets).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            self.apply_var(var, value)?;
        }
        self.validate()
    }

    /// One `PORTCULLIS_*` override; other names are ignored.
    fn apply_var(&mut self, var: String, value: String) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        match var.as_str() {
            "PORTCULLIS_DNS_LISTEN" => {
                self.dns.listen = split_list(&value)
                    .map(|s| s.parse().map_err(|e| bad(format!("`{s}`: {e}"))))
                    .collect::<Result<_, _>>()?;
            }
            "PORTCULLIS_PROXY_LISTEN" => {
                self.proxy.listen = split_list(&value)
                    .map(|s| s.parse().map_err(|e| bad(format!("`{s}`: {e}"))))
                    .collect::<Result<_, _>>()?;
            }
            "PORTCULLIS_ADMIN_LISTEN" => {
                self.admin.listen = split_list(&value)
                    .map(|s| s.parse().map_err(|e| bad(format!("`{s}`: {e}"))))
                    .collect::<Result<_, _>>()?;
            }
            "PORTCULLIS_UPSTREAMS" => {
                // url[#tls_name], comma separated.
                self.upstream.servers = split_list(&value)
                    .map(|s| {
                        let (url, tls_name) = match s.split_once('#') {
                            Some((u, n)) => (u, Some(n.to_owned())),
                            None => (s, None),
                        };
                        UpstreamSpec {
                            name: None,
                            url: url.to_owned(),
                            tls_name,
                            timeout_ms: None,
                            ca_file: None,
                        }
                    })
                    .collect();
            }
            "PORTCULLIS_UPSTREAM_STRATEGY" => {
                self.upstream.strategy = match value.as_str() {
                    "parallel" => Strategy::Parallel,
                    "failover" => Strategy::Failover,
                    other => {
                        return Err(bad(format!("`{other}`: expected parallel or failover")));
                    }
                }
            }
            "PORTCULLIS_ALLOWLIST" => self.allowlist = Some(PathBuf::from(value.clone())),
            "PORTCULLIS_LOG_FORMAT" => {
                self.log.format = match value.as_str() {
                    "json" => LogFormat::Json,
                    "text" => LogFormat::Text,
                    "auto" => LogFormat::Auto,
                    other => {
                        return Err(bad(format!("`{other}`: expected json, text or auto")));
                    }
                }
            }
            "PORTCULLIS_LOG_LEVEL" => self.log.level = value.clone(),
            "PORTCULLIS_BLOCK_ANSWER" => {
                self.dns.block_answer =
                    BlockAnswer::deserialize(toml::Value::String(value.clone())).map_err(|_| {
                        bad(format!(
                            "`{value}`: expected nxdomain, zero_ip, refused or addresses"
                        ))
                    })?;
            }
            "PORTCULLIS_ADMIN_TOKEN_FILE" => {
                self.admin.token_file = Some(PathBuf::from(value.clone()))
            }
            "PORTCULLIS_CACHE_DIR" => self.sources.cache_dir = PathBuf::from(value.clone()),
            "PORTCULLIS_CACHE_MAX_ENTRIES" => {
                self.cache.max_entries =
                    value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks what serde cannot: cross-references and ranges.
    fn validate(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        // `key` is a dotted path; the message names its last part, as serde's do.
        let invalid = |key: &str, message: String| {
            o.invalid_key(key, key.rsplit('.').next().unwrap_or(key), message)
        };
        // `[proxy]` and `[admin]` name their keys in full.
        let invalid_full = |key: &str, message: String| o.invalid_key(key, key, message);
        if self.dns.listen.is_empty() {
            return Err(invalid(
                "dns.listen",
                "at least one address is needed".into(),
            ));
        }
        if self.dns.block_answer == BlockAnswer::Addresses && self.dns.block_addresses.is_empty() {
            return Err(invalid(
                "dns.block_addresses",
                "block_answer = \"addresses\" needs at least one address".into(),
            ));
        }
        if self.dns.max_inflight == 0 {
            return Err(invalid("dns.max_inflight", "must be at least 1".into()));
        }
        if self.upstream.servers.is_empty() {
            return Err(invalid(
                "upstream.servers",
                "at least one upstream is needed".into(),
            ));
        }
        if self.cache.min_ttl > self.cache.max_ttl {
            return Err(invalid("cache.min_ttl", "must not exceed max_ttl".into()));
        }
        if self.groups.len() + 1 > crate::policy::groups::MAX_GROUPS {
            return Err(invalid(
                "groups",
                format!("at most {} groups", crate::policy::groups::MAX_GROUPS - 1),
            ));
        }
        if self.groups.contains_key("default") {
            return Err(invalid(
                "groups.default",
                "`default` is the group of every client no network names; it cannot list networks"
                    .into(),
            ));
        }
        self.validate_lists()?;
        self.validate_sources()?;
        let mut group_names: Vec<String> = self.groups.keys().cloned().collect();
        group_names.push("default".to_owned());
        self.proxy
            .validate(&group_names)
            .map_err(|(key, message)| invalid_full(key, message))?;
        self.routed
            .validate()
            .map_err(|(key, message)| invalid_full(key, message))?;
        self.dns
            .validate(&group_names)
            .map_err(|(key, message)| invalid(key, message))?;
        self.admin
            .validate()
            .map_err(|(key, message)| invalid_full(key, message))?;
        self.learn
            .validate()
            .map_err(|(key, message)| invalid_full(key, message))?;
        Ok(())
    }

    /// `[[lists]]`: names, sources, groups.
    fn validate_lists(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        let mut names = std::collections::HashSet::new();
        for (index, list) in self.lists.iter().enumerate() {
            let at = list.name.span().start;
            // Its cache files are named after it (`%XX` for each unsafe byte): bounded so
            // that they stay within a file name's 255 bytes.
            let len = list.name.get_ref().len();
            if len == 0 || len > MAX_LIST_NAME_BYTES {
                return Err(o.invalid(
                    at,
                    "lists.name",
                    format!("a list name has 1 to {MAX_LIST_NAME_BYTES} bytes, this one {len}"),
                ));
            }
            if !names.insert(list.name.get_ref().as_str()) {
                return Err(o.invalid(
                    at,
                    "lists.name",
                    format!("duplicate list name `{}`", list.name.get_ref()),
                ));
            }
            list.validate_source(o, index)?;
            if list.groups.as_ref().is_some_and(Vec::is_empty) {
                return Err(o.invalid_key(
                    &format!("lists[{index}].groups"),
                    "lists.groups",
                    format!(
                        "list `{}`: an empty group list applies to no client; name the groups, or leave `groups` out for every group",
                        list.name.get_ref()
                    ),
                ));
            }
            for group in list.groups.iter().flatten() {
                if group.get_ref() != "default" && !self.groups.contains_key(group.get_ref()) {
                    return Err(o.invalid(
                        group.span().start,
                        "lists.groups",
                        format!(
                            "unknown group `{}` (define it under [groups])",
                            group.get_ref()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `[sources]` keys `serde` cannot check.
    fn validate_sources(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        let s = &self.sources;
        let bad = |key: &str, message: &str| {
            let key = format!("sources.{key}");
            o.invalid_key(&key, key.clone(), message)
        };
        if s.refresh_secs < 60 {
            return Err(bad("refresh_secs", "must be at least 60"));
        }
        if !(0.0..=0.5).contains(&s.jitter) {
            return Err(bad("jitter", "must be between 0 and 0.5"));
        }
        if s.timeout_secs == 0 || s.connect_timeout_secs == 0 {
            return Err(bad("timeout_secs", "timeouts must be at least 1 second"));
        }
        if s.max_concurrent == 0 {
            return Err(bad("max_concurrent", "must be at least 1"));
        }
        if s.max_bytes < 1024 {
            return Err(bad("max_bytes", "must be at least 1024"));
        }
        if s.retry_secs == 0 {
            return Err(bad("retry_secs", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&s.min_ratio) {
            return Err(bad("min_ratio", "must be between 0 and 1"));
        }
        Ok(())
    }

    /// Resolves a path from the config against the config file's directory.
    /// The settings that differ between `self` (running) and `new` but are read only at
    /// start: listeners, upstreams, cache, logging, the proxy and the routed listeners. A
    /// reload applies the rest (allowlist, lists, groups, DNS answer settings, admin token)
    /// at once.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut keys = Vec::new();
        let checks: [(&'static str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); 10] = [
            ("dns.listen", &self.dns.listen, &new.dns.listen),
            (
                "dns.max_inflight",
                &self.dns.max_inflight,
                &new.dns.max_inflight,
            ),
            (
                "dns.tcp_idle_secs",
                &self.dns.tcp_idle_secs,
                &new.dns.tcp_idle_secs,
            ),
            ("upstream", &self.upstream, &new.upstream),
            ("cache", &self.cache, &new.cache),
            ("log", &self.log, &new.log),
            ("proxy", &self.proxy, &new.proxy),
            ("routed", &self.routed, &new.routed),
            ("admin.listen", &self.admin.listen, &new.admin.listen),
            ("learn", &self.learn, &new.learn),
        ];
        for (key, old, new) in checks {
            if differs(old, new) {
                keys.push(key);
            }
        }
        keys
    }

    /// Reads the admin token from `[admin] token_file` (after environment overrides).
    /// A missing or empty file is refused like any other bad setting.
    pub fn read_admin_token(&mut self) -> Result<(), ConfigError> {
        let Some(file) = &self.admin.token_file else {
            self.admin.token = None;
            return Ok(());
        };
        let path = self.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|reason| ConfigError::Read {
            file: path.display().to_string(),
            reason,
        })?;
        let token = AdminToken::from_file_text(&text).ok_or_else(|| {
            let o = &self.origin;
            ConfigError::Invalid {
                file: o.file.clone(),
                line: locate::key_offset(&o.source, "admin.token_file")
                    .map_or(0, |at| o.line_of(at)),
                key: "admin.token_file".to_owned(),
                message: format!("{} is empty", path.display()),
            }
        })?;
        self.admin.token = Some(token);
        Ok(())
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.origin.dir.join(path)
        }
    }
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "portcullis.toml", Path::new("."))
    }

    /// The line of an error is the key's own, found in the parsed document: a comment
    /// or another table that mentions the key first does not move it (issue 12).
    #[test]
    fn errors_name_the_line_of_the_key_itself() {
        let text = "# max_inflight: how many queries at once\n[admin]\nlisten = [\"127.0.0.1:9953\"]\n\n[dns]\nlisten = []\nmax_inflight = 0\n";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(
            err,
            "portcullis.toml:6: key `listen`: at least one address is needed"
        );
        let err = parse(&text.replace("listen = []\n", ""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "portcullis.toml:6: key `max_inflight`: must be at least 1"
        );
        // `[proxy]` keys are named in full; they were found nowhere in the text before.
        let err = parse("[dns]\nmax_inflight = 8\n\n[proxy]\nconnect_timeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("portcullis.toml:5: key `proxy.connect_timeout_ms`: "),
            "{err}"
        );
        // `[learn]` keys too.
        let err = parse("[learn]\npersist = false\nmax_entries = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("portcullis.toml:3: key `learn.max_entries`: 0 is out of range"),
            "{err}"
        );
        // `[routed]` keys too.
        let err = parse("[routed]\ntls_listen = [\"127.0.0.1:443\"]\n\ntls_ports = [0]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("portcullis.toml:4: key `routed.tls_ports`: port 0 is not a port"),
            "{err}"
        );
        // The second list's keywords, not the first `keywords` of the file.
        let lists = "[[lists]]\nname = \"a\"\ninline = \"x.example\"\nkeywords = [\"fine\"]\n\n[[lists]]\nname = \"b\"\ninline = \"y.example\"\nkeywords = [\"..\"]\n";
        let err = parse(lists).unwrap_err().to_string();
        assert!(
            err.starts_with("portcullis.toml:9: key `lists.keywords`: list `b`: "),
            "{err}"
        );
    }

    /// A list URL is checked for its scheme byte-wise: a character that spans the scheme's
    /// length gets the error, not a panic (found by the config fuzzer).
    #[test]
    fn a_list_url_of_any_characters_is_refused_with_an_error() {
        for url in [
            "https:/щѡirebog.net/x.txt",
            "щщщщщщщщ",
            "ftp://lists.example/x",
            "https://",
        ] {
            let text = format!("[[lists]]\nname = \"a\"\nurl = \"{url}\"\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("portcullis.toml:3: key `lists.url`: list `a`: ")
                    && err.ends_with("expected an https://, http:// or file:// URL"),
                "{url}: {err}"
            );
        }
        let ok = parse("[[lists]]\nname = \"a\"\nurl = \"HTTPS://lists.example/x.txt\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// A list has exactly one source; what it was given decides the message.
    #[test]
    fn a_list_has_exactly_one_source() {
        let none = parse("[[lists]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(
            none.contains("list `a`: needs `path`, `url` or `inline`"),
            "{none}"
        );
        assert!(
            none.starts_with("portcullis.toml:2: key `lists`: "),
            "{none}"
        );
        let two = parse("[[lists]]\nname = \"b\"\npath = \"b.txt\"\ninline = \"x.example\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            two.contains("list `b`: give only one of `path`, `url` or `inline`"),
            "{two}"
        );
        let ok = parse("[[lists]]\nname = \"c\"\nurl = \"https://lists.example/c.txt\"\n").unwrap();
        assert_eq!(ok.lists[0].url(), Some("https://lists.example/c.txt"));
        assert_eq!(ok.lists[0].path(), None);
    }

    #[test]
    fn builtin_config_is_valid() {
        let c = Config::builtin().unwrap();
        assert_eq!(
            c.dns.listen,
            vec!["127.0.0.1:5353".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(c.dns.block_answer, BlockAnswer::Nxdomain);
        assert!(c.dns.rebinding_protection);
        assert!(c.allowlist.is_none());
    }

    #[test]
    fn syntax_errors_name_file_line_and_key() {
        let err = parse("[dns]\nblock_ttl = 60\nblock_anser = \"refused\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("portcullis.toml: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("block_anser"), "{err}");
        let err = parse("[dns]\n\nblock_ttl = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("block_ttl"), "{err}");
        let err = parse("[dns]\nlisten = [\"127.0.0.1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("listen"), "{err}");
        let err = parse("[proxy]\nrelay = \"zero-copy\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("relay") && err.contains("splice"),
            "{err}"
        );
        let ok = parse("[proxy]\nrelay = \"splice\"\n").unwrap();
        assert_eq!(ok.proxy.relay, proxy::RelayMode::Splice);
    }

    #[test]
    fn semantic_errors_name_file_line_and_key() {
        let text = "[groups]\nagent = [\"10.0.0.0/8\"]\n\n[[lists]]\nname = \"a\"\ninline = \"x.com\"\ngroups = [\"agnet\"]\n";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(
            err,
            "portcullis.toml:7: key `lists.groups`: unknown group `agnet` (define it under [groups])"
        );
        let err = parse("[[lists]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(err.starts_with("portcullis.toml:2: key `lists`"), "{err}");
        let err = parse("[dns]\nblock_answer = \"addresses\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("block_addresses"), "{err}");
        let err = parse("[groups]\nagent = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn keywords_and_empty_groups_are_validated() {
        let list = |extra: &str| format!("[[lists]]\nname = \"a\"\ninline = \"x.com\"\n{extra}\n");
        for (keywords, why) in [
            ("[\"\"]", "an empty keyword would block every name"),
            (
                "[\"ok-word\", \"ab\"]",
                "keyword `ab` is shorter than 3 characters",
            ),
            ("[\"bad word\"]", "' ' never occurs in a name"),
            ("[\"...\"]", "would block every name with dots"),
        ] {
            let err = parse(&list(&format!("keywords = {keywords}")))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("portcullis.toml:4: key `lists.keywords`: list `a`: ")
                    && err.contains(why),
                "{keywords}: {err}"
            );
        }
        assert!(parse(&list("keywords = [\"exfil\", \"c2.\"]")).is_ok());
        let long = format!(
            "[[lists]]\nname = \"{}\"\ninline = \"x.com\"\n",
            "é".repeat(33)
        );
        let err = parse(&long).unwrap_err().to_string();
        assert!(
            err.starts_with("portcullis.toml:2: key `lists.name`: a list name has 1 to 64 bytes"),
            "{err}"
        );
        let err = parse(&format!(
            "[groups]\nagent = [\"10.0.0.0/8\"]\n{}",
            list("groups = []")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("portcullis.toml:6: key `lists.groups`: list `a`: an empty group list"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides() {
        let mut c = Config::builtin().unwrap();
        c.apply_env([
            (
                "PORTCULLIS_DNS_LISTEN".to_owned(),
                "0.0.0.0:53, [::]:53".to_owned(),
            ),
            (
                "PORTCULLIS_UPSTREAMS".to_owned(),
                "https://9.9.9.9/dns-query#dns.quad9.net".to_owned(),
            ),
            ("PORTCULLIS_BLOCK_ANSWER".to_owned(), "zero_ip".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ])
        .unwrap();
        assert_eq!(c.dns.listen.len(), 2);
        assert_eq!(
            c.upstream.servers[0].tls_name.as_deref(),
            Some("dns.quad9.net")
        );
        assert_eq!(c.dns.block_answer, BlockAnswer::ZeroIp);
        let err = c
            .apply_env([("PORTCULLIS_DNS_LISTEN".to_owned(), "nowhere".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable PORTCULLIS_DNS_LISTEN: `nowhere`"),
            "{err}"
        );
    }
}
