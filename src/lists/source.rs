//! One source's refresh, step by step: the download attempt and its record in the cache
//! metadata, the turn a new body waits for, and the check, caching and compiling of the body
//! on the list thread. The refresher ([`super::refresh`]) runs the steps and publishes.

use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use crate::config::{Config, ListConfig};
use crate::policy::rules::RuleError;

use super::background::in_background;
use super::fetch::Validators;
use super::guard::check_and_parse;
use super::load::{CompiledSource, list_info};
use super::refresh::{Outcome, RefreshError, SourceRefresh};
use super::store::{Meta, Store, now_unix};

/// What one source's refresh did and, when it accepted a new copy, how publishing it went.
pub(super) type SourceDone = (SourceRefresh, Option<Result<(), RefreshError>>);

/// One download attempt of a source: the cache metadata it started from, with this attempt
/// recorded in it.
pub(super) struct Attempt {
    name: String,
    url: String,
    meta: Meta,
    /// A cached copy is there: the download is conditional and the guard compares with it.
    have_body: bool,
    /// Unix seconds when the attempt began.
    now: u64,
}

/// A downloaded body that is not the cached copy.
pub(super) struct NewBody {
    bytes: Vec<u8>,
    content_type: Option<String>,
    /// The cache metadata it is written with once accepted (its entry count filled in then).
    meta: Meta,
}

