//! The decision log's own writer: whole JSON lines, handed over through a bounded
//! queue to one writer thread that writes them in batches.
//!
//! Formatting a decision line with tracing's JSON formatter and writing it with a
//! locked `write(2)` of its own cost more than deciding the query (BENCHMARKS.md,
//! "Decision log (issue 15)"). The serving path here formats a line by hand into a
//! reused buffer ([`JsonLine`]) and appends it to the queue ([`LineWriter::push`]):
//! a short lock and a copy. The writer thread takes everything queued at once and
//! writes it in one go: one `write(2)` to stderr per batch of up to 64 KiB of whole
//! lines (2 ms of lines at 100k a second; [`Stderr`]).
//!
//! The queue is bounded in bytes. When the sink is slower than the queries (a pipe read
//! slowly, a full disk), lines that do not fit are dropped and counted
//! (`portcullis_log_lines_dropped_total`): queries never wait for the log. Lines whose
//! write failed are counted there too.
//!
//! The writer to stderr takes std's stderr lock for each write, as tracing's writer does
//! for each of its lines, so the two never interleave inside a line: lines from both
//! reach stderr whole, in no strict order between them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::sys::lock;

/// The queue's bound: about 3,000 decision lines (30 ms of blocked queries at full
/// speed). The writer holds a second buffer of at most this size.
pub const QUEUE_BYTES: usize = 1 << 20;

/// Under load, how long the writer lets lines gather before writing them.
const GATHER: Duration = Duration::from_millis(2);

/// The handle the serving path pushes lines to. Cloning shares the queue.
#[derive(Clone)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for lines; [`LineWriter::close`] waits here for the writer.
    wake: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    lines: u64,
    /// The writer was woken for the queue passing a quarter of its capacity.
    woken_full: bool,
    /// No more lines will come: write what is queued and stop.
    closing: bool,
    /// The writer wrote everything and stopped.
    done: bool,
}

