//! A small HTTP/1.1 server for tests, on 127.0.0.1 with an OS-chosen port, std only.
//!
//! Each route serves a body under a [`Mode`] that can be changed while the server runs
//! (honour `Range: bytes=N-`, ignore it, cut the connection at an offset, stall, throttle,
//! redirect, 404). Every request is recorded (method, path, headers) for the test to inspect.
//! One thread per connection; every response closes its connection. Stalls end after
//! [`STALL`], so no thread outlives a test by long.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long a stalling route waits before closing.
pub const STALL: Duration = Duration::from_secs(8);

/// How a route answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with the body, or 206 for `Range: bytes=N-`.
    Normal,
    /// Always 200 with the whole body.
    IgnoreRange,
    /// Announce the full length but close the connection once byte `n` (absolute offset) is sent.
    CutAt(usize),
    /// [`Mode::CutAt`] for the first request, then [`Mode::Normal`].
    CutOnceAt(usize),
    /// Send headers and the body up to byte `n`, then stall for [`STALL`].
    StallAt(usize),
    /// Read the request and stall for [`STALL`] without answering.
    StallBeforeHeaders,
    /// [`Mode::Normal`], sending 16 KiB chunks with this pause between them.
    Throttle(Duration),
    /// 302 to this path on the same server (extra headers go on the 302).
    Redirect(String),
    /// 404.
    NotFound,
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct Route {
    body: Arc<Vec<u8>>,
    mode: Mode,
    headers: Vec<(String, String)>,
    served: usize,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    requests: Vec<Request>,
}

/// A running server; it lives until the test process ends.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    /// Starts a server on 127.0.0.1 with an OS-chosen port.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let s = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    let _ = handle(stream, &s);
                });
            }
        });
        Server { addr, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `body` at `path` under `mode`, with `headers` added to the response.
    pub fn route(&self, path: &str, body: Vec<u8>, mode: Mode, headers: &[(&str, &str)]) {
        let route = Route {
            body: Arc::new(body),
            mode,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            served: 0,
        };
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), route);
    }

    /// Changes the mode of the route at `path`.
    pub fn set_mode(&self, path: &str, mode: Mode) {
        let mut st = self.state.lock().unwrap();
        st.routes.get_mut(path).expect("route").mode = mode;
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests received so far for `path`.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let request = Request {
        method,
        path: path.clone(),
        headers,
    };
    let range_start = request
        .header("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let route = {
        let mut st = state.lock().unwrap();
        st.requests.push(request);
        let r = st.routes.get_mut(&path).map(|r| {
            r.served += 1;
            r.clone()
        });
        r
    };
    let mut out = stream;
    let Some(route) = route else {
        return respond_404(&mut out);
    };
    let mode = match route.mode {
        Mode::CutOnceAt(n) if route.served == 1 => Mode::CutAt(n),
        Mode::CutOnceAt(_) => Mode::Normal,
        m => m,
    };
    let extra: String = route
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let body = &route.body[..];
    match mode {
        Mode::NotFound => respond_404(&mut out),
        Mode::StallBeforeHeaders => {
            thread::sleep(STALL);
            Ok(())
        }
        Mode::Redirect(to) => {
            write!(
                out,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            out.flush()
        }
        mode => {
            let honour = !matches!(mode, Mode::IgnoreRange);
            let start = match range_start {
                Some(s) if honour && s <= body.len() => s,
                _ => 0,
            };
            if start > 0 {
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                )?;
            } else {
                write!(out, "HTTP/1.1 200 OK\r\n")?;
            }
            write!(
                out,
                "Content-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
                body.len() - start
            )?;
            match mode {
                Mode::CutAt(n) => {
                    if n > start {
                        out.write_all(&body[start..n.min(body.len())])?;
                    }
                    out.flush()?;
                    let _ = out.shutdown(Shutdown::Both);
                    return Ok(());
                }
                Mode::StallAt(n) => {
                    if n > start {
                        out.write_all(&body[start..n.min(body.len())])?;
                    }
                    out.flush()?;
                    thread::sleep(STALL);
                    return Ok(());
                }
                Mode::Throttle(pause) => {
                    for chunk in body[start..].chunks(16 * 1024) {
                        out.write_all(chunk)?;
                        out.flush()?;
                        thread::sleep(pause);
                    }
                }
                _ => out.write_all(&body[start..])?,
            }
            out.flush()?;
            let _ = out.shutdown(Shutdown::Write);
            Ok(())
        }
    }
}

fn respond_404(out: &mut TcpStream) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
    )?;
    out.flush()
}
