//! Redis spoken directly: a few lines of RESP over a `TcpStream`, with explicit timeouts.

use super::*;

/// A Redis reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One Redis connection with a bound on every operation.
pub struct Resp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connects with `timeout` for the handshake and for every later read and write. The socket
    /// lives in the calling thread's network namespace.
    pub fn connect(addr: SocketAddrV4, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr.into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Sends one command without waiting for the reply (pipelining).
    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.stream.write_all(&encode(args))
    }

    /// Sends several commands in one write.
    pub fn send_all<'a>(
        &mut self,
        commands: impl IntoIterator<Item = Vec<&'a [u8]>>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for args in commands {
            buf.extend(encode(&args));
        }
        self.stream.write_all(&buf)
    }

    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1);
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| invalid(format!("bad length or integer {s:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(int(rest)?),
            "$" => match int(rest)? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            },
            "*" => match int(rest)? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some(
                    (0..n)
                        .map(|_| self.read_reply())
                        .collect::<Result<_, _>>()?,
                )),
            },
            _ => return Err(invalid(format!("not a RESP reply: {line:?}"))),
        })
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Err(invalid("empty reply line".into()));
        }
        Ok(line.to_owned())
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

pub(super) fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Which of `keys` do not exist on `backend`, asked from inside the backend's namespace with
/// pipelined `EXISTS` (one reply per key, so the answer is exact).
pub fn missing_keys(backend: &Backend, keys: Vec<String>) -> Result<Vec<String>> {
    let addr = backend.addr();
    in_netns(&backend.netns().path(), move || -> Result<Vec<String>> {
        let mut conn = Resp::connect(addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        let mut missing = Vec::new();
        for batch in keys.chunks(1000) {
            conn.send_all(
                batch
                    .iter()
                    .map(|k| vec![b"EXISTS".as_slice(), k.as_bytes()]),
            )?;
            for key in batch {
                match conn.read_reply()? {
                    Reply::Int(1) => {}
                    Reply::Int(0) => missing.push(key.clone()),
                    other => bail!("EXISTS {key} on {addr}: {other:?}"),
                }
            }
        }
        Ok(missing)
    })?
}