impl LineWriter {
    /// Starts a writer thread writing to `sink`; `capacity` bounds the queue in bytes.
    pub fn start<W: Write + Send + 'static>(
        sink: W,
        capacity: usize,
    ) -> std::io::Result<LineWriter> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || writer.run(sink))?;
        Ok(LineWriter { shared })
    }

    /// Queues one whole line (ending in `\n`). `false`: the queue was full, or closed,
    /// and the line was dropped and counted.
    pub fn push(&self, line: &[u8]) -> bool {
        self.push_lines(line, 1)
    }

    /// Queues `count` whole lines, one after the other in `lines`: one lock for all. `false`:
    /// they did not fit, or the queue was closed, and all of them were dropped and counted.
    pub fn push_lines(&self, lines: &[u8], count: u64) -> bool {
        debug_assert!(lines.ends_with(b"\n"), "whole lines");
        let s = &self.shared;
        let mut q = lock(&s.queue);
        if q.closing || q.buf.len() + lines.len() > s.capacity {
            drop(q);
            s.count_dropped(count);
            return false;
        }
        let first = q.buf.is_empty();
        q.buf.extend_from_slice(lines);
        q.lines += count;
        // Wake the writer only on the two transitions it may be waiting for: the
        // first line (it sleeps on an empty queue) and a quarter full (it gathers).
        let behind = !q.woken_full && q.buf.len() >= s.capacity / 4;
        if behind {
            q.woken_full = true;
        }
        drop(q);
        if first || behind {
            s.wake.notify_all();
        }
        if behind {
            // The writer is behind. When it shares this thread's core (a process pinned
            // to one core, SCHED_FIFO under benches/dnsperf.sh RT=1) it only runs when
            // this thread gives the core up: once per batch, so that it can.
            std::thread::yield_now();
        }
        true
    }

    /// Lines dropped so far by this writer (queue full, closed, or a failed write).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking lines and waits up to `timeout` for the writer to write what is
    /// queued. `false`: the sink did not take it in time (the rest is lost at exit).
    pub fn close(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut q = lock(&s.queue);
        q.closing = true;
        s.wake.notify_all();
        while !q.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = s
                .wake
                .wait_timeout(q, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Shared {
    fn count_dropped(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        super::metrics::log_lines_dropped(lines);
    }

    fn run<W: Write>(&self, mut sink: W) {
        let mut batch = Vec::new();
        // Lines come one at a time (each batch held one): write each at once. Once they
        // come faster than that, let GATHER's worth collect into each write.
        let mut gather = false;
        loop {
            let mut q = lock(&self.queue);
            while q.buf.is_empty() && !q.closing {
                q = self
                    .wake
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if gather && !q.closing && q.buf.len() < self.capacity / 4 {
                q = self
                    .wake
                    .wait_timeout_while(q, GATHER, |q| {
                        !q.closing && q.buf.len() < self.capacity / 4
                    })
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            if q.buf.is_empty() && q.closing {
                q.done = true;
                drop(q);
                self.wake.notify_all();
                return;
            }
            std::mem::swap(&mut q.buf, &mut batch);
            let lines = std::mem::take(&mut q.lines);
            q.woken_full = false;
            drop(q);
            gather = lines > 1;
            if sink.write_all(&batch).and_then(|()| sink.flush()).is_err() {
                self.count_dropped(lines);
            }
            batch.clear();
        }
    }
}

/// Stderr as the writer's sink. std's stderr lock is held for each write, as tracing's
/// writer holds it for each of its lines, so a tracing line never lands inside one of
/// ours. A batch goes out in writes of at most [`STDERR_CHUNK`] bytes cut after a
/// newline, the lock taken for each: a tracing line waits for one chunk at most.
///
/// When stderr is a regular file, the log's pages are dropped from the page cache behind
/// it ([`DropBehind`]).
pub struct Stderr {
    behind: DropBehind,
}

impl Stderr {
    pub fn new() -> Stderr {
        Stderr {
            behind: DropBehind::new(libc::STDERR_FILENO),
        }
    }
}

impl Default for Stderr {
    fn default() -> Self {
        Stderr::new()
    }
}

/// About 200 decision lines: a batch of 2 ms at 100k lines/s is one or two writes.
pub const STDERR_CHUNK: usize = 64 * 1024;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::stderr().lock().write(buf)?;
        self.behind.wrote(n);
        Ok(n)
    }

    fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            let (chunk, rest) = buf.split_at(chunk_end(buf, STDERR_CHUNK));
            std::io::stderr().lock().write_all(chunk)?;
            self.behind.wrote(chunk.len());
            buf = rest;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps a log file's page-cache footprint small. A decision line per blocked query is
/// ~60 MB/s at full speed: left in the page cache, the log pushes out what the host would
/// rather keep cached, and every page it takes is memory touched for the first time (on
/// the benchmark VM, where the host backs guest memory lazily, writing to new pages ran at
/// 0.3-0.45 GB/s against 2-3 GB/s for recycled ones, and was most of the log's cost:
/// BENCHMARKS.md, issue 15 part 7). So every [`DROP_EVERY`] bytes written, the pages more
/// than [`KEEP_CACHED`] behind the file's end are handed back (`POSIX_FADV_DONTNEED`:
/// written back, then dropped) and the next writes reuse them. A reader following the
/// file (`tail -f`, a log shipper) reads what is near its end, which stays cached.
struct DropBehind {
    /// The descriptor, while it is a regular file that takes the advice.
    fd: Option<std::os::fd::RawFd>,
    /// Bytes written since the last drop.
    since: u64,
}

/// How much of the file's end stays in the page cache.
const KEEP_CACHED: u64 = 4 << 20;
/// How often the pages behind are dropped, in bytes written.
const DROP_EVERY: u64 = 1 << 20;
/// How far behind [`KEEP_CACHED`] each drop reaches: pages still being written back at one
/// drop are dropped at a later one.
const DROP_REACH: u64 = 32 << 20;

impl DropBehind {
    fn new(fd: std::os::fd::RawFd) -> DropBehind {
        DropBehind {
            fd: crate::sys::regular_file_offset(fd).map(|_| fd),
            since: 0,
        }
    }

    fn wrote(&mut self, n: usize) {
        let Some(fd) = self.fd else {
            return;
        };
        self.since += n as u64;
        if self.since < DROP_EVERY {
            return;
        }
        self.since = 0;
        // The file's end is asked each time: other writers (tracing's lines, a shell
        // appending to the same file) and a truncation by logrotate move it.
        let Some(end) = crate::sys::regular_file_offset(fd) else {
            self.fd = None;
            return;
        };
        let to = end.saturating_sub(KEEP_CACHED);
        let from = to.saturating_sub(DROP_REACH);
        if to > from && crate::sys::drop_cached(fd, from, to - from).is_err() {
            self.fd = None;
        }
    }
}

/// Where the first write of `buf` ends: after the last newline within `max` bytes (after
/// the first newline, or at the end, when a line is longer than that).
fn chunk_end(buf: &[u8], max: usize) -> usize {
    if buf.len() <= max {
        return buf.len();
    }
    match buf[..max].iter().rposition(|&b| b == b'\n') {
        Some(at) => at + 1,
        None => buf[max..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |at| max + at + 1),
    }
}

/// A field's key as [`JsonLine`] takes it: `json_key!(str "name")` is `,"name":"` (the
/// value's opening quote included), `json_key!(num "answers")` is `,"answers":`. Joined at
/// compile time: a line of a dozen fields is then a dozen copies fewer.
macro_rules! json_key {
    (str $key:literal) => {
        concat!(",\"", $key, "\":\"")
    };
    (num $key:literal) => {
        concat!(",\"", $key, "\":")
    };
}
pub(crate) use json_key;

/// One JSON log line written by hand into a reused buffer, in the shape of
/// tracing-subscriber's flattened JSON lines: `timestamp`, `level`, `message`, the
/// fields in order, `target` last. Keys ([`json_key!`]) and [`Self::raw`] texts are the
/// caller's literals and are not escaped; every other value is, but for the program's own
/// texts ([`Self::plain`]) and addresses.
pub struct JsonLine<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> JsonLine<'a> {
    /// Starts a line at time `now` at the end of `buf`: `{"timestamp":"…"`. The level and
    /// message follow as [`Self::raw`] text (`,"level":"INFO","message":"…"`).
    pub fn begin(buf: &'a mut Vec<u8>, now: SystemTime) -> Self {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(buf, now);
        buf.push(b'"');
        JsonLine { buf }
    }

    /// JSON text of the program's own, as it is: a run of keys and plain values that every
    /// line of a kind shares (`,"level":"INFO","message":"dns decision","door":"dns"`).
    pub fn raw(&mut self, json: &'static str) {
        debug_assert!(!json.bytes().any(|b| b < 0x20), "{json:?}");
        self.buf.extend_from_slice(json.as_bytes());
    }

    /// A text of this program's own (an outcome's name, an rcode's name), written as it is,
    /// as it needs no escaping. `key`: `json_key!(str "…")`.
    pub fn plain(&mut self, key: &'static str, value: &'static str) {
        debug_assert!(!value.bytes().any(needs_escape), "{value:?}");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(b'"');
    }

    /// [`Self::plain`] for an optional one.
    pub fn opt_plain(&mut self, key: &'static str, value: Option<&'static str>) {
        if let Some(value) = value {
            self.plain(key, value);
        }
    }

    /// An address as its `Display` writes it, as a JSON string. `key`: `json_key!(str "…")`.
    pub fn ip(&mut self, key: &'static str, ip: std::net::IpAddr) {
        self.buf.extend_from_slice(key.as_bytes());
        match ip {
            // By hand: `Display` goes through the formatting machinery, once per octet.
            std::net::IpAddr::V4(v4) => {
                let mut text = [0u8; 15];
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[at] = b'.';
                        at += 1;
                    }
                    if octet >= 100 {
                        text[at] = b'0' + octet / 100;
                        at += 1;
                    }
                    if octet >= 10 {
                        text[at] = b'0' + octet / 10 % 10;
                        at += 1;
                    }
                    text[at] = b'0' + octet % 10;
                    at += 1;
                }
                self.buf.extend_from_slice(&text[..at]);
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(Raw(self.buf), "{v6}");
            }
        }
        self.buf.push(b'"');
    }

    /// A string, escaped. `key`: `json_key!(str "…")`.
    pub fn str(&mut self, key: &'static str, value: &str) {
        self.buf.extend_from_slice(key.as_bytes());
        escape(self.buf, value);
        self.buf.push(b'"');
    }

    /// Nothing when `None`, as tracing leaves out an empty `Option` field.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    /// A number. `key`: `json_key!(num "…")`.
    pub fn u64(&mut self, key: &'static str, value: u64) {
        self.buf.extend_from_slice(key.as_bytes());
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[at..]);
    }

    /// Ends the line with its target (`,"target":"…"}` as [`Self::raw`] text) and a newline.
    pub fn end(self, target: &'static str) {
        self.buf.extend_from_slice(target.as_bytes());
        self.buf.extend_from_slice(b"}\n");
    }
}

