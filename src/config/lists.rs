//! `[[lists]]` and `[sources]`: where each list's rules come from, its format (configuration
//! vocabulary, so it lives here and [`crate::lists::parse`], which reads each format,
//! takes it from config), and how `url` lists are downloaded.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, ConfigOrigin};

/// A list's syntax. `Domains` covers plain names mixed freely with `*.name`,
/// `=name`, `/regex/` and bare addresses (see [`crate::lists::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Auto,
    Hosts,
    Domains,
    Adblock,
    Dnsmasq,
    Ips,
}

impl Format {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Hosts => "hosts",
            Format::Domains => "domains",
            Format::Adblock => "adblock",
            Format::Dnsmasq => "dnsmasq",
            Format::Ips => "ips",
        }
    }
}

/// One threat list or local list.
#[derive(Debug, Clone)]
pub struct ListConfig {
    pub name: Spanned<String>,
    pub source: ListSource,
    /// Seconds between refreshes of a `url` list (jittered); `[sources] refresh_secs` when absent.
    pub refresh_secs: Option<u64>,
    /// A download with fewer entries than this share of the list it replaces is rejected;
    /// `[sources] min_ratio` when absent.
    pub min_ratio: Option<f64>,
    pub format: Format,
    /// Groups the list applies to; all groups when absent.
    pub groups: Option<Vec<Spanned<String>>>,
    /// Substring rules: any name containing one of these is denied.
    pub keywords: Vec<String>,
    /// A missing file is a warning, not an error.
    pub optional: bool,
}

/// Where a list's rules come from: exactly one of the keys `path`, `url` and `inline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListSource {
    /// A file, relative to the config file's directory, read as it is (the operator's own list).
    Path(PathBuf),
    /// A subscribed list: `https://...`, `http://...` or `file:///...`. Downloaded in the
    /// background, checked by the sanity guard and kept in `[sources] cache_dir`.
    Url(Spanned<String>),
    /// Rules written in the config itself.
    Inline(Spanned<String>),
}

impl ListConfig {
    /// The URL of a subscribed list.
    pub fn url(&self) -> Option<&str> {
        match &self.source {
            ListSource::Url(url) => Some(url.get_ref()),
            _ => None,
        }
    }

    /// The file of a local list, as written (relative to the config file's directory).
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            ListSource::Path(path) => Some(path),
            _ => None,
        }
    }
}

/// `[[lists]]` as written: [`Config::parse`] checks its three source keys into one
/// [`ListSource`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListConfig {
    name: Spanned<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    refresh_secs: Option<u64>,
    #[serde(default)]
    min_ratio: Option<f64>,
    #[serde(default)]
    inline: Option<Spanned<String>>,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    groups: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    optional: bool,
}

impl RawListConfig {
    pub(super) fn checked(self, o: &ConfigOrigin) -> Result<ListConfig, ConfigError> {
        let source = match (self.path, self.url, self.inline) {
            (Some(path), None, None) => ListSource::Path(path),
            (None, Some(url), None) => ListSource::Url(url),
            (None, None, Some(inline)) => ListSource::Inline(inline),
            (path, url, inline) => {
                let given = [path.is_some(), url.is_some(), inline.is_some()];
                let what = if given.contains(&true) {
                    "give only one of"
                } else {
                    "needs"
                };
                return Err(o.invalid(
                    self.name.span().start,
                    "lists",
                    format!(
                        "list `{}`: {what} `path`, `url` or `inline`",
                        self.name.get_ref()
                    ),
                ));
            }
        };
        Ok(ListConfig {
            name: self.name,
            source,
            refresh_secs: self.refresh_secs,
            min_ratio: self.min_ratio,
            format: self.format,
            groups: self.groups,
            keywords: self.keywords,
            optional: self.optional,
        })
    }
}

