//! The HTTP side of the trainer's metrics: `GET /metrics` on hyper, from a small tokio runtime
//! on its own thread so the training loop never waits on a scraper (and needs no async).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::TrainerMetrics;
use crate::error::{Error, Result};

/// A request line plus headers larger than this is refused (431); a scrape sends a few hundred
/// bytes (hyper panics below 8 KiB).
const MAX_HEADER_BYTES: usize = 16 << 10;
/// A client has this long to send its headers...
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and this long for the whole exchange, so a client that never reads the reply is dropped.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `0.0.0.0:port` from a background thread (0 picks a free port);
/// returns the port. Each connection is its own task, so a slow client delays only itself.
pub fn serve(metrics: Arc<TrainerMetrics>, port: u16) -> Result<u16> {
    let failed = |source| Error::Write {
        path: format!("0.0.0.0:{port}").into(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let listener = runtime
        .block_on(TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .map_err(failed)?;
    let port = listener.local_addr().map_err(failed)?.port();
    std::thread::Builder::new()
        .name("metrics-server".into())
        .spawn(move || runtime.block_on(accept(listener, metrics)))
        .map_err(failed)?;
    Ok(port)
}

async fn accept(listener: TcpListener, metrics: Arc<TrainerMetrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, metrics.clone()));
            }
            // Out of file descriptors, say: wait instead of spinning on the error.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One request per connection (a scrape every few seconds needs no keep-alive), within bounds.
async fn connection(stream: TcpStream, metrics: Arc<TrainerMetrics>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = answer(request.uri().path(), &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // A scraper that hangs up or stalls is not our problem; dropping the future closes it.
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, serving).await;
}

fn answer(path: &str, metrics: &TrainerMetrics) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (
            StatusCode::NOT_FOUND,
            "only /metrics is served\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
