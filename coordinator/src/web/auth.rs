//! Who may see the web page: whoever holds the admin credential.
//!
//! `weft web-url` derives a login token from the admin secret and prints
//! `http://ADDR/login?token=…`. Opening it sets a session cookie and
//! redirects to `/` (so the token leaves the address bar and the history).
//! The cookie is `EXPIRES.MAC`, a MAC of its expiry under the same key:
//! nothing is kept server-side, it survives a coordinator restart, and it
//! stops working when it expires or the admin secret changes.
//!
//! The key is [`secret_hash`](weft_proto::auth::secret_hash) of the admin
//! secret (what the coordinator keeps in memory), so the token and the
//! cookie never reveal the secret itself.

/// The session cookie's name.
pub const COOKIE: &str = "weft_session";
/// How long a session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;

const LOGIN_LABEL: &[u8] = b"weft web login v1";
const SESSION_LABEL: &[u8] = b"weft web session v1";

fn mac(key: &[u8; 32], label: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The login token for the admin secret whose hash is `key`, in hex.
pub fn login_token(key: &[u8; 32]) -> String {
    hex::encode(mac(key, LOGIN_LABEL, &[]))
}

/// Whether `token` (hex) is the login token.
pub fn login_ok(key: &[u8; 32], token: &str) -> bool {
    let mut given = [0u8; 32];
    if hex::decode_to_slice(token.trim(), &mut given).is_err() {
        return false;
    }
    weft_proto::auth::ct_eq32(&given, &mac(key, LOGIN_LABEL, &[]))
}

/// A session cookie value valid until `expires` (Unix seconds).
pub fn session_value(key: &[u8; 32], expires: u64) -> String {
    format!(
        "{expires}.{}",
        hex::encode(mac(key, SESSION_LABEL, &expires.to_be_bytes()))
    )
}

/// Whether a `Cookie:` header holds a session valid at `now`.
pub fn session_ok(key: &[u8; 32], cookie_header: &str, now: u64) -> bool {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|v| value_ok(key, v, now))
}

fn value_ok(key: &[u8; 32], value: &str, now: u64) -> bool {
    let Some((expires, tag)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    let mut given = [0u8; 32];
    if expires <= now || hex::decode_to_slice(tag, &mut given).is_err() {
        return false;
    }
    weft_proto::auth::ct_eq32(&given, &mac(key, SESSION_LABEL, &expires.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn the_login_token_is_checked() {
        let t = login_token(&KEY);
        assert!(login_ok(&KEY, &t));
        assert!(!login_ok(&[8; 32], &t));
        assert!(!login_ok(&KEY, "00"));
        assert!(!login_ok(
            &KEY,
            "not hex at all, and long enough to be 64 characters......."
        ));
    }

    #[test]
    fn a_session_expires_and_cannot_be_forged() {
        let v = session_value(&KEY, 1000);
        assert!(session_ok(&KEY, &format!("{COOKIE}={v}"), 999));
        assert!(session_ok(&KEY, &format!("a=b; {COOKIE}={v}; c=d"), 999));
        assert!(!session_ok(&KEY, &format!("{COOKIE}={v}"), 1000), "expired");
        assert!(!session_ok(&[8; 32], &format!("{COOKIE}={v}"), 999));
        // Moving the expiry breaks the MAC.
        let (_, tag) = v.split_once('.').unwrap_or_default();
        assert!(!session_ok(&KEY, &format!("{COOKIE}=99999.{tag}"), 999));
        assert!(!session_ok(&KEY, "", 0));
        assert!(!session_ok(&KEY, &format!("{COOKIE}=garbage"), 0));
    }
}
