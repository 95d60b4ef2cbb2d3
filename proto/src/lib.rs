//! Wire types shared by the weft host agent and the coordinator.
//!
//! This crate is free of I/O: no tokio, no sockets. Both sides import it.
//!
//! Messages travel as length-delimited frames ([`codec`]) on QUIC streams.
//! The payload is MessagePack with named fields, so a field added later
//! (always with `#[serde(default)]`) is ignored by older readers and
//! defaulted by newer ones.
//!
//! # Protocol changes
//!
//! Every change to a message gets a dated line here.
//!
//! - 2026-11-27, version 1: join, key-proof resume, netmap snapshot and
//!   deltas, admin commands for tokens and nodes.
//! - 2026-11-27, version 2: NAT traversal. QUIC datagrams on the session
//!   connection ([`relay`]): relayed WireGuard datagrams and "punch now"
//!   requests; the disco datagrams of [`disco`] on the WireGuard socket.
//!   Where UDP is blocked the same session runs over TLS on TCP (same port,
//!   same ALPN), with datagrams as `ClientMsg::Datagram` /
//!   `ServerMsg::Datagram` frames.
//! - 2026-11-28, version 3: policy. A host's netmap holds only the peers the
//!   policy lets it reach or be reached by; [`NetmapUpdate::filter`] carries
//!   its inbound packet filter and [`NetmapUpdate::services`] the services
//!   it may reach (both whenever they change, and in every full update);
//!   a session resumes with a delta only when the host's cached netmap holds
//!   the view in force ([`NetmapUpdate::view`], `ResumeRequest::have_view`),
//!   else it starts with a full update. `Peer::routes` lists approved
//!   advertised routes; `ClientMsg::AdvertiseRoutes` advertises them;
//!   `Welcome::domain` is the cluster's DNS domain. Admin commands for the
//!   policy (`Acl*`), services and routes. A version 2 host would ignore the
//!   filter, so it is refused.
//! - 2026-12-01, version 3, additive: session liveness.
//!   `Welcome::keepalive_ms` (0 from older coordinators) says the
//!   coordinator answers `ClientMsg::Ping` with `ServerMsg::Pong`; a host
//!   sends a ping only when it is set. See [`KEEPALIVE`].
//! - 2026-12-01, version 3, additive: keep-alives that scale.
//!   `Welcome::keepalive_ms`, and `NetmapUpdate::keepalive_ms` in every
//!   update, grow with the number of hosts connected ([`keepalive_for`]).
//!   On TCP a host pings at that interval. On QUIC a host set QUIC's own
//!   keep-alives at the interval it expected and renewed its session when
//!   asked for one twice or half as long. Both sides give a session up
//!   after [`liveness_deadline`] of silence.
//! - 2026-12-02, version 3, additive: the coordinator keeps QUIC sessions
//!   alive (`Welcome::keeps_quic_alive`), with QUIC keep-alives at the
//!   interval it asks for when it accepts the connection: the host's QUIC
//!   stack answers them, and neither side's application wakes for them.
//!   QUIC fixes that interval for the connection's life, so when an update
//!   asks for one at least twice or at most half as long, the host opens a
//!   new session and only then closes the old one (the coordinator
//!   replaces the session; peers see nothing). To a coordinator that does
//!   not keep it alive, a host sends an empty QUIC datagram at the interval
//!   asked for (a coordinator of this version drops it before the relay).
//! - 2026-12-02, version 4: compatibility across one version. The version
//!   is negotiated by ALPN: a host offers `weft/4` and `weft/3`, a
//!   coordinator serves both (and accepts older ids only to refuse them in
//!   their own protocol with one line that says which side to upgrade,
//!   [`check_version`]). The host's `Hello::protocol_version` is the
//!   version its connection negotiated. `Welcome::protocol_version` says
//!   which version the session speaks (0 from a version-3 coordinator).
//!   No message changed otherwise: a version-4 coordinator serves a
//!   version-3 agent as a version-3 coordinator did.
//! - 2026-12-02, version 4, additive (admin only, sent only to a version-4
//!   coordinator): `AdminCommand::NodeSet`, `Backup`, `AdminCreate`,
//!   `AdminList`, `AdminRevoke` and their replies; `NodeInfo::last_seen`,
//!   `expiry`, `expired_at`; `TokenInfo::created_by`;
//!   `AclVersion::set_by`.

