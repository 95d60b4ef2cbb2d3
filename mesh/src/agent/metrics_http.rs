//! `--metrics-listen ADDR`: `GET /metrics` over HTTP/1.1 for Prometheus.
//! Read-only and unauthenticated, like every Prometheus exporter: bind it
//! to 127.0.0.1 or the host's overlay address, not to the internet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint serves: the metrics text, made at each request.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr`; the returned task serves until aborted.
pub async fn serve(
    addr: SocketAddr,
    scrape: Scrape,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let scrape = scrape.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &scrape)) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

fn respond(req: &Request<Incoming>, scrape: &Scrape) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, scrape()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "try /metrics\n".to_string()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
