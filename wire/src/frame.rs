//! The lean framed-TCP data-plane protocol, shared by the worker's server and
//! `shoal-client`.
//!
//! One connection carries any number of request/response pairs, one at a time, so
//! clients pool and reuse connections. All integers are big-endian.
//!
//! ```text
//! hello:    magic "SHLA" | token_len u16 | token (UTF-8), once, first on a connection
//!           answered by a response: length 0 when accepted, else the error (and close)
//! request:  magic "SHL1" | op u8 | dataset_id u64 | version u64 | size u64
//!           | offset u64 | length u64 | name_len u16 | name | path_len u16 | path
//!           [ | etag_len u16 | etag ]    (op 2, a read pinned to the version's etag;
//!                                         op 1 is the same read without the pin)
//! response: status u8 = 0 | length u64 | payload (exactly `length` bytes)
//!         | status u8 = code (see `error_code`) | msg_len u32 | msg (UTF-8)
//! ```
//!
//! A read is clipped to the file size, so `length` may be less than asked.

use std::io;

use shoal_common::auth::Token;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_common::{Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::file_ref::FileRef;

pub const MAGIC: [u8; 4] = *b"SHL1";
/// Opens every connection: the caller's token.
pub const HELLO_MAGIC: [u8; 4] = *b"SHLA";
const MAX_TOKEN_LEN: usize = 256;
pub const OP_READ: u8 = 1;
/// A read pinned to the file version's identity in the store (`FileRef::etag`).
pub const OP_READ_PINNED: u8 = 2;
pub const STATUS_OK: u8 = 0;
/// Largest read one request may ask for (a segment at the default layout).
pub const MAX_READ_LEN: u64 = 64 << 20;
const MAX_ERROR_LEN: u32 = 64 << 10;

/// One read request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub file: FileRef,
    pub offset: u64,
    pub length: u64,
}

pub async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, r: &ReadRequest) -> io::Result<()> {
    let name = r.file.dataset_name.as_bytes();
    let path = r.file.path.as_bytes();
    let etag = r.file.etag.as_bytes();
    let (Ok(nl), Ok(pl), Ok(el)) = (
        u16::try_from(name.len()),
        u16::try_from(path.len()),
        u16::try_from(etag.len()),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "dataset name, path or etag longer than 65535 bytes",
        ));
    };
    let mut buf = Vec::with_capacity(51 + name.len() + path.len() + etag.len());
    buf.extend_from_slice(&MAGIC);
    buf.push(OP_READ_PINNED);
    for v in [
        r.file.dataset.0,
        r.file.version.0,
        r.file.size,
        r.offset,
        r.length,
    ] {
        buf.extend_from_slice(&v.to_be_bytes());
    }
    buf.extend_from_slice(&nl.to_be_bytes());
    buf.extend_from_slice(name);
    buf.extend_from_slice(&pl.to_be_bytes());
    buf.extend_from_slice(path);
    buf.extend_from_slice(&el.to_be_bytes());
    buf.extend_from_slice(etag);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Sends the opening frame with `token`.
pub async fn write_hello<W: AsyncWrite + Unpin>(w: &mut W, token: &Token) -> io::Result<()> {
    let t = token.reveal();
    let mut buf = Vec::with_capacity(6 + t.len());
    buf.extend_from_slice(&HELLO_MAGIC);
    buf.extend_from_slice(&(t.len() as u16).to_be_bytes());
    buf.extend_from_slice(t.as_bytes());
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads the opening frame. The inner error (no hello, a malformed token) is sent back
/// to the peer before the connection is closed.
pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Result<Token, Error>> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).await?;
    if magic != HELLO_MAGIC {
        return Ok(Err(Error::unauthenticated(
            "the data plane needs a token in the opening frame (a client older than the worker?)",
        )));
    }
    let n = r.read_u16().await? as usize;
    if n > MAX_TOKEN_LEN {
        return Ok(Err(Error::unauthenticated("token too long")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    Ok(std::str::from_utf8(&b)
        .map_err(|_| Error::unauthenticated("the token is not text"))
        .and_then(Token::parse))
}

/// Reads the next request; `Ok(None)` when the peer closed the connection between
/// requests. A malformed frame is an `InvalidData` error (the connection is dropped).
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<Result<ReadRequest, Error>>> {
    let mut magic = [0u8; 4];
    match r.read_exact(&mut magic).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame magic",
        ));
    }
    let op = r.read_u8().await?;
    if op != OP_READ && op != OP_READ_PINNED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown op {op}"),
        ));
    }
    let dataset = r.read_u64().await?;
    let version = r.read_u64().await?;
    let size = r.read_u64().await?;
    let offset = r.read_u64().await?;
    let length = r.read_u64().await?;
    let name = read_str16(r).await?;
    let path = read_str16(r).await?;
    let etag = if op == OP_READ_PINNED {
        read_str16(r).await?
    } else {
        String::new()
    };
    let parsed =
        FileRef::new(DatasetId(dataset), &name, &path, FileVersion(version), size).map(|file| {
            ReadRequest {
                file: file.with_etag(&etag),
                offset,
                length,
            }
        });
    Ok(Some(parsed))
}

