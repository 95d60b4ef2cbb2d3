//! Session liveness over TLS on TCP: the host pings, the coordinator
//! answers, and when the path goes silent (no FIN, no RST) both sides give
//! up within the deadline.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::token::JoinToken;
use weft_proto::{KEEPALIVE, LIVENESS_DEADLINE};

/// Copies `from` to `to` until either ends; while `paused`, reads nothing
/// (bytes wait in the kernel, the connection stays open).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let read = tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await;
        let n = match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy to `target` for one connection, which `paused` freezes.
async fn proxy(target: SocketAddr, paused: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::spawn(pipe(cr, sw, paused.clone()));
        pipe(sr, cw, paused).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_session_is_given_up_within_the_deadline() {
    let h = Harness::start().await;
    let token = h.token(Some(1)).await;
    let (key, first) = join(&token, "tcp-host").await;
    first.session.close();

    // QUIC goes to a socket that never answers; TLS over TCP goes through
    // the proxy to the coordinator's TCP listener (on its QUIC port).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let paused = Arc::new(AtomicBool::new(false));
    let via = proxy(h.addr, paused.clone()).await;
    let mut info = CoordinatorInfo::from(&token.parse::<JoinToken>().unwrap());
    info.addrs = vec![silent.local_addr().unwrap().to_string()];
    info.tcp_port = Some(via.port());
    let mut session = ControlClient::new()
        .unwrap()
        .connect(&info, &key, vec![], None)
        .await
        .unwrap();
    assert_eq!(session.transport(), "tcp");
    assert_eq!(
        u128::from(session.welcome().keepalive_ms),
        KEEPALIVE.as_millis()
    );
    let heard = session.heard();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let e = loop {
            if let Err(e) = session.next_change().await {
                break e;
            }
        };
        let _ = ended_tx.send((Instant::now(), e));
    });

    // Idle, the coordinator's pongs keep the session heard from.
    tokio::time::sleep(KEEPALIVE * 3).await;
    assert!(
        heard.ago() < KEEPALIVE * 2,
        "last heard {:?} ago while idle",
        heard.ago()
    );
    assert!(h.nodes().await[0].online);

    // Silence: neither a FIN nor a reset, only no bytes.
    paused.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let (at, err) = tokio::time::timeout(LIVENESS_DEADLINE * 3, ended_rx)
        .await
        .expect("the host never gave up")
        .unwrap();
    let took = at - t;
    eprintln!("silent TCP session given up by the host after {took:?}: {err}");
    assert!(
        took <= LIVENESS_DEADLINE + Duration::from_millis(1500),
        "host took {took:?}"
    );
    assert!(
        err.to_string().contains("no word from the coordinator"),
        "{err}"
    );

    // The coordinator, hearing no pings, takes the host offline too.
    let deadline = t + LIVENESS_DEADLINE + Duration::from_secs(3);
    loop {
        if !h.nodes().await[0].online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator kept the host online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "silent TCP session: host offline at the coordinator after {:?}",
        t.elapsed()
    );
}
