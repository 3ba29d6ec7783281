//! The two HTTP/1.1 exchanges the agent makes, written out on `httparse` instead of an HTTP client
//! library (the binary goes into a ramdisk; hyper's client and its helpers would add more than these
//! hundred lines): `POST /agent/v1/call` over TLS (one request per connection, `Connection: close`) and
//! `GET /blobs/...` over plain HTTP with `Range` to resume a broken download.

use std::io::{self, Read};

/// Longest response head read.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest answer body to a call (an `AgentAnswer` is small).
pub const MAX_CALL_BODY: usize = 1 << 20;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Range: bytes START-...`: where a 206 answer starts.
    pub range_start: Option<u64>,
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes are needed, else the head and
/// its length in bytes.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(io::Error::other("the response head is too long"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("malformed HTTP response: {e}"))),
    };
    let mut head = Head {
        status: resp.code.unwrap_or(0),
        content_length: None,
        chunked: false,
        range_start: None,
    };
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                v.parse()
                    .map_err(|_| io::Error::other("bad Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-range") {
            head.range_start = v
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse().ok());
        }
    }
    Ok(Some((head, n)))
}

/// Decodes a complete chunked body (bounded by its input).
pub fn dechunk(mut buf: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::other("malformed chunked body");
    let mut out = Vec::new();
    loop {
        let eol = buf.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let line = std::str::from_utf8(&buf[..eol]).map_err(|_| bad())?;
        let size_s = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_s, 16).map_err(|_| bad())?;
        buf = &buf[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if buf.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

/// The body of a complete response already read into `buf` (head of length `n`).
pub fn body_of(head: &Head, buf: &[u8], n: usize) -> io::Result<Vec<u8>> {
    let rest = buf.get(n..).unwrap_or_default();
    if head.chunked {
        return dechunk(rest);
    }
    match head.content_length {
        Some(len) => rest
            .get(..usize::try_from(len).unwrap_or(usize::MAX))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::other("the response ended before its Content-Length")),
        None => Ok(rest.to_vec()),
    }
}

/// Whether the response in `buf` is complete (so a reader can stop without waiting for the close).
pub fn complete(buf: &[u8]) -> bool {
    match parse_head(buf) {
        Ok(Some((h, n))) if !h.chunked => match h.content_length {
            Some(len) => (buf.len() - n) as u64 >= len,
            None => false,
        },
        Ok(Some((h, n))) if h.chunked => {
            h.chunked && buf.get(n..).is_some_and(|b| b.ends_with(b"0\r\n\r\n"))
        }
        _ => false,
    }
}

/// A `GET` request for `path` on `authority`, from byte `from` on.
pub fn get_request(authority: &str, path: &str, from: u64) -> String {
    let range = if from > 0 {
        format!("Range: bytes={from}-\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ingot-agent\r\n{range}Connection: close\r\n\r\n"
    )
}

/// A blob download in progress: the response body, from where the server said it starts.
pub struct Download<R> {
    reader: R,
    /// Bytes of the body already read into the head buffer.
    pending: Vec<u8>,
    /// Where in the blob this body starts.
    pub start: u64,
    /// Bytes of the body left (`None`: until the connection closes).
    pub left: Option<u64>,
}

impl<R: Read> Download<R> {
    /// Reads the response head from `reader` (a connection on which [`get_request`] was sent for byte
    /// `from` on) and checks it answers that request.
    pub fn start(mut reader: R, from: u64) -> io::Result<Download<R>> {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let (head, n) = loop {
            if let Some(h) = parse_head(&buf)? {
                break h;
            }
            let k = reader.read(&mut chunk)?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the rack closed the connection before answering",
                ));
            }
            buf.extend_from_slice(&chunk[..k]);
        };
        let start = match head.status {
            200 => 0,
            206 => head.range_start.unwrap_or(u64::MAX),
            404 => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the rack does not have the image blob (404): check that the image was uploaded and \
                     the rack's cache is healthy",
                ))
            }
            s => return Err(io::Error::other(format!("the rack answered HTTP {s}"))),
        };
        if start != 0 && start != from {
            return Err(io::Error::other(format!(
                "asked for byte {from} on, the rack answered from {start}"
            )));
        }
        if head.chunked {
            return Err(io::Error::other(
                "the rack sent the blob chunked; expected a Content-Length",
            ));
        }
        let pending = buf.split_off(n);
        Ok(Download {
            reader,
            pending,
            start,
            left: head.content_length,
        })
    }
}

impl<R: Read> Read for Download<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let cap = match self.left {
            Some(0) => return Ok(0),
            Some(l) => out.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => out.len(),
        };
        let k = if !self.pending.is_empty() {
            let k = cap.min(self.pending.len());
            out[..k].copy_from_slice(&self.pending[..k]);
            self.pending.drain(..k);
            k
        } else {
            let k = self.reader.read(&mut out[..cap])?;
            if k == 0 && self.left.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before the end of the blob",
                ));
            }
            k
        };
        if let Some(l) = self.left.as_mut() {
            *l -= k as u64;
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: x\r\n\r\nabc";
        let (h, n) = parse_head(r).unwrap().unwrap();
        assert_eq!(
            (h.status, h.content_length, h.chunked),
            (200, Some(3), false)
        );
        assert_eq!(body_of(&h, r, n).unwrap(), b"abc");
        assert!(complete(r));
        assert!(!complete(&r[..r.len() - 1]));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-")
            .unwrap()
            .is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x=y\r\nc\r\n0\r\n\r\n";
        let (h, n) = parse_head(c).unwrap().unwrap();
        assert!(h.chunked && complete(c));
        assert_eq!(body_of(&h, c, n).unwrap(), b"abc");
        assert!(dechunk(b"ff\r\nab").is_err());
        let p = b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 100-199/200\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(parse_head(p).unwrap().unwrap().0.range_start, Some(100));
        let long = vec![b'a'; MAX_HEAD + 1];
        assert!(parse_head(&long).is_err());
    }

    #[test]
    fn a_download_reads_its_body_and_checks_its_range() {
        let r = b"HTTP/1.1 206 P\r\nContent-Range: bytes 5-9/10\r\nContent-Length: 5\r\n\r\n56789trailing";
        let mut d = Download::start(&r[..], 5).unwrap();
        let mut body = Vec::new();
        d.read_to_end(&mut body).unwrap();
        assert_eq!(body, b"56789");
        // A body cut short is an error, not a silent end.
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234";
        let mut d = Download::start(&cut[..], 0).unwrap();
        let mut body = Vec::new();
        assert_eq!(
            d.read_to_end(&mut body).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let wrong =
            b"HTTP/1.1 206 P\r\nContent-Range: bytes 7-9/10\r\nContent-Length: 3\r\n\r\n789";
        assert!(Download::start(&wrong[..], 5).is_err());
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let e = Download::start(&missing[..], 0).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(get_request("h:1", "/blobs/x/disk", 7).contains("Range: bytes=7-\r\n"));
        assert!(!get_request("h:1", "/blobs/x/disk", 0).contains("Range"));
    }
}
