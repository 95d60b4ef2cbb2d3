//! The coordinator's two HTTP listeners.
//!
//! - `--metrics-listen ADDR`: `GET /metrics`, the Prometheus text format,
//!   unauthenticated like every exporter (bind it to a private address).
//! - `--web-listen ADDR`: the cluster's web page (`/`, one static file
//!   embedded in the binary, no outside requests) and the JSON it polls
//!   (`/api/cluster`), both behind a session from the admin credential
//!   (see [`auth`]; `weft web-url` prints the login link).
//!
//! Both are small HTTP/1.1 servers on hyper with a cap on connections and
//! a deadline on request headers: a browser tab polls once a second, a
//! Prometheus server scrapes every 15 s.

pub mod auth;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The page, embedded (shared with the agents' read-only page).
pub use weft_proto::web::PAGE;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The page's policy: its own inline script and style, requests only to
/// this origin, no frames, no forms.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// A future of the cluster's JSON.
pub type JsonFuture = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// What a listener serves.
#[derive(Clone)]
pub enum Site {
    /// `GET /metrics`: the text made at each request.
    Metrics(Arc<dyn Fn() -> String + Send + Sync>),
    /// The web page.
    Page(Arc<PageSite>),
}

/// The web page's inputs.
pub struct PageSite {
    /// [`auth`]'s key: the hash of the admin secret.
    pub key: [u8; 32],
    /// The JSON of `/api/cluster`, made at each request.
    pub cluster: Arc<dyn Fn() -> JsonFuture + Send + Sync>,
}

/// Binds `addr`; the returned task serves `site` until aborted.
pub async fn serve(
    addr: SocketAddr,
    site: Site,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
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
            let site = site.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let site = site.clone();
                    async move { Ok::<_, Infallible>(respond(&site, &req).await) }
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

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

async fn respond(site: &Site, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match site {
        Site::Metrics(scrape) => match req.uri().path() {
            "/metrics" => response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                scrape().into_bytes(),
            ),
            _ => text(StatusCode::NOT_FOUND, "try /metrics\n"),
        },
        Site::Page(page) => respond_page(page, req).await,
    }
}

const NOT_SIGNED_IN: &str = "Not signed in (or the session expired). On the coordinator, run \
                             `weft web-url` and open the link it prints.\n";

async fn respond_page(site: &PageSite, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let now = crate::now_unix();
    let signed_in = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| auth::session_ok(&site.key, c, now));
    match req.uri().path() {
        "/login" => {
            let token = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or_default();
            if !auth::login_ok(&site.key, token) {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "That login link is not valid for this coordinator. On the coordinator, run \
                     `weft web-url` and open the link it prints.\n",
                );
            }
            let expires = now + auth::SESSION_SECS;
            let cookie = format!(
                "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
                auth::COOKIE,
                auth::session_value(&site.key, expires),
                auth::SESSION_SECS
            );
            let mut r = text(StatusCode::SEE_OTHER, "signed in; go to /\n");
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        "/" | "/index.html" if signed_in => {
            let mut r = response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                PAGE.as_bytes().to_vec(),
            );
            r.headers_mut()
                .insert("content-security-policy", HeaderValue::from_static(CSP));
            r.headers_mut()
                .insert("x-frame-options", HeaderValue::from_static("DENY"));
            r
        }
        "/api/cluster" if signed_in => {
            response(StatusCode::OK, "application/json", (site.cluster)().await)
        }
        "/" | "/index.html" => text(StatusCode::UNAUTHORIZED, NOT_SIGNED_IN),
        "/api/cluster" => response(
            StatusCode::UNAUTHORIZED,
            "application/json",
            br#"{"error":"not signed in: run `weft web-url` on the coordinator"}"#.to_vec(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; the page is at /\n"),
    }
}
