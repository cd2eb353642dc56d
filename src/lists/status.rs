//! What each list source serves and how its downloads went: built with the policy
//! ([`super::load`]), kept current by the refresher ([`super::refresh`]), printed by
//! `portcullis lists`.

use crate::config::{Config, ListConfig, ListSource};

use super::parse::ParseReport;
use super::store::Meta;

/// Where a list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `path`: a local file, read as it is at every build.
    File,
    /// `inline`: rules in the config.
    Inline,
    /// `url`: downloaded, checked and cached.
    Url,
}

/// The status of one list source: what is served from it, and how its downloads went.
/// `portcullis lists` prints it; `/api/lists` will serve it as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListStatus {
    pub name: String,
    pub kind: SourceKind,
    /// Path, URL, or the config file for inline rules.
    pub source: String,
    /// The format used (the detected one for `auto`).
    pub format: String,
    /// Client groups the list applies to; empty = all.
    pub groups: Vec<String>,
    /// Something of this list is served (a local list was read, or a `url` list has a copy).
    pub ready: bool,
    pub lines: u32,
    pub entries: u32,
    pub skipped: u32,
    pub skipped_by_reason: Vec<(String, u32)>,
    /// The first few skipped lines of each reason.
    pub examples: Vec<SkipExample>,
    /// Why nothing of this list is served (missing file, no cached copy yet).
    pub error: Option<String>,
    /// `url` lists: Unix seconds of the last successful check (200 accepted, 304, unchanged).
    pub last_success: Option<u64>,
    /// `url` lists: Unix seconds of the last download attempt.
    pub last_attempt: Option<u64>,
    /// `url` lists: why the last attempt failed or was rejected (the older copy keeps serving).
    pub last_error: Option<String>,
    /// `url` lists: Unix seconds when the served copy was downloaded.
    pub fetched_at: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `url` lists: seconds between refreshes.
    pub refresh_secs: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkipExample {
    pub line: u32,
    pub text: String,
    pub reason: String,
}

/// True when every source is ready (an optional local file that is absent counts as ready).
pub fn all_ready(lists: &[ListStatus]) -> bool {
    lists.iter().all(|l| l.ready)
}

impl ListStatus {
    /// The status of a source before anything is known about its contents.
    pub fn new(config: &Config, list: &ListConfig) -> ListStatus {
        let (kind, source) = match &list.source {
            ListSource::Path(path) => {
                (SourceKind::File, config.resolve(path).display().to_string())
            }
            ListSource::Url(url) => (SourceKind::Url, url.get_ref().clone()),
            ListSource::Inline(_) => (SourceKind::Inline, config.origin.file.clone()),
        };
        ListStatus {
            name: list.name.get_ref().clone(),
            kind,
            source,
            format: list.format.as_str().to_owned(),
            groups: list
                .groups
                .iter()
                .flatten()
                .map(|g| g.get_ref().clone())
                .collect(),
            ready: false,
            lines: 0,
            entries: 0,
            skipped: 0,
            skipped_by_reason: Vec::new(),
            examples: Vec::new(),
            error: None,
            last_success: None,
            last_attempt: None,
            last_error: None,
            fetched_at: None,
            etag: None,
            last_modified: None,
            refresh_secs: list
                .url()
                .is_some()
                .then(|| list.refresh_interval(&config.sources).as_secs()),
        }
    }

    /// Copies what the cache metadata knows (validators, attempts, last error).
    pub fn apply_meta(&mut self, meta: Option<&Meta>) {
        let Some(meta) = meta else {
            return;
        };
        self.last_success = meta.last_success;
        self.last_attempt = meta.last_attempt;
        self.last_error = meta.last_error.clone();
        self.fetched_at = meta.fetched_at;
        self.etag = meta.etag.clone();
        self.last_modified = meta.last_modified.clone();
    }

    /// Copies what a parse of the served copy found.
    pub fn apply_report(&mut self, report: &ParseReport) {
        self.format = report.format.as_str().to_owned();
        self.lines = report.lines;
        self.entries = report.entries;
        self.skipped = report.skipped;
        self.skipped_by_reason = report
            .skipped_by_reason
            .iter()
            .map(|(r, n)| (r.as_str().to_owned(), *n))
            .collect();
        self.examples = report
            .examples
            .iter()
            .map(|s| SkipExample {
                line: s.line,
                text: s.text.clone(),
                reason: s.reason.as_str().to_owned(),
            })
            .collect();
    }
}

impl std::fmt::Display for ListStatus {
    /// The `portcullis lists` text block of one source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::store::format_unix;
        let state = if !self.ready {
            "NOT READY"
        } else if self.error.is_some() {
            "absent"
        } else {
            "ready"
        };
        writeln!(
            f,
            "{} [{}] {}",
            self.name,
            state,
            match self.kind {
                SourceKind::File => "file",
                SourceKind::Inline => "inline",
                SourceKind::Url => "url",
            }
        )?;
        writeln!(f, "  source:   {}", self.source)?;
        let groups = if self.groups.is_empty() {
            "all".to_owned()
        } else {
            self.groups.join(", ")
        };
        writeln!(f, "  format:   {}    groups: {groups}", self.format)?;
        writeln!(
            f,
            "  entries:  {}    skipped: {}    lines: {}",
            self.entries, self.skipped, self.lines
        )?;
        for (reason, n) in &self.skipped_by_reason {
            write!(f, "    {n} {reason}")?;
            let examples: Vec<String> = self
                .examples
                .iter()
                .filter(|e| &e.reason == reason)
                .take(2)
                .map(|e| format!("line {}: {:?}", e.line, e.text))
                .collect();
            if !examples.is_empty() {
                write!(f, " (e.g. {})", examples.join(", "))?;
            }
            writeln!(f)?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "  error:    {error}")?;
        }
        if self.kind == SourceKind::Url {
            let when = |t: Option<u64>| t.map_or_else(|| "never".to_owned(), format_unix);
            writeln!(
                f,
                "  fetched:  {}    last success: {}    last attempt: {}",
                when(self.fetched_at),
                when(self.last_success),
                when(self.last_attempt)
            )?;
            if let Some(e) = &self.last_error {
                writeln!(f, "  last error: {e}")?;
            }
            if self.etag.is_some() || self.last_modified.is_some() {
                writeln!(
                    f,
                    "  etag:     {}    last-modified: {}",
                    self.etag.as_deref().unwrap_or("-"),
                    self.last_modified.as_deref().unwrap_or("-")
                )?;
            }
            if let Some(secs) = self.refresh_secs {
                writeln!(f, "  refresh:  every {secs} s (jittered)")?;
            }
        }
        Ok(())
    }
}
