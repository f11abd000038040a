//! A plain HTTP GET from inside a network namespace: how the tests read a controller's
//! `/metrics` and `/status.json`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::netns::in_netns;

/// GET `path` from `addr`, with the socket created in the namespace at `ns`; the whole
/// response (status line, headers, body). Anything but a 200 is an error naming the status.
pub fn http_get(ns: &Path, addr: SocketAddrV4, path: &str) -> Result<String> {
    let mut stream = in_netns(ns, move || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
    })??;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", body.lines().next().unwrap_or_default());
    }
    Ok(body)
}