/// `Display` output into the buffer as it is.
struct Raw<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `s` as the inside of a JSON string, escaped as serde_json does: `"` and
/// `\` with a backslash, `\b \f \n \r \t` by name, other control characters as
/// `\u00XX`; everything else (UTF-8 included) as it is.
pub fn escape(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(found) = first_to_escape(&bytes[start..]) {
        let i = start + found;
        let b = bytes[i];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            _ => b'u',
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.push(b'\\');
        buf.push(short);
        if short == b'u' {
            buf.extend_from_slice(b"00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Where the first byte JSON must escape is, tested 8 bytes at a time: a decision line's
/// values almost never hold one, and a byte-by-byte test was the largest user-space cost of
/// logging every blocked query (`perf record`, issue 15).
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero when some byte of `v` is zero (when some byte is below 0x20: `below`).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below = |v: u64| v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
    let hit = |chunk: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        below(x) | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))) != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in (&mut chunks).enumerate() {
        if hit(chunk)
            && let Some(i) = chunk.iter().position(|&b| needs_escape(b))
        {
            return Some(n * 8 + i);
        }
    }
    let rest = chunks.remainder();
    // The last 1-7 bytes: in one more word that overlaps the last chunk (already clean).
    if rest.is_empty() || (bytes.len() >= 8 && !hit(&bytes[bytes.len() - 8..])) {
        return None;
    }
    rest.iter()
        .position(|&b| needs_escape(b))
        .map(|i| bytes.len() - rest.len() + i)
}

