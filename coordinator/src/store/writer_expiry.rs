//! The writer thread's expiry work: the sweep ([`crate::expiry::sweep`]
//! decided against the stored records and the registry's online flags)
//! and a node's expiry setting.

use weft_proto::msg::{ErrorCode, ErrorReply, NodeExpiry};
use weft_proto::NodeId;

use super::handle::Swept;
use super::writer::Writer;
use super::{internal, refuse, Change, CommitError, NodeRecord, StoreBackend};
use crate::expiry::{self, ExpiryRules};

impl<B: StoreBackend> Writer<B> {
    pub(super) fn sweep(&mut self, rules: &ExpiryRules, now: u64) -> Result<Swept, ErrorReply> {
        let nodes = self.backend.load().map_err(internal)?.nodes;
        let decided = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            let online = |id: NodeId| reg.get(id).is_some_and(|p| p.online);
            expiry::sweep(&nodes, online, rules, self.started, now)
        };
        let mut out = Swept {
            due: decided.due,
            ..Swept::default()
        };
        // Each chunk commits on its own: one that conflicts (another
        // replica wrote a node of it) is read again at the next tick, the
        // rest stand.
        let cap = self.backend.max_changes_per_commit().max(1);
        for chunk in decided.updates.chunks(cap) {
            let changes: Vec<Change> = chunk
                .iter()
                .map(|(before, after)| Change::UpdateNode {
                    before: Box::new(before.clone()),
                    after: Box::new(after.clone()),
                })
                .collect();
            if let Err(e) = self.commit_node_updates(&changes) {
                tracing::debug!(error = %e.message, "expiry sweep: some updates wait for the next tick");
                continue;
            }
            for (before, after) in chunk {
                match (before.expired_at, after.expired_at) {
                    (None, Some(_)) => out.expired.push(after.id),
                    (Some(_), None) => out.revived.push(after.id),
                    _ => out.refreshed += 1,
                }
            }
        }
        Ok(out)
    }

    pub(super) fn set_expiry(
        &mut self,
        id: NodeId,
        expiry: Option<NodeExpiry>,
        now: u64,
    ) -> Result<NodeRecord, ErrorReply> {
        let nodes = self.backend.load().map_err(internal)?.nodes;
        let Some(before) = nodes.into_iter().find(|n| n.id == id) else {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("no node with id {id}; see the nodes with `weft node list`"),
            ));
        };
        let after = expiry::set_expiry(&before, expiry.unwrap_or(before.expiry), now);
        self.commit_node_updates(&[Change::UpdateNode {
            before: Box::new(before),
            after: Box::new(after.clone()),
        }])?;
        Ok(after)
    }

    /// Commits node record updates as one step (at most what the backend
    /// takes in one commit) and applies them to the registry.
    fn commit_node_updates(&mut self, changes: &[Change]) -> Result<(), ErrorReply> {
        match self.backend.commit(changes) {
            Ok(()) => {
                let at = self.commit_revision();
                self.apply_effects(changes, at);
                Ok(())
            }
            // Another replica (or an admin) changed the node since it was
            // read: the next sweep reads it again.
            Err(CommitError::Conflict { what, .. }) => Err(refuse(
                ErrorCode::BadRequest,
                format!("{what}; the cluster changed while this request was handled, run the command again"),
            )),
            Err(CommitError::Failed(e)) => Err(internal(e)),
        }
    }
}
