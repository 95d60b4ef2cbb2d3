//! The cross-platform WireGuard UAPI text protocol, without I/O.
//!
//! A request is `get=1\n\n` or `set=1\n` followed by `key=value` lines and an
//! empty line. Every answer ends with `errno=N\n\n`, `0` on success. Reference:
//! <https://www.wireguard.com/xplatform/>. Parsing never panics: malformed
//! input maps to the errno the protocol defines for it.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

pub use crate::dataplane::settings::{DeviceSnapshot, DeviceUpdate, PeerSnapshot, PeerUpdate};
use crate::key::Key;

/// errno values the UAPI answers with (Linux numbering, as `wg` expects).
pub mod errno {
    pub const EIO: i32 = 5;
    pub const EINVAL: i32 = 22;
    pub const EADDRINUSE: i32 = 98;
    pub const EPROTO: i32 = 71;
}

/// A UAPI failure: the errno sent back and a reason for our own log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (errno {errno})")]
pub struct UapiError {
    pub errno: i32,
    pub reason: String,
}

impl UapiError {
    pub fn invalid(reason: impl Into<String>) -> Self {
        UapiError {
            errno: errno::EINVAL,
            reason: reason.into(),
        }
    }

    pub fn protocol(reason: impl Into<String>) -> Self {
        UapiError {
            errno: errno::EPROTO,
            reason: reason.into(),
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UapiError::invalid(format!(
            "{key}={value}: expected true or false"
        ))),
    }
}

fn parse_key(key: &str, value: &str) -> Result<Key, UapiError> {
    Key::from_hex(value).map_err(|_| UapiError::invalid(format!("{key}: not a 64-digit hex key")))
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    value
        .parse()
        .map_err(|_| UapiError::invalid(format!("{key}={value}: not a valid number")))
}

/// Parses the body of a `set=1` request (the lines after `set=1`, without
/// the terminating empty line).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<DeviceUpdate, UapiError> {
    let mut update = DeviceUpdate::default();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::protocol(format!(
                "line `{}` is not key=value",
                line.chars().take(64).collect::<String>()
            )));
        };
        if key == "public_key" {
            update.peers.push(PeerUpdate::new(parse_key(key, value)?));
            continue;
        }
        match update.peers.last_mut() {
            None => match key {
                "private_key" => {
                    let k = parse_key(key, value)?;
                    update.private_key = Some(if k.is_zero() { None } else { Some(k) });
                }
                "listen_port" => update.listen_port = Some(parse_num(key, value)?),
                "fwmark" => update.fwmark = Some(parse_num(key, value)?),
                "replace_peers" => update.replace_peers = parse_bool(key, value)?,
                _ => return Err(UapiError::invalid(format!("unknown device key `{key}`"))),
            },
            Some(peer) => match key {
                "remove" => peer.remove = parse_bool(key, value)?,
                "update_only" => peer.update_only = parse_bool(key, value)?,
                "preshared_key" => {
                    let k = parse_key(key, value)?;
                    peer.preshared_key = Some(if k.is_zero() { None } else { Some(k) });
                }
                "endpoint" => {
                    peer.endpoint = Some(value.parse().map_err(|_| {
                        UapiError::invalid(format!("endpoint `{value}` is not IP:PORT"))
                    })?)
                }
                "persistent_keepalive_interval" => {
                    peer.persistent_keepalive = Some(parse_num(key, value)?)
                }
                "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(key, value)?,
                "allowed_ip" => peer.allowed_ips.push(
                    crate::allowed_ips::Cidr::parse_truncating(value)
                        .map_err(|e| UapiError::invalid(format!("allowed_ip: {e}")))?,
                ),
                "protocol_version" => {
                    if value != "1" {
                        return Err(UapiError::invalid(format!(
                            "protocol_version {value} is not supported (only 1)"
                        )));
                    }
                }
                _ => return Err(UapiError::invalid(format!("unknown peer key `{key}`"))),
            },
        }
    }
    Ok(update)
}

