//! A small HTTP CONNECT proxy for tests: it tunnels `CONNECT host:port` to the target and
//! logs every tunnel it opened. Names under the reserved `.test` domain resolve to
//! 127.0.0.1 here (and nowhere else), so a client that reaches `https://api.standin.test`
//! can only have gone through this proxy.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A running CONNECT proxy on 127.0.0.1; lives as long as the process (threads are cheap).
pub struct ConnectProxy {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Starts the proxy on a free port.
    pub fn start() -> std::io::Result<ConnectProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let log = thread_log.clone();
                std::thread::spawn(move || tunnel(client, &log));
            }
        });
        Ok(ConnectProxy { url, log })
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY` or a kubeconfig `proxy-url`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request line the proxy received (`CONNECT host:port`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Empties the log.
    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn tunnel(client: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(match client.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader
        .read_line(&mut header)
        .map(|n| n > 2)
        .unwrap_or(false)
    {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{method} {target}"));
    let mut out = &client;
    if method != "CONNECT" {
        let _ = out.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let resolved = match target.rsplit_once(':') {
        Some((host, port)) if host.ends_with(".test") => format!("127.0.0.1:{port}"),
        _ => target.to_string(),
    };
    let Ok(upstream) = TcpStream::connect(&resolved) else {
        let _ = out.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if out
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    // Bytes the client sent after the CONNECT head are still in the reader's buffer.
    let buffered = reader.buffer().to_vec();
    let (Ok(mut up_w), Ok(mut up_r), Ok(mut client_w)) = (
        upstream.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
    ) else {
        return;
    };
    if !buffered.is_empty() && up_w.write_all(&buffered).is_err() {
        return;
    }
    let forward = std::thread::spawn(move || {
        let mut client_r = reader.into_inner();
        let _ = std::io::copy(&mut client_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = forward.join();
}