/// How `url` lists are downloaded, checked and cached (`[sources]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Last-known-good copies of `url` lists and their metadata: the only place the gate
    /// writes. Relative to the config file's directory.
    pub cache_dir: PathBuf,
    /// Default seconds between refreshes of a `url` list.
    pub refresh_secs: u64,
    /// Each wait is spread by up to this share either way (0.1 = ±10%).
    pub jitter: f64,
    /// Whole-download timeout (connect, headers and body), seconds.
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Extra attempts after a failed download (timeouts, resets, 5xx, 429), with doubling back-off.
    pub retries: u32,
    /// Back-off before the first retry, milliseconds.
    pub retry_backoff_ms: u64,
    /// After a failed refresh the source is tried again after this many seconds, doubling up
    /// to its refresh interval.
    pub retry_secs: u64,
    /// Largest accepted body, in bytes, after decompression.
    pub max_bytes: u64,
    /// Downloads at once.
    pub max_concurrent: usize,
    /// Default for `min_ratio` on each list.
    pub min_ratio: f64,
    /// Extra PEM CA bundle to trust for list servers (private mirrors, tests). Default trust:
    /// webpki-roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig {
            cache_dir: PathBuf::from("cache/lists"),
            refresh_secs: 4 * 3600,
            jitter: 0.1,
            timeout_secs: 60,
            connect_timeout_secs: 10,
            retries: 2,
            retry_backoff_ms: 1000,
            retry_secs: 60,
            max_bytes: 64 << 20,
            max_concurrent: 2,
            min_ratio: 0.5,
            ca_file: None,
        }
    }
}

/// Longest list name, in bytes (UTF-8).
pub const MAX_LIST_NAME_BYTES: usize = 64;

/// Shortest keyword accepted: a shorter substring (`a`, `co`) blocks a large share of
/// every name there is.
pub const MIN_KEYWORD_LEN: usize = 3;

/// Why a keyword (a substring of normalised names) cannot be a rule, if it cannot.
fn keyword_problem(keyword: &str) -> Option<String> {
    if keyword.is_empty() {
        return Some("an empty keyword would block every name".into());
    }
    if let Some(c) = keyword
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "keyword `{keyword}`: {c:?} never occurs in a name (keywords use a-z, 0-9, `-`, `_` and `.`)"
        ));
    }
    if keyword.len() < MIN_KEYWORD_LEN {
        return Some(format!(
            "keyword `{keyword}` is shorter than {MIN_KEYWORD_LEN} characters and would block too many names"
        ));
    }
    if keyword.bytes().all(|b| b == b'.') {
        return Some(format!(
            "keyword `{keyword}` would block every name with dots"
        ));
    }
    None
}

impl ListConfig {
    /// A URL of a scheme the fetcher speaks, and the keys serde cannot check.
    /// `index`: the list's place among the `[[lists]]` tables, for error positions.
    pub(super) fn validate_source(
        &self,
        o: &ConfigOrigin,
        index: usize,
    ) -> Result<(), ConfigError> {
        let name = self.name.get_ref();
        let at = self.name.span().start;
        if let ListSource::Url(url) = &self.source {
            let u = url.get_ref();
            let scheme_ok = ["https://", "http://", "file://"]
                .iter()
                // Bytes, not `&str` slices: the URL may hold any character, and a cut
                // inside one panics (found by the config fuzzer).
                .any(|p| {
                    u.len() > p.len() && u.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                });
            if !scheme_ok {
                return Err(o.invalid(
                    url.span().start,
                    "lists.url",
                    format!("list `{name}`: `{u}`: expected an https://, http:// or file:// URL"),
                ));
            }
        }
        if self.refresh_secs.is_some_and(|s| s < 60) {
            return Err(o.invalid(
                at,
                "lists.refresh_secs",
                format!("list `{name}`: must be at least 60"),
            ));
        }
        if let Some(bad) = self.keywords.iter().find_map(|k| keyword_problem(k)) {
            return Err(o.invalid_key(
                &format!("lists[{index}].keywords"),
                "lists.keywords",
                format!("list `{name}`: {bad}"),
            ));
        }
        if self.min_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(o.invalid(
                at,
                "lists.min_ratio",
                format!("list `{name}`: must be between 0 and 1"),
            ));
        }
        Ok(())
    }

    /// The refresh interval of a `url` list.
    pub fn refresh_interval(&self, sources: &SourcesConfig) -> std::time::Duration {
        std::time::Duration::from_secs(self.refresh_secs.unwrap_or(sources.refresh_secs))
    }
}
