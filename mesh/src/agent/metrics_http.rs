//! `--metrics-listen ADDR`: `GET /metrics` over HTTP/1.1 for Prometheus,
//! and (for an agent) the read-only page of this host (`GET /`, polling
//! `/api/cluster`; see [`super::overview`]). Read-only and
//! unauthenticated, like every Prometheus exporter: bind it to 127.0.0.1 or
//! the host's overlay address, not to the internet.

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
/// The page's JSON, made at each request.
pub type PageJson = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Binds `addr`; the returned task serves until aborted.
pub async fn serve(
    addr: SocketAddr,
    scrape: Scrape,
    page: Option<PageJson>,
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
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let scrape = scrape.clone();
                    let page = page.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &scrape, page.as_ref())) }
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

fn respond(
    req: &Request<Incoming>,
    scrape: &Scrape,
    page: Option<&PageJson>,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    let (status, content_type, body) = match (req.method(), req.uri().path(), page) {
        (&Method::GET, "/metrics", _) => (StatusCode::OK, TEXT, scrape().into_bytes()),
        (&Method::GET, "/" | "/index.html", Some(_)) => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            weft_proto::web::PAGE.as_bytes().to_vec(),
        ),
        (&Method::GET, "/api/cluster", Some(p)) => (StatusCode::OK, "application/json", p()),
        (&Method::GET, _, _) => (StatusCode::NOT_FOUND, TEXT, b"try /metrics\n".to_vec()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            b"GET /metrics\n".to_vec(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    r
}