/// Formats a `get=1` answer, including the final `errno=0` and empty line.
pub fn format_get(device: &DeviceSnapshot) -> String {
    let mut out = String::with_capacity(256 + device.peers.len() * 256);
    // Writing to a String cannot fail; the results are ignored on purpose.
    if let Some(k) = &device.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    let _ = writeln!(out, "listen_port={}", device.listen_port);
    if device.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", device.fwmark);
    }
    for p in &device.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", k.to_hex());
        }
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = match p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            Some(d) => (d.as_secs(), d.subsec_nanos()),
            None => (0, 0),
        };
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for net in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// The answer to a request that failed (or `errno=0` on success).
pub fn format_errno(result: &Result<(), UapiError>) -> String {
    match result {
        Ok(()) => "errno=0\n\n".to_string(),
        Err(e) => format!("errno={}\n\n", e.errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hex32(b: u8) -> String {
        hex::encode([b; 32])
    }

    #[test]
    fn parses_a_full_set_request() {
        let body = format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={}\npreshared_key={}\nendpoint=[fd00::1]:51821\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=100.64.1.0/24\nallowed_ip=fd00:1::/64\nprotocol_version=1\n\
             public_key={}\nremove=true",
            hex32(1),
            hex32(2),
            hex32(3),
            hex32(4)
        );
        let u = parse_set(body.lines()).unwrap();
        assert_eq!(u.private_key, Some(Some(Key([1; 32]))));
        assert_eq!(u.listen_port, Some(51820));
        assert!(u.replace_peers);
        assert_eq!(u.peers.len(), 2);
        let p = &u.peers[0];
        assert_eq!(p.public_key, Key([2; 32]));
        assert_eq!(p.preshared_key, Some(Some(Key([3; 32]))));
        assert_eq!(p.endpoint, Some("[fd00::1]:51821".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(p.allowed_ips.len(), 2);
        assert!(u.peers[1].remove);
    }

    #[test]
    fn zero_keys_mean_remove() {
        let body = format!(
            "private_key={}\npublic_key={}\npreshared_key={}",
            hex32(0),
            hex32(9),
            hex32(0)
        );
        let u = parse_set(body.lines()).unwrap();
        assert_eq!(u.private_key, Some(None));
        assert_eq!(u.peers[0].preshared_key, Some(None));
    }

    #[test]
    fn malformed_input_maps_to_errno() {
        let cases: Vec<(String, i32)> = vec![
            ("no equals sign".into(), errno::EPROTO),
            ("listen_port=99999".into(), errno::EINVAL),
            ("listen_port=abc".into(), errno::EINVAL),
            ("private_key=1234".into(), errno::EINVAL),
            ("bogus_key=1".into(), errno::EINVAL),
            (
                format!("public_key={}\nendpoint=nope", hex32(1)),
                errno::EINVAL,
            ),
            (
                format!("public_key={}\nallowed_ip=1.2.3.4/40", hex32(1)),
                errno::EINVAL,
            ),
            (
                format!("public_key={}\nremove=maybe", hex32(1)),
                errno::EINVAL,
            ),
            (
                format!("public_key={}\nprotocol_version=2", hex32(1)),
                errno::EINVAL,
            ),
            (
                format!("public_key={}\nlisten_port=1", hex32(1)),
                errno::EINVAL,
            ),
        ];
        for (body, want) in cases {
            let err = parse_set(body.lines()).unwrap_err();
            assert_eq!(err.errno, want, "for {body:?}");
        }
    }

    #[test]
    fn formats_get_like_wireguard_go() {
        let snap = DeviceSnapshot {
            private_key: Some(Key([1; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerSnapshot {
                public_key: Key([2; 32]),
                preshared_key: None,
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                persistent_keepalive: 25,
                allowed_ips: vec!["100.64.2.0/24".parse().unwrap()],
            }],
        };
        let s = format_get(&snap);
        let want = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nprotocol_version=1\n\
             endpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=20\nrx_bytes=10\n\
             persistent_keepalive_interval=25\nallowed_ip=100.64.2.0/24\nerrno=0\n\n",
            hex32(1),
            hex32(2)
        );
        assert_eq!(s, want);
        assert_eq!(
            format_errno(&Err(UapiError::invalid("x"))),
            "errno=22\n\n".to_string()
        );
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser.
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_set(s.lines());
        }
    }
}