impl Attempt {
    /// `url`: the list's URL (it is a `url` list).
    pub(super) fn begin(store: &Store, list: &ListConfig, url: &str) -> Attempt {
        let name = list.name.get_ref().clone();
        let url = url.to_owned();
        let mut meta = store.read_meta(&name, &url).unwrap_or_else(|| Meta {
            url: url.clone(),
            ..Meta::default()
        });
        let have_body = meta.has_body() && store.list_path(&name).is_file();
        let now = now_unix();
        meta.last_attempt = Some(now);
        Attempt {
            name,
            url,
            meta,
            have_body,
            now,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// What the download sends for a conditional request: the cached copy's validators.
    pub(super) fn validators(&self) -> Validators {
        if self.have_body {
            Validators {
                etag: self.meta.etag.clone(),
                last_modified: self.meta.last_modified.clone(),
            }
        } else {
            Validators::default()
        }
    }

    /// The entries of the copy a new body would replace, for the sanity guard.
    pub(super) fn previous(&self) -> Option<u32> {
        self.have_body.then_some(self.meta.entries)
    }

    /// Is the body with digest `sum` the cached copy?
    pub(super) fn is_cached(&self, sum: &str) -> bool {
        self.have_body && self.meta.digest.as_deref() == Some(sum)
    }

    /// The cached copy was downloaded again: its new validators are kept.
    pub(super) fn keep_validators(&mut self, etag: Option<String>, last_modified: Option<String>) {
        self.meta.etag = etag;
        self.meta.last_modified = last_modified;
    }

    /// A body that is not the cached copy, with the cache metadata it gets once accepted.
    pub(super) fn new_body(
        &self,
        bytes: Vec<u8>,
        digest: String,
        etag: Option<String>,
        last_modified: Option<String>,
        content_type: Option<String>,
    ) -> NewBody {
        let meta = Meta {
            url: self.url.clone(),
            etag,
            last_modified,
            fetched_at: Some(self.now),
            last_success: Some(self.now),
            last_attempt: Some(self.now),
            last_error: None,
            entries: 0,
            bytes: bytes.len() as u64,
            digest: Some(digest),
        };
        NewBody {
            bytes,
            content_type,
            meta,
        }
    }

    /// A new copy was accepted and cached with its metadata: what the round is told.
    pub(super) fn updated(self, entries: u32, published: Result<(), RefreshError>) -> SourceDone {
        let outcome = Outcome::Updated {
            entries,
            previous: self.previous().unwrap_or(0),
        };
        let source = SourceRefresh {
            name: self.name,
            result: Ok(outcome),
        };
        (source, Some(published))
    }

    /// An attempt that cached no new copy: its time and its success or error go into the
    /// cache metadata.
    pub(super) async fn record(
        self,
        store: &Store,
        result: Result<Outcome, RefreshError>,
    ) -> SourceDone {
        let Attempt {
            name,
            mut meta,
            now,
            ..
        } = self;
        match &result {
            Ok(_) => {
                meta.last_success = Some(now);
                meta.last_error = None;
            }
            Err(e) => meta.last_error = Some(e.detail()),
        }
        let (store2, name2) = (store.clone(), name.clone());
        // A few hundred bytes and two fsyncs: waiting on the disk, not the CPU, and not
        // worth a place in the list thread's queue.
        let written = tokio::task::spawn_blocking(move || store2.write_meta(&name2, &meta))
            .await
            .expect("metadata write panicked");
        if let Err(error) = written {
            tracing::warn!(list = %name, %error, "cannot record the list download in the cache");
        }
        (SourceRefresh { name, result }, None)
    }
}

/// Waits for `checking`, the one turn at checking, caching and publishing a new body, and
/// gives the body back. A body that has to wait for its turn waits on disk, not in memory.
pub(super) async fn checking_turn<'m>(
    checking: &'m Mutex<()>,
    store: &Store,
    name: &str,
    body: NewBody,
) -> (MutexGuard<'m, ()>, Result<NewBody, RefreshError>) {
    if let Ok(turn) = checking.try_lock() {
        return (turn, Ok(body));
    }
    let NewBody {
        bytes,
        content_type,
        meta,
    } = body;
    let (store2, name2) = (store.clone(), name.to_owned());
    let parked = in_background(move || store2.park(&name2, &bytes).map_err(|_| bytes)).await;
    let turn = checking.lock().await;
    let bytes = match parked {
        // Could not park it (disk full?): it waited in memory.
        Err(bytes) => Ok(bytes),
        Ok(()) => {
            let (store2, name2) = (store.clone(), name.to_owned());
            in_background(move || store2.unpark(&name2))
                .await
                .map_err(|source| RefreshError::Store {
                    name: name.to_owned(),
                    source,
                })
        }
    };
    let body = bytes.map(|bytes| NewBody {
        bytes,
        content_type,
        meta,
    });
    (turn, body)
}

/// The sanity guard and the parse in one pass, the accepted body written to the cache, then
/// the list's tables built: on the list thread, where the body is dropped before the tables
/// are built.
pub(super) async fn check_cache_compile(
    store: &Store,
    config: &Arc<Config>,
    list: &ListConfig,
    body: NewBody,
    previous: Option<u32>,
) -> Result<CompiledSource, RefreshError> {
    let info = list_info(config, list).map_err(RefreshError::Build)?;
    let (store, name, config2) = (store.clone(), list.name.get_ref().clone(), config.clone());
    let (format, keywords) = (list.format, list.keywords.clone());
    let min_ratio = list.min_ratio.unwrap_or(config.sources.min_ratio);
    let at = list.name.span().start;
    in_background(move || {
        let invalid =
            |e: RuleError| RefreshError::Build(config2.origin.invalid(at, "lists", e.to_string()));
        let NewBody {
            bytes,
            content_type,
            meta,
        } = body;
        let parsed = check_and_parse(
            &bytes,
            content_type.as_deref(),
            format,
            previous,
            min_ratio,
            info,
            &keywords,
        )
        .map_err(|reason| RefreshError::Rejected {
            name: name.clone(),
            reason,
        })?
        .map_err(&invalid)?;
        let accepted = Meta {
            entries: parsed.parsed_entries,
            ..meta
        };
        store
            .write_list(&name, &bytes, &accepted)
            .map_err(|source| RefreshError::Store { name, source })?;
        // The body is cached: drop it before the tables are built.
        drop(bytes);
        parsed.finish().map_err(invalid)
    })
    .await
}