pub mod auth;
pub mod codec;
pub mod disco;
pub mod msg;
pub mod netmap;
pub mod policy;
pub mod queue;
pub mod relay;
#[cfg(feature = "tls")]
pub mod tls;
pub mod token;
pub mod types;
pub mod web;

/// The newest protocol version this code speaks. A host puts the version
/// its connection negotiated (by ALPN, [`host_alpns`]) in its first
/// message.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest protocol version this code still speaks. The compatibility
/// promise: **the coordinator is upgraded first, and serves agents one
/// version behind it** (N-1). A coordinator refuses a host outside
/// `OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION` with
/// [`msg::ErrorCode::VersionMismatch`] and one line saying which side to
/// upgrade ([`check_version`]). Fields are only ever added (with
/// `#[serde(default)]`), so each side ignores what it does not know;
/// `tests/wire_v3.rs` decodes recorded version-3 frames with this code.
pub const OLDEST_PROTOCOL_VERSION: u32 = 3;

/// The ALPN id of protocol `version` (`weft/4`).
pub fn alpn(version: u32) -> Vec<u8> {
    format!("weft/{version}").into_bytes()
}

/// The protocol version an ALPN id names, if it is one of weft's.
pub fn alpn_version(id: &[u8]) -> Option<u32> {
    std::str::from_utf8(id)
        .ok()?
        .strip_prefix("weft/")?
        .parse()
        .ok()
}

/// The version a handshake that chose ALPN id `chosen` speaks, for a
/// side that offered versions up to `newest`. None chosen (or an id this
/// side did not offer): `newest`, and the hello's answer says what the
/// other side thinks of it.
pub fn negotiated_version(chosen: Option<&[u8]>, newest: u32) -> u32 {
    chosen
        .and_then(alpn_version)
        .filter(|v| *v <= newest)
        .unwrap_or(newest)
}

/// What a host offers, newest first: every version from `newest` down to
/// [`OLDEST_PROTOCOL_VERSION`] (a host that speaks only an older version
/// for a test passes that version).
pub fn host_alpns(newest: u32) -> Vec<Vec<u8>> {
    (OLDEST_PROTOCOL_VERSION.min(newest)..=newest.min(PROTOCOL_VERSION))
        .rev()
        .map(alpn)
        .collect()
}

/// What a coordinator accepts in the TLS handshake: the versions it serves,
/// and every older one, so that an old host hears in its own protocol's
/// refusal which side to upgrade rather than a bare TLS alert.
pub fn coordinator_alpns() -> Vec<Vec<u8>> {
    (1..=PROTOCOL_VERSION).rev().map(alpn).collect()
}

/// Whether a coordinator of this version serves a host speaking `host`:
/// `Err` is the one line to show, naming the side to upgrade.
pub fn check_version(host: u32) -> Result<(), String> {
    let range = format!("{OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}");
    if host < OLDEST_PROTOCOL_VERSION {
        Err(format!(
            "this agent speaks weft protocol {host}, and the coordinator speaks {range}: upgrade the agent (the coordinator serves agents one version behind it)"
        ))
    } else if host > PROTOCOL_VERSION {
        Err(format!(
            "this agent speaks weft protocol {host}, and the coordinator speaks {range}: upgrade the coordinator first (coordinators are upgraded before their agents)"
        ))
    } else {
        Ok(())
    }
}

/// How often a host shows its coordinator it is alive when nothing else is
/// sent, in a small cluster: QUIC keep-alives on a QUIC session,
/// `ClientMsg::Ping` on a TCP one. About 120 bytes a second in both directions together, headers
/// included (measured in the coordinator benchmark). A coordinator with
/// many hosts asks for less ([`keepalive_for`]).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest keep-alive interval a coordinator asks for.
pub const MAX_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// A session that hears nothing for this long is dead: the host reconnects
/// and `weft status` says so. Five keep-alives in a row must be lost first.
/// The floor of [`liveness_deadline`].
pub const LIVENESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest QUIC idle timeout: past the longest [`liveness_deadline`].
/// A coordinator offers the deadline of the interval it keeps a connection
/// alive at, a host the longest deadline, and both ends keep the smaller.
pub const SESSION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(35);

