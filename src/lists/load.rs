//! Turning a configuration into a compiled [`Policy`]: groups, allow rules and lists.
//!
//! Everything is built beside the running policy; the caller publishes the result
//! with one atomic swap, or keeps the old one when this returns an error.

use std::time::Instant;

use crate::config::{BareNames, Config, ConfigError, allowlist};
use crate::policy::Policy;
use crate::policy::groups::{ALL_GROUPS, GroupMask, Groups};
use crate::policy::rules::{ListInfo, RuleSetBuilder};

use super::parse::{ParseReport, SkipReason, Skipped, parse_list};

/// What loading one list produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListStatus {
    pub name: String,
    pub source: String,
    pub format: String,
    pub lines: u32,
    pub entries: u32,
    pub skipped: u32,
    pub skipped_by_reason: Vec<(String, u32)>,
    pub examples: Vec<SkipExample>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkipExample {
    pub line: u32,
    pub text: String,
    pub reason: String,
}

/// The compiled policy and a report of how it was built.
pub struct Loaded {
    pub policy: Policy,
    pub lists: Vec<ListStatus>,
    pub allow_rules: usize,
    pub build_time: std::time::Duration,
}

/// Builds the policy a configuration describes. Any error leaves nothing half-built.
pub fn build_policy(config: &Config) -> Result<Loaded, ConfigError> {
    let started = Instant::now();
    let mut groups = Groups::default();
    for (name, nets) in &config.groups {
        let id = groups
            .add(name)
            .ok_or_else(|| config.origin.invalid(0, "groups", "too many groups"))?;
        for net in nets {
            groups.add_net(*net.get_ref(), id);
        }
    }

    let mut builder = RuleSetBuilder::new();
    let (allow_text, allow_file) = match &config.allowlist {
        Some(path) => {
            let path = config.resolve(path);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                file: path.display().to_string(),
                source,
            })?;
            (text, path.display().to_string())
        }
        None => (
            allowlist::BUILTIN_ALLOWLIST.to_owned(),
            "<built-in allowlist.toml>".to_owned(),
        ),
    };
    let allow_rules = allowlist::parse(&allow_text, &allow_file, &groups)?;
    let allow_count = allow_rules.len();
    for rule in allow_rules {
        builder.add_allow(rule);
    }

    let mut statuses = Vec::with_capacity(config.lists.len());
    for list in &config.lists {
        let name = list.name.get_ref().clone();
        let mask: GroupMask = match &list.groups {
            None => ALL_GROUPS,
            Some(gs) => gs
                .iter()
                .map(|g| groups.id(g.get_ref()).map_or(0, |id| id.mask()))
                .fold(0, |a, b| a | b),
        };
        // Inline rules report lines of the config file itself.
        let mut line_base = 0u32;
        let (text, source) = match (&list.path, &list.inline) {
            (Some(path), _) => {
                let path = config.resolve(path);
                match std::fs::read(&path) {
                    Ok(bytes) => (
                        String::from_utf8_lossy(&bytes).into_owned(),
                        path.display().to_string(),
                    ),
                    Err(e) if list.optional && e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(list = %name, path = %path.display(), "optional list file not found; skipped");
                        statuses.push(ListStatus::failed(
                            &name,
                            &path.display().to_string(),
                            "file not found (optional)",
                        ));
                        continue;
                    }
                    Err(source) => {
                        return Err(ConfigError::Read {
                            file: path.display().to_string(),
                            source,
                        });
                    }
                }
            }
            (None, Some(inline)) => {
                let opening = inline.span().start;
                line_base = config.origin.line_of(opening) as u32;
                // A multi-line string starting with a newline begins on the next line.
                let rest = &config.origin.source[opening..];
                if rest.starts_with("\"\"\"\n") || rest.starts_with("\"\"\"\r\n") {
                    line_base += 1;
                }
                line_base -= 1;
                (inline.get_ref().clone(), config.origin.file.clone())
            }
            (None, None) => unreachable!("validated: a list has a path or inline rules"),
        };
        let id = builder
            .add_list(ListInfo {
                name: name.clone(),
                source: source.clone(),
                groups: mask,
            })
            .map_err(|e| {
                config
                    .origin
                    .invalid(list.name.span().start, "lists", e.to_string())
            })?;
        let mut rule_errors: Vec<Skipped> = Vec::new();
        let mut report = parse_list(&text, list.format, |line, entry| {
            let line = line + line_base;
            if let Err(e) = builder.add_entry(id, line, entry) {
                rule_errors.push(Skipped {
                    line,
                    text: e.to_string(),
                    reason: SkipReason::UnsupportedSyntax,
                });
            }
        });
        for word in &list.keywords {
            builder.add_keyword(id, 0, word);
        }
        // Rules the parser accepted but the compiler refused count as skipped.
        for skipped in rule_errors {
            report.entries = report.entries.saturating_sub(1);
            report.skipped += 1;
            *report.skipped_by_reason.entry(skipped.reason).or_default() += 1;
            report.examples.push(skipped);
        }
        statuses.push(ListStatus::from_report(&name, &source, &report));
    }

    let rules = builder
        .build()
        .map_err(|e| config.origin.invalid(0, "lists", e.to_string()))?;
    Ok(Loaded {
        policy: Policy {
            rules,
            groups,
            bare_names_nxdomain: config.dns.bare_names == BareNames::Nxdomain,
        },
        lists: statuses,
        allow_rules: allow_count,
        build_time: started.elapsed(),
    })
}

impl ListStatus {
    fn from_report(name: &str, source: &str, report: &ParseReport) -> ListStatus {
        ListStatus {
            name: name.to_owned(),
            source: source.to_owned(),
            format: format!("{:?}", report.format).to_lowercase(),
            lines: report.lines,
            entries: report.entries,
            skipped: report.skipped,
            skipped_by_reason: report
                .skipped_by_reason
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), *n))
                .collect(),
            examples: report
                .examples
                .iter()
                .map(|s| SkipExample {
                    line: s.line,
                    text: s.text.clone(),
                    reason: s.reason.as_str().to_owned(),
                })
                .collect(),
            error: None,
        }
    }

    fn failed(name: &str, source: &str, error: &str) -> ListStatus {
        ListStatus {
            name: name.to_owned(),
            source: source.to_owned(),
            format: String::new(),
            lines: 0,
            entries: 0,
            skipped: 0,
            skipped_by_reason: Vec::new(),
            examples: Vec::new(),
            error: Some(error.to_owned()),
        }
    }
}