async fn read_str16<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let n = r.read_u16().await? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    String::from_utf8(b)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "string is not UTF-8"))
}

pub async fn write_ok_header<W: AsyncWrite + Unpin>(w: &mut W, length: u64) -> io::Result<()> {
    let mut h = [0u8; 9];
    h[0] = STATUS_OK;
    h[1..].copy_from_slice(&length.to_be_bytes());
    w.write_all(&h).await
}

pub async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, e: &Error) -> io::Result<()> {
    let msg = e.message().as_bytes();
    let msg = &msg[..msg.len().min(MAX_ERROR_LEN as usize)];
    let mut buf = Vec::with_capacity(5 + msg.len());
    buf.push(error_code(e));
    buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads a response head: `Ok(Ok(length))` before a payload of `length` bytes, or the
/// worker's error. Transport failures are the outer `io::Error`.
pub async fn read_response_head<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Result<u64, Error>> {
    let status = r.read_u8().await?;
    if status == STATUS_OK {
        return Ok(Ok(r.read_u64().await?));
    }
    let n = r.read_u32().await?;
    if n > MAX_ERROR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "error message too long",
        ));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b).await?;
    let msg = String::from_utf8_lossy(&b).into_owned();
    Ok(Err(error_from_code(status, msg)))
}

/// The data plane's status byte for `e`: the kind's stable number (never 0, which is
/// [`STATUS_OK`]).
pub fn error_code(e: &Error) -> u8 {
    e.kind().id()
}

pub fn error_from_code(code: u8, msg: String) -> Error {
    Error::new(ErrorKind::from_id(code), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_and_responses_round_trip() {
        let req = ReadRequest {
            file: FileRef::new(DatasetId(3), "ds", "a/b.bin", FileVersion(9), 100)
                .unwrap()
                .with_etag("9b2cf535f27731c974343645a3985328"),
            offset: 5,
            length: 50,
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &req).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(read_request(&mut r).await.unwrap().unwrap().unwrap(), req);
        assert!(read_request(&mut r).await.unwrap().is_none(), "clean EOF");

        let mut buf = Vec::new();
        write_ok_header(&mut buf, 42).await.unwrap();
        write_error(&mut buf, &Error::not_found("gone"))
            .await
            .unwrap();
        let mut r = &buf[..];
        assert_eq!(read_response_head(&mut r).await.unwrap().unwrap(), 42);
        let e = read_response_head(&mut r).await.unwrap().unwrap_err();
        assert!(e.is(ErrorKind::NotFound) && e.message() == "gone", "{e}");
    }

    #[tokio::test]
    async fn rejects_garbage_and_escaping_paths() {
        let mut r = &b"HTTP/1.1 GET"[..];
        assert!(read_request(&mut r).await.is_err());
        let mut buf = Vec::new();
        let mut req = ReadRequest {
            file: FileRef::new(DatasetId(3), "ds", "x", FileVersion(9), 100).unwrap(),
            offset: 0,
            length: 1,
        };
        req.file.path = "../etc/passwd".into();
        write_request(&mut buf, &req).await.unwrap();
        let mut r = &buf[..];
        assert!(read_request(&mut r).await.unwrap().unwrap().is_err());
    }
}