/// The keep-alive interval a coordinator with `sessions` hosts registered
/// asks for: [`KEEPALIVE`] up to about 1,700 hosts, then
/// 0.6 ms per host, so keep-alives cost it about 1,700 packets a second
/// (and as many acknowledgements) however large the cluster, up to
/// [`MAX_KEEPALIVE`] (16,700 hosts). What it costs is noticing a vanished
/// coordinator later (see [`liveness_deadline`]).
pub fn keepalive_for(sessions: usize) -> std::time::Duration {
    keepalive_scaled(sessions, KEEPALIVE_PER_HOST)
}

/// How much longer [`keepalive_for`] gets per connected host.
pub const KEEPALIVE_PER_HOST: std::time::Duration = std::time::Duration::from_micros(600);

/// [`keepalive_for`] with another step per host.
pub fn keepalive_scaled(sessions: usize, per_host: std::time::Duration) -> std::time::Duration {
    let scaled = per_host.saturating_mul(u32::try_from(sessions).unwrap_or(u32::MAX));
    scaled.clamp(KEEPALIVE, MAX_KEEPALIVE)
}

/// How long a session may be silent, on either side, when the host sends a
/// keep-alive every `keepalive`: three lost in a row, plus two seconds for
/// a loaded coordinator, and never less than [`LIVENESS_DEADLINE`].
pub fn liveness_deadline(keepalive: std::time::Duration) -> std::time::Duration {
    (keepalive.saturating_mul(3) + std::time::Duration::from_secs(2)).max(LIVENESS_DEADLINE)
}

/// The ALPN id of [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"weft/4";

/// The TLS server name clients ask for. Identity is checked by the key pin,
/// not by this name.
pub const SERVER_NAME: &str = "weft-coordinator";

pub use netmap::{Netmap, NetmapChange, NetmapError, NetmapUpdate, ServiceEntry};
pub use types::{HostSubnet, NodeId, Peer, WgPublicKey};

#[cfg(test)]
mod keepalive_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keepalives_stretch_with_the_cluster_and_deadlines_with_them() {
        assert_eq!(keepalive_for(0), KEEPALIVE);
        assert_eq!(keepalive_for(1_000), KEEPALIVE);
        assert_eq!(keepalive_for(10_000), Duration::from_secs(6));
        assert_eq!(keepalive_for(1_000_000), MAX_KEEPALIVE);
        assert_eq!(liveness_deadline(KEEPALIVE), LIVENESS_DEADLINE);
        assert_eq!(
            liveness_deadline(Duration::from_secs(6)),
            Duration::from_secs(20)
        );
        assert!(liveness_deadline(MAX_KEEPALIVE) > MAX_KEEPALIVE * 3);
        assert!(SESSION_IDLE_TIMEOUT > liveness_deadline(MAX_KEEPALIVE));
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn hosts_offer_newest_first_and_coordinators_take_older_ids_to_refuse_them() {
        assert_eq!(
            host_alpns(PROTOCOL_VERSION),
            vec![b"weft/4".to_vec(), b"weft/3".to_vec()]
        );
        assert_eq!(host_alpns(3), vec![b"weft/3".to_vec()]);
        assert_eq!(ALPN, alpn(PROTOCOL_VERSION).as_slice());
        assert_eq!(coordinator_alpns().len(), PROTOCOL_VERSION as usize);
        assert_eq!(alpn_version(b"weft/3"), Some(3));
        for bad in [
            &b"weft-replica/1"[..],
            b"weft/",
            b"weft/x",
            b"h3",
            &[0xff, 0xfe],
        ] {
            assert_eq!(alpn_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_side_to_upgrade() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        assert!(check_version(OLDEST_PROTOCOL_VERSION).is_ok());
        let old = check_version(OLDEST_PROTOCOL_VERSION - 1).unwrap_err();
        assert!(old.contains("upgrade the agent"), "{old}");
        let new = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(new.contains("upgrade the coordinator first"), "{new}");
        assert!(!old.contains('\n') && !new.contains('\n'), "one line");
    }
}