/// `2026-12-02T02:28:30.291298Z`: UTC with microseconds, as tracing-subscriber writes it.
/// The text up to the seconds is kept per thread and made again when the second changes.
pub fn timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached == secs {
        buf.extend_from_slice(&text);
    } else {
        let at = buf.len();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = secs % 86_400;
        let year = year.clamp(0, 9999) as u64;
        for (value, digits, after) in [
            (year, 4, b'-'),
            (u64::from(month), 2, b'-'),
            (u64::from(day), 2, b'T'),
            (of_day / 3600, 2, b':'),
            (of_day / 60 % 60, 2, b':'),
            (of_day % 60, 2, b'.'),
        ] {
            push_digits(buf, value, digits);
            buf.push(after);
        }
        text.copy_from_slice(&buf[at..]);
        SECOND.set((secs, text));
    }
    push_digits(buf, u64::from(since.subsec_micros()), 6);
    buf.push(b'Z');
}

/// `2026-11-22T01:13:59Z` for Unix seconds (UTC), for status output.
pub fn format_unix(secs: u64) -> String {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `value` as exactly `digits` decimal digits, zero-padded (the low ones if it has more).
fn push_digits(buf: &mut Vec<u8>, value: u64, digits: u32) {
    let mut div = 10u64.pow(digits - 1);
    while div > 0 {
        buf.push(b'0' + (value / div % 10) as u8);
        div /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn escaped(s: &str) -> String {
        let mut buf = Vec::new();
        escape(&mut buf, s);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn escaping_matches_serde_json_for_every_ascii_byte_and_beyond() {
        // Every single character up to U+00FF, alone and between letters.
        for c in (0u32..=0xff).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b")] {
                let want = serde_json::to_string(&s).unwrap();
                assert_eq!(format!("\"{}\"", escaped(&s)), want, "{:?}", s);
            }
        }
        assert_eq!(escaped(r#"we\"ir\\d.evil"#), r#"we\\\"ir\\\\d.evil"#);
        assert_eq!(escaped("a\nb\u{1}\u{1f}\t"), r#"a\nb\u0001\u001f\t"#);
        assert_eq!(escaped("bücher.例"), "bücher.例");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn escaping_finds_every_special_byte_at_every_place_of_a_word() {
        // The 8-byte test must see a special byte wherever it falls, with plain bytes and
        // bytes above 0x7f (which borrow differently) around it.
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', '\u{0}'] {
            for len in 0..24 {
                for at in 0..=len {
                    for fill in ['a', 'ü', '~', ' '] {
                        let mut s: String = std::iter::repeat_n(fill, len).collect();
                        let at = s.char_indices().nth(at).map_or(s.len(), |(i, _)| i);
                        s.insert(at, special);
                        let want = serde_json::to_string(&s).unwrap();
                        assert_eq!(format!("\"{}\"", escaped(&s)), want, "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn stderr_writes_are_cut_after_whole_lines() {
        assert_eq!(chunk_end(b"ab\ncd\n", 10), 6);
        assert_eq!(chunk_end(b"ab\ncd\nef\n", 7), 6);
        assert_eq!(chunk_end(b"ab\ncd\nef\n", 6), 6);
        assert_eq!(chunk_end(b"ab\ncd\nef\n", 5), 3);
        // A line longer than a chunk goes out whole.
        assert_eq!(chunk_end(b"abcdefgh\nij\n", 4), 9);
        assert_eq!(chunk_end(b"abcdefgh", 4), 8);
    }

    #[test]
    fn timestamps_are_tracings_format() {
        let at = |secs: u64, micros: u32| {
            let mut buf = Vec::new();
            timestamp(
                &mut buf,
                SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999),
            );
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-02T02:28:30.291298Z, a line of the gate before this writer.
        assert_eq!(at(1_796_178_510, 291_298), "2026-12-02T02:28:30.291298Z");
        // Leap day, end of a century year that is not a leap year, and after.
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // The same second again (its text kept), then an earlier one (made again).
        assert_eq!(at(4_107_542_400, 42), "2100-03-01T00:00:00.000042Z");
        assert_eq!(at(951_782_400, 8), "2000-02-29T00:00:00.000008Z");
    }

    #[test]
    fn a_line_is_tracings_flattened_json() {
        let mut buf = Vec::new();
        let mut line = JsonLine::begin(
            &mut buf,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_178_510_291_298),
        );
        line.raw(r#","level":"INFO","message":"dns decision""#);
        line.plain(json_key!(str "door"), "dns");
        line.opt_str(json_key!(str "list"), None);
        line.opt_str(json_key!(str "rule"), Some("a\"b"));
        line.opt_plain(json_key!(str "refusal"), None);
        line.u64(json_key!(num "zero"), 0);
        line.u64(json_key!(num "max"), u64::MAX);
        line.end(r#","target":"portcullis::decision""#);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"timestamp\":\"2026-12-02T02:28:30.291298Z\",\"level\":\"INFO\",\"message\":\"dns decision\",\
             \"door\":\"dns\",\"rule\":\"a\\\"b\",\"zero\":0,\
             \"max\":18446744073709551615,\"target\":\"portcullis::decision\"}\n"
        );
    }

    #[test]
    fn addresses_are_written_as_their_display() {
        let mut ips: Vec<std::net::IpAddr> =
            ["0.0.0.0", "255.255.255.255", "10.9.99.100", "1.20.3.40"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        ips.extend(
            ["::1", "2001:db8::7", "::ffff:1.2.3.4", "fe80::1:2:3:4"]
                .map(|s| s.parse::<std::net::IpAddr>().unwrap()),
        );
        // Every octet value, at every place.
        for n in 0..=255u8 {
            ips.push(std::net::Ipv4Addr::new(n, 255 - n, n / 3, n.wrapping_mul(7)).into());
        }
        for ip in ips {
            let mut buf = Vec::new();
            let mut line = JsonLine { buf: &mut buf };
            line.ip(json_key!(str "client"), ip);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                format!(",\"client\":\"{ip}\"")
            );
        }
    }

    #[test]
    fn a_log_file_keeps_only_its_end_in_the_page_cache() {
        use std::os::fd::AsRawFd;
        // On the disk, not a tmpfs, where the advice is a no-op.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-drop-behind");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("log-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut behind = DropBehind::new(file.as_raw_fd());
        assert!(behind.fd.is_some(), "a regular file");
        let chunk = vec![b'x'; 64 * 1024];
        const MIB: usize = 1 << 20;
        for i in 1..=24 * MIB / chunk.len() {
            file.write_all(&chunk).unwrap();
            behind.wrote(chunk.len());
            // Written back every 4 MiB, so that the next drops find the pages clean (the
            // drops start the writeback themselves; this makes the test not wait on the disk).
            if (i * chunk.len()).is_multiple_of(4 * MIB) {
                file.sync_data().unwrap();
            }
        }
        let pages = crate::sys::cached_pages(&file).unwrap();
        std::fs::remove_file(&path).unwrap();
        let per_mib = pages.len() / 24;
        let early = pages[..16 * per_mib].iter().filter(|&&p| p).count();
        let end = pages[20 * per_mib..].iter().filter(|&&p| p).count();
        assert_eq!(early, 0, "pages of the first 16 MiB still cached");
        assert_eq!(end, 4 * per_mib, "the last 4 MiB stay cached");

        // Neither a pipe nor a device is advised.
        let (reader, writer) = std::io::pipe().unwrap();
        assert!(DropBehind::new(writer.as_raw_fd()).fd.is_none());
        drop(reader);
        let null = std::fs::File::create("/dev/null").unwrap();
        assert!(DropBehind::new(null.as_raw_fd()).fd.is_none());
    }

    /// A sink whose writes wait until the test lets them through.
    struct Blocking {
        entered: mpsc::Sender<()>,
        open: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Blocking {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let (open, cv) = &*self.open;
            let mut open = lock(open);
            while !*open {
                open = cv.wait(open).unwrap();
            }
            lock(&self.out).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The test's side of a [`Blocking`] sink.
    struct Valve {
        /// A message each time the sink starts a write.
        entered: mpsc::Receiver<()>,
        open: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Valve {
        fn open(&self) {
            *lock(&self.open.0) = true;
            self.open.1.notify_all();
        }
    }

    fn blocking() -> (Blocking, Valve) {
        let (entered, rx) = mpsc::channel();
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Blocking {
            entered,
            open: open.clone(),
            out: out.clone(),
        };
        (
            sink,
            Valve {
                entered: rx,
                open,
                out,
            },
        )
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_lines_and_never_holds_up_the_caller() {
        let metrics = super::super::metrics::init();
        let (sink, valve) = blocking();
        let writer = LineWriter::start(sink, 4096).unwrap();
        let line = format!("{{\"n\":\"{}\"}}\n", "x".repeat(91));
        assert_eq!(line.len(), 100);
        assert!(writer.push(line.as_bytes()));
        // The writer is now stuck in write(2) with the first line.
        valve.entered.recv_timeout(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        let pushed = (0..10_000).filter(|_| writer.push(line.as_bytes())).count();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "10,000 pushes took {took:?}");
        // 40 lines of 100 bytes fit in the 4096-byte queue; the rest are dropped.
        assert_eq!(pushed, 40);
        assert_eq!(writer.dropped(), 10_000 - 40);
        let text = metrics.render(&Default::default());
        let exported: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_log_lines_dropped_total "))
            .expect("the family is exported")
            .parse()
            .unwrap();
        assert!(exported >= 9_960.0, "{exported}");

        // Let the sink go: what was queued comes out as whole lines at close.
        valve.open();
        assert!(writer.close(Duration::from_secs(5)));
        let out = lock(&valve.out).clone();
        assert_eq!(out.len(), 41 * 100);
        assert!(out.chunks(100).all(|l| l == line.as_bytes()));
        // Closed: no more lines.
        assert!(!writer.push(line.as_bytes()));
    }

    #[test]
    fn close_gives_up_on_a_sink_that_never_takes_the_lines() {
        let (sink, valve) = blocking();
        let writer = LineWriter::start(sink, 4096).unwrap();
        assert!(writer.push(b"{}\n"));
        valve.entered.recv_timeout(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        assert!(!writer.close(Duration::from_millis(200)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_batches() {
        struct Counting(Arc<Mutex<(Vec<u8>, usize)>>);
        impl Write for Counting {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let mut s = lock(&self.0);
                s.0.extend_from_slice(buf);
                s.1 += 1;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Arc::new(Mutex::new((Vec::new(), 0)));
        let writer = LineWriter::start(Counting(out.clone()), QUEUE_BYTES).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        assert!(writer.push(format!("{{\"t\":{t},\"i\":{i}}}\n").as_bytes()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(writer.close(Duration::from_secs(5)));
        let (bytes, writes) = lock(&out).clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0u64; 4];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["t"].as_u64().unwrap() as usize;
            assert_eq!(
                v["i"].as_u64().unwrap(),
                next[t],
                "each thread's lines in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        assert_eq!(writer.dropped(), 0);
        assert!(writes < 20_000, "{writes} writes for 20,000 lines");
    }
}
