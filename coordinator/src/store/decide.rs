//! What a join, a token revocation or a node removal is allowed to do:
//! pure decisions over the in-memory registry and IPAM, producing the
//! [`Change`]s a backend then applies (or refuses with a conflict, and the
//! batch is decided again).
//!
//! A [`Batch`] carries what the requests decided before in the same batch
//! did (tokens used, subnets taken, names and keys claimed, node ids
//! handed out), so two joins of one batch never get the same name, subnet
//! or id, and a single-use token admits exactly one of them.

use std::collections::{HashMap, HashSet};

use weft_proto::auth::{ct_eq32, secret_hash};
use weft_proto::msg::{ErrorCode, ErrorReply};
use weft_proto::{HostSubnet, NodeId, WgPublicKey};

use super::{refuse, JoinArgs, NodeRecord, Registration, TokenRecord};
use crate::ipam::Ipam;
use crate::names::{sanitize_hostname, unique_name};
use crate::registry::Registry;

/// Whether `token` (as stored, `None` if unknown) admits a join with
/// `secret` at time `now`.
pub fn check_token<'a>(
    token: Option<&'a TokenRecord>,
    secret: &[u8; 32],
    now: u64,
) -> Result<&'a TokenRecord, ErrorReply> {
    let forged = || {
        refuse(
            ErrorCode::TokenInvalid,
            "this coordinator does not recognise the join token (unknown id or wrong secret); check that the whole token was copied, or create a new one with `weft token create`",
        )
    };
    let Some(token) = token else {
        return Err(forged());
    };
    if !ct_eq32(&token.secret_hash, &secret_hash(secret)) {
        return Err(forged());
    }
    if token.revoked {
        return Err(refuse(
            ErrorCode::TokenRevoked,
            format!(
                "join token {} was revoked; create a new one with `weft token create`",
                token.id
            ),
        ));
    }
    if let Some(exp) = token.expires_at {
        if now >= exp {
            return Err(refuse(
                ErrorCode::TokenExpired,
                format!(
                    "join token {} expired at {}; create a new one with `weft token create`",
                    token.id,
                    crate::fmt_time(exp)
                ),
            ));
        }
    }
    if token.uses_left == Some(0) {
        return Err(refuse(
            ErrorCode::TokenUsedUp,
            format!(
                "join token {} is used up (it allowed {} join{}); create a new one with `weft token create`",
                token.id,
                token.used,
                if token.used == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(token)
}

/// The token after one more join.
pub fn use_token(token: &TokenRecord) -> TokenRecord {
    let mut t = token.clone();
    if let Some(n) = t.uses_left.as_mut() {
        *n = n.saturating_sub(1);
    }
    t.used = t.used.saturating_add(1);
    t
}

/// The decisions of one batch so far.
#[derive(Debug)]
pub struct Batch {
    /// Each token a request of the batch names, as read at the start of the
    /// batch and then as the batch's decisions left it (`None`: unknown).
    tokens: HashMap<String, Option<TokenRecord>>,
    next_node_id: u64,
    keys: HashSet<WgPublicKey>,
    names: HashSet<String>,
    allocated: Vec<HostSubnet>,
    removed: HashSet<NodeId>,
}

impl Batch {
    /// A batch that starts from `tokens` (read from the backend now) and
    /// the node id counter.
    pub fn new(tokens: HashMap<String, Option<TokenRecord>>, next_node_id: u64) -> Self {
        Self {
            tokens,
            next_node_id,
            keys: HashSet::new(),
            names: HashSet::new(),
            allocated: Vec::new(),
            removed: HashSet::new(),
        }
    }

    /// The counter after this batch's joins.
    pub fn next_node_id(&self) -> u64 {
        self.next_node_id
    }

    /// Subnets this batch took from `ipam`; to be released if the batch is
    /// not committed.
    pub fn allocated(&self) -> &[HostSubnet] {
        &self.allocated
    }

    /// Decides one join against the registry, the IPAM and the batch so far.
    pub fn join(
        &mut self,
        args: &JoinArgs,
        reg: &Registry,
        ipam: &mut Ipam,
    ) -> Result<Registration, ErrorReply> {
        let stored = self.tokens.get(&args.token_id).and_then(Option::as_ref);
        let token_before = check_token(stored, &args.token_secret, args.now)?.clone();
        // Names are compared after normalisation, against every node and
        // every join of this batch.
        // A host whose node expired may join again with its old key: the
        // expired node is removed in the same step, and its name is free
        // for the new one.
        let replaces = reg
            .retired_by_key(&args.public_key)
            .filter(|id| !self.removed.contains(id));
        let name = unique_name(&sanitize_hostname(&args.hostname), |n| {
            let own_old = replaces.is_some() && reg.retired_by_name(n) == replaces;
            (reg.name_taken(n) && !own_old) || self.names.contains(n)
        });
        if let Some(owner) = reg.by_key(&args.public_key) {
            return Err(refuse(
                ErrorCode::KeyInUse,
                format!("this WireGuard key is already registered as node {owner}; reconnect instead of joining, or remove the node with `weft node remove {owner}` first"),
            ));
        }
        if self.keys.contains(&args.public_key) {
            return Err(refuse(
                ErrorCode::KeyInUse,
                "this WireGuard key is joining twice at once; wait for the first join to finish",
            ));
        }
        // It keeps its old subnet (still reserved in the IPAM, and moved to
        // the new node when the batch commits).
        let kept = replaces
            .and_then(|old| reg.retired(old))
            .map(|r| r.peer.subnet);
        let Some(subnet) = kept.or_else(|| ipam.allocate()) else {
            return Err(refuse(
                ErrorCode::PoolExhausted,
                format!(
                    "the address pool {} is exhausted (all {} host subnets are taken); remove unused nodes with `weft node remove`, or restart the coordinator with a larger --pool",
                    ipam.pool(),
                    ipam.capacity()
                ),
            ));
        };
        match replaces {
            Some(old) => {
                self.removed.insert(old);
            }
            None => self.allocated.push(subnet),
        }
        self.keys.insert(args.public_key);
        self.names.insert(name.clone());
        let id = NodeId(self.next_node_id);
        self.next_node_id += 1;
        let token_after = use_token(&token_before);
        self.tokens
            .insert(token_after.id.clone(), Some(token_after.clone()));
        Ok(Registration {
            node: NodeRecord {
                id,
                name,
                public_key: args.public_key,
                subnet,
                tags: token_before.tags.clone(),
                created_at: args.now,
                token_id: token_before.id.clone(),
                last_seen: args.now,
                expiry: weft_proto::msg::NodeExpiry::Cluster,
                expired_at: None,
            },
            replaces,
            token_before,
            token_after,
        })
    }

    /// Decides a node removal: the node must be registered and not removed
    /// earlier in this batch (an admin and the host leaving at once).
    /// With `expired_only`, only an expired node (see [`crate::expiry`]).
    pub fn remove_node(
        &mut self,
        reg: &Registry,
        id: NodeId,
        expired_only: bool,
    ) -> Result<(), ErrorReply> {
        if expired_only && reg.retired(id).is_none() {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("node {id} is no longer expired; it stays"),
            ));
        }
        let known = reg.get(id).is_some() || reg.retired(id).is_some();
        if !known || !self.removed.insert(id) {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("no node with id {id}; see the nodes with `weft node list`"),
            ));
        }
        Ok(())
    }

    /// A new token; later requests of the batch see it.
    pub fn create_token(&mut self, rec: &TokenRecord) {
        self.tokens.insert(rec.id.clone(), Some(rec.clone()));
    }

    /// Decides a revocation: the token as it is and as it will be.
    pub fn revoke(&mut self, id: &str) -> Result<(TokenRecord, TokenRecord), ErrorReply> {
        let Some(before) = self.tokens.get(id).and_then(Option::as_ref).cloned() else {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("no token with id {id}; see the ids with `weft token list`"),
            ));
        };
        let after = TokenRecord {
            revoked: true,
            ..before.clone()
        };
        self.tokens.insert(id.to_string(), Some(after.clone()));
        Ok((before, after))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn token(uses: Option<u32>) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            secret_hash: secret_hash(&[7; 32]),
            uses_left: uses,
            used: 0,
            created_at: 10,
            expires_at: Some(100),
            revoked: false,
            tags: vec!["db".into()],
            created_by: String::new(),
        }
    }

    fn args(key: u8, name: &str) -> JoinArgs {
        JoinArgs {
            token_id: "t1".into(),
            token_secret: [7; 32],
            public_key: WgPublicKey([key; 32]),
            hostname: name.into(),
            now: 50,
        }
    }

    fn batch(t: Option<TokenRecord>, next: u64) -> Batch {
        Batch::new(HashMap::from([("t1".to_string(), t)]), next)
    }

    fn ipam() -> Ipam {
        Ipam::new("10.0.0.0/28".parse().unwrap(), 30).unwrap()
    }

    #[test]
    fn token_checks_in_order() {
        let t = token(Some(1));
        let code = |t: Option<&TokenRecord>, secret: [u8; 32], now| {
            check_token(t, &secret, now).map(|_| ()).unwrap_err().code
        };
        assert_eq!(code(None, [7; 32], 0), ErrorCode::TokenInvalid);
        assert_eq!(code(Some(&t), [8; 32], 0), ErrorCode::TokenInvalid);
        let revoked = TokenRecord {
            revoked: true,
            ..t.clone()
        };
        assert_eq!(code(Some(&revoked), [7; 32], 0), ErrorCode::TokenRevoked);
        assert_eq!(code(Some(&t), [7; 32], 100), ErrorCode::TokenExpired);
        let used = use_token(&t);
        assert_eq!((used.uses_left, used.used), (Some(0), 1));
        assert_eq!(code(Some(&used), [7; 32], 0), ErrorCode::TokenUsedUp);
        assert!(check_token(Some(&t), &[7; 32], 99).is_ok());
        let unlimited = use_token(&token(None));
        assert_eq!((unlimited.uses_left, unlimited.used), (None, 1));
    }

    #[test]
    fn a_single_use_token_admits_one_join_of_a_batch() {
        let reg = Registry::new(1);
        let mut ipam = ipam();
        let mut b = batch(Some(token(Some(1))), 5);
        let first = b.join(&args(1, "a"), &reg, &mut ipam).unwrap();
        assert_eq!(first.node.id, NodeId(5));
        assert_eq!(first.node.tags, vec!["db".to_string()]);
        assert_eq!(first.token_before.uses_left, Some(1));
        assert_eq!(first.token_after.uses_left, Some(0));
        let e = b.join(&args(2, "b"), &reg, &mut ipam).unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenUsedUp);
        assert_eq!(b.next_node_id(), 6);
        assert_eq!(b.allocated().len(), 1);
    }

    #[test]
    fn joins_of_a_batch_get_distinct_names_subnets_and_ids() {
        let mut reg = Registry::new(1);
        let mut ipam = ipam();
        let old = NodeRecord {
            id: NodeId(1),
            name: "web".into(),
            public_key: WgPublicKey([9; 32]),
            subnet: ipam.allocate().unwrap(),
            tags: vec![],
            created_at: 0,
            token_id: String::new(),
            last_seen: 0,
            expiry: weft_proto::msg::NodeExpiry::Cluster,
            expired_at: None,
        };
        reg.load(old.to_peer(), 0);
        let mut b = batch(Some(token(None)), 2);
        let x = b.join(&args(1, "web"), &reg, &mut ipam).unwrap();
        let y = b.join(&args(2, "web"), &reg, &mut ipam).unwrap();
        assert_ne!(x.node.name, "web");
        assert_ne!(x.node.name, y.node.name);
        assert_ne!(x.node.subnet, y.node.subnet);
        assert_ne!(x.node.subnet, old.subnet);
        assert_eq!((x.node.id, y.node.id), (NodeId(2), NodeId(3)));
        // The second join expects the token as the first left it.
        assert_eq!(y.token_before, x.token_after);
        assert_eq!(y.token_after.used, 2);
        // A key already registered, or joining twice in one batch.
        let e = b.join(&args(9, "z"), &reg, &mut ipam).unwrap_err();
        assert_eq!(e.code, ErrorCode::KeyInUse);
        let e = b.join(&args(1, "z"), &reg, &mut ipam).unwrap_err();
        assert_eq!(e.code, ErrorCode::KeyInUse);
        // Four /30s in a /28: one old, two new, one left, then exhausted.
        b.join(&args(3, "c"), &reg, &mut ipam).unwrap();
        let e = b.join(&args(4, "d"), &reg, &mut ipam).unwrap_err();
        assert_eq!(e.code, ErrorCode::PoolExhausted);
        assert_eq!(b.allocated().len(), 3);
    }

    #[test]
    fn revocation_sees_the_batch_and_unknown_ids_are_refused() {
        let reg = Registry::new(1);
        let mut ipam = ipam();
        let mut b = batch(Some(token(None)), 1);
        let j = b.join(&args(1, "a"), &reg, &mut ipam).unwrap();
        let (before, after) = b.revoke("t1").unwrap();
        assert_eq!(before, j.token_after);
        assert!(after.revoked);
        let e = b.join(&args(2, "b"), &reg, &mut ipam).unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenRevoked);
        assert_eq!(b.revoke("nope").unwrap_err().code, ErrorCode::NotFound);
        let mut fresh = token(Some(1));
        fresh.id = "t2".into();
        b.create_token(&fresh);
        assert!(b.revoke("t2").is_ok());
        assert_eq!(
            b.remove_node(&reg, NodeId(1), false).unwrap_err().code,
            ErrorCode::NotFound
        );
        let mut reg = reg;
        reg.load(j.node.to_peer(), 0);
        let still = b.remove_node(&reg, j.node.id, true).unwrap_err();
        assert_eq!(still.code, ErrorCode::NotFound, "not expired: it stays");
        assert!(b.remove_node(&reg, j.node.id, false).is_ok());
        assert_eq!(
            b.remove_node(&reg, j.node.id, false).unwrap_err().code,
            ErrorCode::NotFound,
            "removed twice in one batch"
        );
    }
}
