//! Shared harness: a coordinator on loopback in a temp state dir, and hosts
//! built on the real control client.

#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test harness: a failure should panic"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_coordinator::admin::AdminCredential;
use weft_coordinator::{Config, Coordinator};
use weft_proto::msg::{AdminCommand, AdminReply};
use x25519_dalek::StaticSecret;

// The control client is its own crate, so these tests do not wait on (or
// break with) the data plane half of weft-mesh.
pub use weft_control as control;

#[allow(unused_imports)]
pub use control::{ControlClient, ControlError, CoordinatorInfo, ErrorCode, JoinOutcome, Session};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub coord: Option<Coordinator>,
    pub addr: SocketAddr,
    pub config: Config,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("state"), "127.0.0.1:0".parse().unwrap());
        config.coalesce = Duration::from_millis(10);
        tweak(&mut config);
        let coord = Coordinator::start(config.clone()).await.unwrap();
        let addr = coord.local_addr().unwrap();
        config.listen = addr;
        Self {
            dir,
            coord: Some(coord),
            addr,
            config,
        }
    }

    pub fn coord(&self) -> &Coordinator {
        self.coord.as_ref().unwrap()
    }

    /// Stops the coordinator and starts it again on the same port and state.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`Harness::restart`], running `between` on the state dir while the
    /// coordinator is down.
    pub async fn restart_with(&mut self, between: impl FnOnce(&std::path::Path)) {
        self.coord.take().unwrap().shutdown().await;
        between(&self.config.state_dir);
        self.coord = Some(Coordinator::start(self.config.clone()).await.unwrap());
    }

    pub fn admin_path(&self) -> PathBuf {
        self.coord().admin_credential_path()
    }

    pub async fn admin(
        &self,
        cmd: AdminCommand,
    ) -> Result<AdminReply, weft_coordinator::admin::AdminError> {
        AdminCredential::load(&self.admin_path())
            .unwrap()
            .request(cmd)
            .await
    }

    pub async fn token(&self, uses: Option<u32>) -> String {
        self.coord().create_token(uses, None, vec![]).await.unwrap()
    }

    pub async fn nodes(&self) -> Vec<weft_proto::msg::NodeInfo> {
        match self.admin(AdminCommand::NodeList).await.unwrap() {
            AdminReply::Nodes(n) => n,
            other => panic!("{other:?}"),
        }
    }
}

pub fn key() -> StaticSecret {
    StaticSecret::random_from_rng(rand::rngs::OsRng)
}

pub async fn join(token: &str, name: &str) -> (StaticSecret, JoinOutcome) {
    let k = key();
    let out = ControlClient::new()
        .unwrap()
        .join(token, &k, name, vec!["192.0.2.10:51820".parse().unwrap()])
        .await
        .unwrap();
    (k, out)
}

/// Reads changes until `pred` holds on the netmap, or panics after `within`.
pub async fn wait_for(session: &mut Session, within: Duration, pred: impl Fn(&Session) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !pred(session) {
        tokio::time::timeout_at(deadline, session.next_change())
            .await
            .expect("netmap did not reach the expected state in time")
            .unwrap();
    }
}

/// A QUIC connection to the coordinator at `addr` made by hand (pinned to
/// `pin`, offering `alpns`), for hellos the control client would not send.
pub async fn dial_by_hand(
    addr: SocketAddr,
    pin: [u8; 32],
    alpns: Vec<Vec<u8>>,
) -> quinn::Connection {
    let (mut tls, _) = weft_proto::tls::pinned_client_config(pin).unwrap();
    tls.alpn_protocols = alpns;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(crypto)),
            addr,
            weft_proto::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap()
}

/// Opens a session stream on `conn`, sends the hello `build` makes from
/// the TLS exporter keyed with `public`, and reads the coordinator's answer.
pub async fn first_answer(
    conn: &quinn::Connection,
    public: &[u8; 32],
    build: impl FnOnce([u8; 32]) -> weft_proto::msg::Hello,
) -> weft_proto::msg::ServerMsg {
    use weft_proto::codec;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, weft_proto::auth::EXPORTER_LABEL, public)
        .unwrap();
    send.write_all(&codec::encode(&build(exporter)).unwrap())
        .await
        .unwrap();
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; codec::frame_len(header).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    codec::decode(&body).unwrap()
}
