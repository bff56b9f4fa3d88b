//! Reading the server name (SNI) out of the first bytes a client sends through a tunnel.
//!
//! The proxy allows a tunnel by the `CONNECT` host, and an upstream that routes TLS by SNI (a
//! CDN edge, an SNI proxy) would happily serve a different name than the one that was checked.
//! So the proxy looks at the client's first flight, which in TLS is a plaintext ClientHello,
//! and compares its SNI with the `CONNECT` host. Only this plaintext is read; the proxy holds no
//! keys and never decrypts anything.
//!
//! Anything that starts like TLS must be readable to the end of the ClientHello: a client that
//! could make the check give up (by splitting the hello across records, padding it past a limit
//! or stalling) could otherwise front through an allowed name. Such flights are
//! [`FirstFlight::Malformed`] or stay [`FirstFlight::Incomplete`], and the tunnel is cut.

/// TLS record content type of handshake records.
const HANDSHAKE_RECORD: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of server_name (RFC 6066).
const SERVER_NAME_EXTENSION: u16 = 0;
/// server_name entry type of a DNS host name.
const HOST_NAME_TYPE: u8 = 0;
/// Largest TLS record payload (2^14) plus the expansion TLS 1.2 allows for compressed records.
const MAX_RECORD_LEN: usize = (1 << 14) + 1024;
/// Largest ClientHello the proxy reads. Real ones are a few hundred bytes to a few KiB (with
/// post-quantum key shares); this leaves room for large session tickets.
pub(crate) const MAX_CLIENT_HELLO_LEN: usize = 64 * 1024;
/// Longest server name accepted (a DNS name is at most 253 characters, plus a trailing dot).
const MAX_SERVER_NAME_LEN: usize = 254;

/// What the first bytes of a tunnel are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstFlight {
    /// Not a TLS handshake: some other protocol, let through as it is.
    NotTls,
    /// The start of a TLS handshake; more bytes are needed to see the whole ClientHello.
    Incomplete,
    /// A complete ClientHello, and the host name it names, if any (lower case, as sent).
    ClientHello { server_name: Option<String> },
    /// Starts like TLS but is not a well-formed ClientHello (or is too large to check).
    Malformed(&'static str),
}

/// Classifies the bytes a client sent so far.
pub(crate) fn inspect(bytes: &[u8]) -> FirstFlight {
    match bytes.first() {
        None => return FirstFlight::Incomplete,
        Some(&HANDSHAKE_RECORD) => {}
        Some(_) => return FirstFlight::NotTls,
    }
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(header) = rest.get(..5) else {
            return FirstFlight::Incomplete;
        };
        if header[0] != HANDSHAKE_RECORD {
            return FirstFlight::Malformed("a non-handshake record before the ClientHello ended");
        }
        if header[1] != 3 {
            return FirstFlight::Malformed("a record version that is not TLS");
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 || length > MAX_RECORD_LEN {
            return FirstFlight::Malformed("a handshake record of impossible length");
        }
        let Some(payload) = rest.get(5..5 + length) else {
            return FirstFlight::Incomplete;
        };
        handshake.extend_from_slice(payload);
        rest = &rest[5 + length..];

        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != CLIENT_HELLO {
            return FirstFlight::Malformed("the first handshake message is not a ClientHello");
        }
        let message_len = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if message_len > MAX_CLIENT_HELLO_LEN {
            return FirstFlight::Malformed("a ClientHello larger than the proxy checks");
        }
        if handshake.len() >= 4 + message_len {
            return match server_name(&handshake[4..4 + message_len]) {
                Ok(server_name) => FirstFlight::ClientHello { server_name },
                Err(reason) => FirstFlight::Malformed(reason),
            };
        }
    }
}

/// Whether a tunnel's first bytes start an HTTP/1 request (`METHOD SP target SP HTTP/1.x`).
pub(crate) fn looks_like_http_request(bytes: &[u8]) -> bool {
    let line_end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..line_end.min(8 * 1024)]);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        // A request line cut short: its method alone says enough.
        return [
            "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
        ]
        .iter()
        .any(|m| line.starts_with(m));
    };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && version.starts_with("HTTP/1.")
}

/// The host name in a ClientHello body (after the 4-byte handshake header).
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    const TRUNCATED: &str = "a truncated ClientHello";
    let mut hello = Reader(body);
    hello.take(2 + 32).ok_or(TRUNCATED)?; // legacy_version, random
    let session_id_len = hello.u8().ok_or(TRUNCATED)?;
    hello.take(usize::from(session_id_len)).ok_or(TRUNCATED)?;
    let suites_len = hello.u16().ok_or(TRUNCATED)?;
    hello.take(usize::from(suites_len)).ok_or(TRUNCATED)?;
    let compression_len = hello.u8().ok_or(TRUNCATED)?;
    hello.take(usize::from(compression_len)).ok_or(TRUNCATED)?;
    if hello.0.is_empty() {
        return Ok(None); // a hello without extensions has no SNI
    }
    let extensions_len = hello.u16().ok_or(TRUNCATED)?;
    let mut extensions = Reader(hello.take(usize::from(extensions_len)).ok_or(TRUNCATED)?);
    if !hello.0.is_empty() {
        return Err("bytes after the ClientHello's extensions");
    }
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or(TRUNCATED)?;
        let len = extensions.u16().ok_or(TRUNCATED)?;
        let data = extensions.take(usize::from(len)).ok_or(TRUNCATED)?;
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        if found.is_some() {
            return Err("two server_name extensions");
        }
        found = Some(host_name(data)?);
    }
    Ok(found.flatten())
}

