//! Reading the TLS ClientHello at the start of a tunnel, without terminating TLS.
//!
//! The ClientHello may be split across TCP segments and across TLS records; the
//! caller feeds a growing buffer to [`parse`] until it answers. Anything that is
//! not a well-formed ClientHello is an error: the tunnel is refused, never opened
//! blind (no fail-open).

// Config sizes the connection buffer cap from it, and config depends on no runtime module.
pub use crate::config::proxy::MAX_CLIENT_HELLO;

/// What the ClientHello says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` (host_name) extension, as sent.
    pub sni: Option<String>,
    /// Whether the Encrypted Client Hello extension (0xfe0d) is present.
    pub ech: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("the tunnel did not start with a TLS handshake record")]
    NotTls,
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// `Ok(None)`: need more bytes. `Ok(Some(hello))`: complete.
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        if buf.len() < pos + 5 {
            if pos == 0 && !buf.is_empty() && buf[0] != 0x16 {
                return Err(HelloError::NotTls);
            }
            return more(buf);
        }
        let header = &buf[pos..pos + 5];
        if header[0] != 0x16 {
            return Err(if pos == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("non-handshake record inside the ClientHello")
            });
        }
        if header[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 {
            return Err(HelloError::Malformed("bad record length"));
        }
        if buf.len() < pos + 5 + len {
            return more(buf);
        }
        handshake.extend_from_slice(&buf[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(HelloError::NotClientHello);
            }
            let msg_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if msg_len + 4 > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            if handshake.len() >= msg_len + 4 {
                return client_hello(&handshake[4..4 + msg_len]).map(Some);
            }
        }
    }
}

fn more(buf: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    if buf.len() >= MAX_CLIENT_HELLO + 5 * 8 {
        Err(HelloError::TooLarge)
    } else {
        Ok(None)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<usize, HelloError> {
        Ok(usize::from(self.take(1, what)?[0]))
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, HelloError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(n, what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(n, what)
    }
}

const EXT_SERVER_NAME: usize = 0;
const EXT_ECH: usize = 0xfe0d;

fn client_hello(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    let version = r.take(2, "version")?;
    if version[0] != 3 {
        return Err(HelloError::Malformed("legacy version"));
    }
    r.take(32, "random")?;
    if r.vec8("session id")?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(HelloError::Malformed("compression methods"));
    }
    let mut hello = ClientHello {
        sni: None,
        ech: false,
    };
    if r.0.is_empty() {
        // No extensions at all (SSLv3-style hello): no SNI.
        return Ok(hello);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.0.is_empty() {
        return Err(HelloError::Malformed("trailing bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if seen.contains(&kind) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => {
                let mut list = Reader(data);
                let mut names = Reader(list.vec16("server name list")?);
                if !list.0.is_empty() || names.0.is_empty() {
                    return Err(HelloError::Malformed("server name list"));
                }
                while !names.0.is_empty() {
                    let name_type = names.u8("server name type")?;
                    let name = names.vec16("server name")?;
                    if name_type != 0 {
                        continue;
                    }
                    if hello.sni.is_some() {
                        return Err(HelloError::Malformed("more than one host name"));
                    }
                    if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                        return Err(HelloError::Malformed("server name is not a host name"));
                    }
                    hello.sni = Some(String::from_utf8_lossy(name).into_owned());
                }
            }
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// A fatal TLS alert record (TLS 1.2 framing, understood by every client).
pub fn alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// Alert descriptions we send.
pub mod alerts {
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const ACCESS_DENIED: u8 = 49;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const UNRECOGNIZED_NAME: u8 = 112;
}

/// Builds a ClientHello (for tests and benches): `sni`, optional ECH extension, and
/// `pad` bytes of padding extension so it can be made large.
pub fn build_client_hello(sni: Option<&str>, ech: bool, pad: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let entry_len = 3 + name.len();
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
        exts.extend_from_slice(name);
    }
    if ech {
        exts.extend_from_slice(&(EXT_ECH as u16).to_be_bytes());
        exts.extend_from_slice(&4u16.to_be_bytes());
        exts.extend_from_slice(&[0, 0, 0, 0]);
    }
    if pad > 0 {
        exts.extend_from_slice(&21u16.to_be_bytes());
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0u8, pad));
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in handshake.chunks(16384) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sni_at_every_split() {
        let hello = build_client_hello(Some("api.example.com"), false, 300);
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Ok(None), "cut at {cut}");
        }
        let got = parse(&hello).unwrap().unwrap();
        assert_eq!(got.sni.as_deref(), Some("api.example.com"));
        assert!(!got.ech);
    }

    #[test]
    fn handshake_split_across_records() {
        let hello = build_client_hello(Some("a.example"), true, 0);
        let handshake = &hello[5..];
        let mut split = Vec::new();
        for chunk in handshake.chunks(7) {
            split.extend_from_slice(&[0x16, 3, 1, 0, chunk.len() as u8]);
            split.extend_from_slice(chunk);
        }
        let got = parse(&split).unwrap().unwrap();
        assert_eq!(got.sni.as_deref(), Some("a.example"));
        assert!(got.ech);
    }

    #[test]
    fn not_tls_and_garbage() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"G"), Err(HelloError::NotTls));
        assert_eq!(
            parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotClientHello)
        );
        let mut bad = build_client_hello(Some("a.example"), false, 0);
        let n = bad.len();
        bad[n - 3] ^= 0xff; // corrupt inside the name length region
        let _ = parse(&bad); // must not panic
        assert_eq!(
            parse(&build_client_hello(None, false, 0))
                .unwrap()
                .unwrap()
                .sni,
            None
        );
        assert!(matches!(
            parse(&build_client_hello(Some("a"), false, 20_000)),
            Err(HelloError::TooLarge)
        ));
    }
}
