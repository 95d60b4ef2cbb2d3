//! What each connected host says of its paths to its peers
//! ([`ClientMsg::ReportPaths`](weft_proto::msg::ClientMsg::ReportPaths)),
//! kept in memory for the web page's matrix, and forgotten when the
//! host's session ends.
//!
//! A report comes from a joined host, so it is bounded before it is kept:
//! only entries for the host's own peers (by the compiled policy), at most
//! [`MAX_PATH_REPORTS`] of them, each reason cut to [`MAX_PATH_REASON`]
//! bytes. A host can only describe its own side of a pair.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use weft_proto::msg::{PathReport, MAX_PATH_REASON, MAX_PATH_REPORTS};
use weft_proto::NodeId;

/// One host's latest report.
#[derive(Clone, Debug)]
pub struct HostReport {
    /// The session it came on.
    session: u64,
    /// The protocol version the host's session speaks.
    pub protocol_version: u32,
    /// When the latest report arrived (`None`: none yet this session).
    pub at: Option<Instant>,
    pub paths: Vec<PathReport>,
}

#[derive(Default)]
pub(super) struct PathReports {
    hosts: Mutex<HashMap<NodeId, HostReport>>,
}

impl PathReports {
    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, HostReport>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `session` of `node` started.
    pub(super) fn started(&self, node: NodeId, session: u64, protocol_version: u32) {
        self.hosts().insert(
            node,
            HostReport {
                session,
                protocol_version,
                at: None,
                paths: Vec::new(),
            },
        );
    }

    /// Session `session` of `node` ended (a newer one's report stays).
    pub(super) fn ended(&self, node: NodeId, session: u64) {
        let mut hosts = self.hosts();
        if hosts.get(&node).is_some_and(|r| r.session == session) {
            hosts.remove(&node);
        }
    }

    /// Keeps `paths` as `node`'s report, bounded, with only the entries
    /// `is_peer` accepts.
    pub(super) fn report(
        &self,
        node: NodeId,
        session: u64,
        mut paths: Vec<PathReport>,
        is_peer: impl Fn(NodeId) -> bool,
    ) {
        paths.truncate(MAX_PATH_REPORTS);
        paths.retain(|p| p.peer != node && is_peer(p.peer));
        paths.sort_by_key(|p| p.peer);
        paths.dedup_by_key(|p| p.peer);
        for p in &mut paths {
            if let Some(r) = &mut p.reason {
                truncate_at_char(r, MAX_PATH_REASON);
            }
        }
        let mut hosts = self.hosts();
        if let Some(r) = hosts.get_mut(&node).filter(|r| r.session == session) {
            r.paths = paths;
            r.at = Some(Instant::now());
        }
    }

    /// Every connected host's report.
    pub(super) fn snapshot(&self) -> HashMap<NodeId, HostReport> {
        self.hosts().clone()
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::msg::PathClassReport;

    fn entry(peer: u64, path: PathClassReport, reason: Option<&str>) -> PathReport {
        PathReport {
            peer: NodeId(peer),
            path,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn keeps_only_peers_bounded_and_of_the_current_session() {
        let r = PathReports::default();
        let me = NodeId(1);
        r.started(me, 10, 3);
        let long = "é".repeat(200);
        r.report(
            me,
            10,
            vec![
                entry(2, PathClassReport::Relay, Some(&long)),
                entry(2, PathClassReport::Direct, None),
                entry(3, PathClassReport::Lan, None),
                entry(1, PathClassReport::Lan, None),
                entry(99, PathClassReport::Direct, None),
            ],
            |p| p == NodeId(2) || p == NodeId(3),
        );
        let snap = r.snapshot();
        let kept = &snap[&me].paths;
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].peer, NodeId(2));
        let reason = kept[0].reason.as_deref().unwrap_or_default();
        assert!(reason.len() <= MAX_PATH_REASON && !reason.is_empty());
        // A report on an older session, and an end of one, change nothing.
        r.report(me, 9, Vec::new(), |_| true);
        r.ended(me, 9);
        assert_eq!(r.snapshot()[&me].paths.len(), 2);
        r.ended(me, 10);
        assert!(r.snapshot().is_empty());
    }

    #[test]
    fn a_flood_is_cut_to_the_limit_before_filtering() {
        let r = PathReports::default();
        r.started(NodeId(1), 1, 3);
        let many = (2..(MAX_PATH_REPORTS as u64 * 4))
            .map(|i| entry(i, PathClassReport::Direct, None))
            .collect();
        r.report(NodeId(1), 1, many, |_| true);
        assert!(r.snapshot()[&NodeId(1)].paths.len() <= MAX_PATH_REPORTS);
    }
}
