//! What the fuzz targets share: the text decoding the list loader uses, a reader that
//! hands out input in small pieces, a poll loop for futures over it, the list-parse
//! invariants, and the DNS gate the UDP target drives.
//!
//! Every check here is an invariant of the code under test, not of the input: a panic is
//! a finding (libFuzzer saves the input under `fuzz/artifacts/<target>/`).

pub mod dns;
pub mod lists;

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

/// List bytes as the loader decodes them (`lists::load` and `lists::refresh`: lossy UTF-8).
pub fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Runs a future whose I/O never waits (over [`Trickle`]) to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future over an in-memory reader waited"),
    }
}

/// An in-memory stream that returns at most `step` bytes a read, so parsers see their
/// input split at every kind of boundary (as TCP delivers it).
pub struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    pub fn new(data: &'a [u8], step: usize) -> Trickle<'a> {
        Trickle {
            data,
            step: step.max(1),
        }
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}
