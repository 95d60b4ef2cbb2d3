//! The access policy: test a document against the live cluster, put it in
//! force as the next version, list the versions.

use super::*;

/// Parses a document and runs its tests against the live cluster.
fn check_policy(shared: &Shared, text: &str) -> Result<(Policy, usize), ErrorReply> {
    let policy = Policy::parse(text).map_err(|e| {
        let n = e.0.len();
        bad(format!(
            "the policy has {n} problem{}; nothing was changed:\n{e}",
            if n == 1 { "" } else { "s" }
        ))
    })?;
    // As the cluster will be once this document is in force: it pins every
    // name to the node that has it now, so no name is shadowed.
    let cluster = {
        let mut cfg = shared.cluster().clone();
        cfg.policy = None;
        let reg = shared.read();
        cluster::snapshot(&reg, &cfg)
    };
    let failures = run_tests(&policy, &cluster);
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        return Err(bad(format!(
            "{} of the policy's {} tests failed; the policy in force was kept:\n{}",
            failures.len(),
            policy.tests.len(),
            list.join("\n")
        )));
    }
    let tests = policy.tests.len();
    Ok((policy, tests))
}

pub(in crate::server) fn acl_get(shared: &Shared) -> AdminReply {
    AdminReply::Acl(shared.cluster().policy.as_ref().map(|(v, _)| v.clone()))
}

pub(in crate::server) fn acl_test(shared: &Shared, text: &str) -> Result<AdminReply, ErrorReply> {
    let (_, tests) = check_policy(shared, text)?;
    Ok(AdminReply::AclAccepted { version: 0, tests })
}

pub(in crate::server) async fn acl_set(
    shared: &Shared,
    text: String,
    by: &str,
) -> Result<AdminReply, ErrorReply> {
    let _change = shared.config_change.lock().await;
    let (policy, tests) = check_policy(shared, &text)?;
    let version = shared
        .cluster()
        .policy
        .as_ref()
        .map_or(1, |(v, _)| v.version + 1);
    // Every host name in use now means the node that has it now.
    let hosts = shared
        .read()
        .peers()
        .map(|p| (p.name.clone(), p.id))
        .collect();
    let record = AclVersion {
        version,
        set_at: now_unix(),
        text,
        hosts,
        set_by: Some(by.to_string()),
    };
    // The store refuses the version if another change took it meanwhile.
    shared
        .store
        .write(vec![ConfigChange::PutPolicy(record.clone())])
        .await?;
    shared.cluster_mut().policy = Some((record, policy));
    // `routes:` may approve (or stop approving) advertised routes.
    {
        // Lock order: configuration, then registry.
        let cfg = shared.cluster();
        cluster::refresh_routes(&mut shared.write(), &cfg);
    }
    shared.reconfigure();
    info!(version, tests, "policy set");
    Ok(AdminReply::AclAccepted { version, tests })
}

pub(in crate::server) async fn acl_history(shared: &Shared) -> Result<AdminReply, ErrorReply> {
    Ok(AdminReply::AclHistory(shared.store.policy_history().await?))
}
