//! Strangers: 2,000 idle TLS connections and 10,000 bogus joins from two
//! other addresses, while a real host joins over QUIC and over TCP. The
//! real joins succeed; their latency is printed (`-- --nocapture`).

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_proto::token::JoinToken;

/// A QUIC client endpoint bound to `ip` (an address of the loopback /8).
fn client_at(ip: [u8; 4]) -> ControlClient {
    let endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    ControlClient::with_endpoint(endpoint)
}

/// Holds `n` TCP connections from 127.0.0.2 to `addr`, idle after the
/// connect (a stranger that never sends its hello).
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), sock.connect(addr)).await
        {
            held.push(s);
        }
    }
    held
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_host_joins_through_idle_connections_and_bogus_joins() {
    let h = Harness::start().await;
    let token = h.token(None).await;
    let real: JoinToken = token.parse().unwrap();

    // A real host joins, over QUIC and over TCP, while the strangers come.
    let mut quic = Vec::new();
    let mut tcp = Vec::new();
    let tcp_client = client_at([127, 0, 0, 1]);
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut via_tcp = real.clone();
    via_tcp.addrs = vec![silent.local_addr().unwrap().to_string()];
    via_tcp.tcp_port = Some(h.addr.port());
    let via_tcp = via_tcp.encode();
    // The first TCP join finds out that QUIC gets no answer (5 s); the
    // client then goes straight to TCP, and those joins are timed.
    let first = tcp_client
        .join(&via_tcp, &key(), "first-tcp", vec![])
        .await
        .unwrap();
    first.session.close();
    let held = idle_connections(h.addr, 2000).await;
    eprintln!("{} idle TCP connections open", held.len());

    // 10,000 joins with tokens that look right but are not, from 127.0.0.3.
    let bogus = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (bogus, real) = (bogus.clone(), real.clone());
        tokio::spawn(async move {
            let client = client_at([127, 0, 0, 3]);
            let sem = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::new();
            for i in 0..10_000u32 {
                let mut t = real.clone();
                t.id = format!("bogus{i}");
                t.secret = [i as u8; 32];
                let (client, sem, bogus) = (client.clone(), sem.clone(), bogus.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    let r = client.join(&t.encode(), &key(), "bogus", vec![]).await;
                    assert!(r.is_err(), "a bogus token joined");
                    bogus.fetch_add(1, Ordering::Relaxed);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };

    while bogus.load(Ordering::Relaxed) < 10_000 && quic.len() < 100 {
        let t = Instant::now();
        let out = client_at([127, 0, 0, 1])
            .join(&token, &key(), "real-quic", vec![])
            .await
            .expect("a real host could not join over QUIC");
        quic.push(t.elapsed());
        assert_eq!(out.session.transport(), "quic");
        out.session.close();
        let t = Instant::now();
        let out = tcp_client
            .join(&via_tcp, &key(), "real-tcp", vec![])
            .await
            .expect("a real host could not join over TCP");
        tcp.push(t.elapsed());
        assert_eq!(out.session.transport(), "tcp");
        out.session.close();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = bogus.load(Ordering::Relaxed);
    flood.await.unwrap();
    drop(held);
    let (pq, pt) = (p99(quic.clone()), p99(tcp.clone()));
    eprintln!(
        "{} QUIC and {} TCP joins during the flood ({during} of 10000 bogus joins done by then): p99 {pq:?} over QUIC, {pt:?} over TCP",
        quic.len(),
        tcp.len()
    );
    assert!(quic.len() >= 5, "too few real joins measured");
    assert!(pq < Duration::from_secs(2), "QUIC join p99 {pq:?}");
    assert!(pt < Duration::from_secs(2), "TCP join p99 {pt:?}");
}