/// The host_name entry of a server_name extension's body.
fn host_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    const TRUNCATED: &str = "a truncated server_name extension";
    let mut extension = Reader(data);
    let list_len = extension.u16().ok_or(TRUNCATED)?;
    let mut list = Reader(extension.take(usize::from(list_len)).ok_or(TRUNCATED)?);
    if !extension.0.is_empty() {
        return Err("bytes after the server_name list");
    }
    let mut name = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(TRUNCATED)?;
        let len = list.u16().ok_or(TRUNCATED)?;
        let bytes = list.take(usize::from(len)).ok_or(TRUNCATED)?;
        if kind != HOST_NAME_TYPE {
            continue;
        }
        if name.is_some() {
            return Err("two host names in server_name");
        }
        if bytes.is_empty()
            || bytes.len() > MAX_SERVER_NAME_LEN
            || !bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return Err("a server name that is not a host name");
        }
        name = Some(String::from_utf8_lossy(bytes).to_ascii_lowercase());
    }
    Ok(name)
}

/// Whether a server name and the `CONNECT` host name the same destination: compared
/// case-insensitively, a trailing dot and IPv6 brackets ignored.
pub(crate) fn same_host(server_name: &str, connect_host: &str) -> bool {
    let normalise = |name: &str| {
        let name = name
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(name);
        name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
    };
    normalise(server_name) == normalise(connect_host)
}

/// A cursor over big-endian TLS fields; each read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with the given extensions (type, data).
    fn hello_body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut encoded = Vec::new();
        for (kind, data) in extensions {
            encoded.extend(kind.to_be_bytes());
            encoded.extend((data.len() as u16).to_be_bytes());
            encoded.extend(data);
        }
        body.extend((encoded.len() as u16).to_be_bytes());
        body.extend(encoded);
        body
    }

    fn sni_extension(names: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for name in names {
            list.push(HOST_NAME_TYPE);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (SERVER_NAME_EXTENSION, data)
    }

    /// The body as a handshake message split into records of at most `record_len` bytes.
    fn records(body: &[u8], record_len: usize) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        let mut out = Vec::new();
        for chunk in message.chunks(record_len) {
            out.extend([HANDSHAKE_RECORD, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    fn hello(server_name: Option<&str>) -> FirstFlight {
        FirstFlight::ClientHello {
            server_name: server_name.map(str::to_string),
        }
    }

    #[test]
    fn reads_the_server_name_even_across_records() {
        let body = hello_body(&[(10, vec![0, 2, 0, 29]), sni_extension(&["Example.COM"])]);
        assert_eq!(inspect(&records(&body, 16_384)), hello(Some("example.com")));
        assert_eq!(inspect(&records(&body, 7)), hello(Some("example.com")));
        let whole = records(&body, 7);
        for cut in 0..whole.len() {
            assert_eq!(inspect(&whole[..cut]), FirstFlight::Incomplete, "at {cut}");
        }
    }

    #[test]
    fn hellos_without_a_name_and_other_protocols_pass() {
        assert_eq!(inspect(&records(&hello_body(&[]), 100)), hello(None));
        let mut no_extensions = hello_body(&[]);
        no_extensions.truncate(no_extensions.len() - 2);
        assert_eq!(inspect(&records(&no_extensions, 100)), hello(None));
        assert_eq!(inspect(b"SSH-2.0-OpenSSH_9.6\r\n"), FirstFlight::NotTls);
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), FirstFlight::NotTls);
        assert!(looks_like_http_request(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(looks_like_http_request(b"POST /upload"));
        assert!(!looks_like_http_request(b"SSH-2.0-OpenSSH_9.6\r\n"));
        assert!(!looks_like_http_request(b"\x00\x01binary"));
        assert_eq!(inspect(b""), FirstFlight::Incomplete);
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let two_names = hello_body(&[sni_extension(&["a.com", "b.com"])]);
        assert_eq!(
            inspect(&records(&two_names, 1000)),
            FirstFlight::Malformed("two host names in server_name")
        );
        let two_extensions = hello_body(&[sni_extension(&["a.com"]), sni_extension(&["b.com"])]);
        assert_eq!(
            inspect(&records(&two_extensions, 1000)),
            FirstFlight::Malformed("two server_name extensions")
        );
        let mut then_data = records(&hello_body(&[]), 20);
        then_data.truncate(5 + 20); // one record of the handshake, then application data
        then_data.extend([23, 3, 3, 0, 1, 0]);
        assert!(matches!(inspect(&then_data), FirstFlight::Malformed(_)));
        assert!(matches!(
            inspect(&[22, 3, 1, 0, 0]),
            FirstFlight::Malformed(_)
        ));
        assert!(matches!(
            inspect(&[22, 9, 1, 0, 4, 1, 0, 0, 0]),
            FirstFlight::Malformed(_)
        ));
        let huge = [22, 3, 1, 0, 4, CLIENT_HELLO, 0x10, 0, 0];
        assert_eq!(
            inspect(&huge),
            FirstFlight::Malformed("a ClientHello larger than the proxy checks")
        );
        let not_hello = [22, 3, 1, 0, 4, 2, 0, 0, 0];
        assert!(matches!(inspect(&not_hello), FirstFlight::Malformed(_)));
        let control = hello_body(&[sni_extension(&["a\nb.com"])]);
        assert!(matches!(
            inspect(&records(&control, 1000)),
            FirstFlight::Malformed(_)
        ));
    }

    #[test]
    fn compares_names_like_dns_does() {
        assert!(same_host("example.com", "Example.COM."));
        assert!(same_host("example.com.", "example.com"));
        assert!(same_host("::1", "[::1]"));
        assert!(!same_host("evil.example", "example.com"));
        assert!(!same_host("sub.example.com", "example.com"));
    }
}
