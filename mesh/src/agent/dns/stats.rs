//! How the DNS responder answered, for the agent's metrics: replies by
//! response code, and queries dropped unanswered (malformed).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the UDP and TCP servers share.
#[derive(Debug, Default)]
pub struct DnsStats {
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    dropped: AtomicU64,
}

impl DnsStats {
    /// Counts one query by what was sent back (`None`: nothing).
    pub fn count(&self, reply: Option<&[u8]>) {
        let c = match reply.and_then(|r| r.get(3)).map(|b| b & 0x0f) {
            None => &self.dropped,
            Some(0) => &self.noerror,
            Some(3) => &self.nxdomain,
            Some(5) => &self.refused,
            Some(_) => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(result, count)` for each result.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("noerror", r(&self.noerror)),
            ("nxdomain", r(&self.nxdomain)),
            ("refused", r(&self.refused)),
            ("other", r(&self.other)),
            ("dropped", r(&self.dropped)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_response_code() {
        let s = DnsStats::default();
        let reply = |rcode: u8| [0, 0, 0x81, 0x80 | rcode];
        s.count(Some(&reply(0)));
        s.count(Some(&reply(3)));
        s.count(Some(&reply(3)));
        s.count(Some(&reply(5)));
        s.count(Some(&reply(2)));
        s.count(Some(&[0, 0]));
        s.count(None);
        assert_eq!(
            s.snapshot(),
            [
                ("noerror", 1),
                ("nxdomain", 2),
                ("refused", 1),
                ("other", 1),
                ("dropped", 2)
            ]
        );
    }
}
