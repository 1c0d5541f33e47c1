//! The operator's endpoints beside the chat protocol: `/metrics` over HTTP (`--metrics-listen`),
//! and the control socket that `chatd backup` talks to.
//!
//! `/metrics` is served by hyper on the server's executor; each scrape only reads the registry
//! ([`Metrics`], atomics the core task writes), so a scraper never waits for the core and the core
//! never waits for a scraper. Connections are bounded ([`MAX_METRICS_CONNECTIONS`]) and each must
//! finish within [`METRICS_TIMEOUT`].
//!
//! The control socket is a Unix socket beside the database (`DB.ctl`, mode 0600: only the server's
//! own user, who may read the database file anyway, can use it). A client sends one line,
//! `BACKUP <absolute path>`, and gets one line back when the copy is written: `OK <accounts>
//! <messages> <last id> <bytes>`, or `ERR <why>`.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_channel::Sender;
use async_net::unix::UnixListener;
use async_net::TcpListener;
use bytes::Bytes;
use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use futures_lite::{future, AsyncReadExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use smol::{Executor, Timer};

use crate::core::{BackupDone, Event};
use crate::metrics::Metrics;

/// Most scrapes served at once; more connections are closed at once.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// How long one metrics connection may take.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest control line read.
const MAX_CONTROL_LINE: u64 = 4096;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub(super) async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ex: Arc<Executor<'static>>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("metrics listener: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_METRICS_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (metrics, open) = (metrics.clone(), open.clone());
        ex.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(smol_hyper::rt::FuturesIo::new(stream), service);
            let timeout = async {
                Timer::after(METRICS_TIMEOUT).await;
                Ok(())
            };
            if let Err(e) = future::or(conn, timeout).await {
                log::debug!("metrics connection: {e}");
            }
            open.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method().as_str(), req.uri().path()) {
        ("GET" | "HEAD", "/metrics") => {
            (StatusCode::OK, metrics.prometheus(now_ms()), CONTENT_TYPE)
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "chatd serves /metrics only\n".into(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// The control socket of the database at `db`.
pub fn control_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".ctl");
    db.with_file_name(name)
}

/// Binds the control socket (replacing a stale one: the database is locked by this process, so no
/// other server uses it), readable and writable by the server's user only.
pub(super) fn bind_control(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until the task is dropped: one request per connection.
pub(super) async fn serve_control(
    listener: UnixListener,
    events: Sender<Event>,
    ex: Arc<Executor<'static>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            Timer::after(Duration::from_millis(100)).await;
            continue;
        };
        let events = events.clone();
        ex.spawn(async move {
            let mut reader = BufReader::new(stream.clone()).take(MAX_CONTROL_LINE);
            let mut line = String::new();
            let reply = match reader.read_line(&mut line).await {
                Ok(_) => control(line.trim_end(), &events).await,
                Err(e) => format!("ERR {e}"),
            };
            let mut stream = stream;
            let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
        })
        .detach();
    }
}

async fn control(line: &str, events: &Sender<Event>) -> String {
    let Some(path) = line.strip_prefix("BACKUP ") else {
        return "ERR the only request is BACKUP <absolute path>".into();
    };
    let to = PathBuf::from(path);
    if !to.is_absolute() {
        return "ERR the path must be absolute".into();
    }
    let (tx, rx) = async_channel::bounded(1);
    let done = BackupDone(Box::new(move |outcome| {
        let _ = tx.try_send(outcome);
    }));
    if events.send(Event::Backup { to, done }).await.is_err() {
        return "ERR the server is stopping".into();
    }
    match rx.recv().await {
        Ok(Ok(s)) => format!("OK {} {} {} {}", s.accounts, s.messages, s.last_id, s.bytes),
        Ok(Err(why)) => format!("ERR {}", why.replace('\n', " ")),
        Err(_) => "ERR the server stopped before the copy was made".into(),
    }
}
