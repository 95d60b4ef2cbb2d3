//! Named admin credentials on a real coordinator: made by one credential,
//! recorded on what they change, kept across a restart, and refused once
//! revoked.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use support::*;
use weft_coordinator::admin::{AdminCredential, AdminError};
use weft_proto::msg::{AdminCommand, AdminReply, ErrorCode};

/// A credential `by` makes, named `name`.
async fn create(by: &AdminCredential, name: &str) -> AdminCredential {
    let reply = by
        .request(AdminCommand::AdminCreate { name: name.into() })
        .await
        .unwrap();
    let AdminReply::AdminCreated { info, secret } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(info.name, name);
    assert!(
        !format!("{secret:?}").contains(&secret.0),
        "secrets stay out of Debug"
    );
    AdminCredential {
        secret: secret.0,
        ..by.clone()
    }
}

fn refused(e: AdminError) -> (ErrorCode, String) {
    match e {
        AdminError::Refused { code, message } => (code, message),
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_credentials_are_recorded_kept_and_revoked() {
    let mut h = Harness::start().await;
    let root = AdminCredential::load(&h.admin_path()).unwrap();
    let ci = create(&root, "ci").await;
    ci.request(AdminCommand::AclSet {
        text: "default: allow\n".into(),
    })
    .await
    .unwrap();
    let AdminReply::TokenCreated { info: token, .. } = ci
        .request(AdminCommand::TokenCreate {
            uses: Some(1),
            expires_in_secs: None,
            tags: vec![],
        })
        .await
        .unwrap()
    else {
        panic!("no token")
    };
    assert_eq!(token.created_by, "ci");
    let ops = create(&ci, "ops").await;
    root.request(AdminCommand::AclSet {
        text: "default: allow\nrules: []\n".into(),
    })
    .await
    .unwrap();
    let AdminReply::AclHistory(history) = ops.request(AdminCommand::AclHistory).await.unwrap()
    else {
        panic!("no history")
    };
    let by: Vec<_> = history.iter().map(|v| v.set_by.as_deref()).collect();
    assert_eq!(by, [Some("ci"), Some("root")]);

    // Bad and taken names, and root, are refused with what to do.
    for (name, says) in [
        ("Bad Name", "a-z"),
        ("ci", "exists"),
        ("root", "another name"),
    ] {
        let e = root
            .request(AdminCommand::AdminCreate { name: name.into() })
            .await
            .unwrap_err();
        let (code, msg) = refused(e);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(msg.contains(says), "{name}: {msg}");
    }
    let e = ops
        .request(AdminCommand::AdminRevoke {
            name: "root".into(),
        })
        .await
        .unwrap_err();
    assert!(refused(e).1.contains("cannot be revoked"));

    // Kept across a restart; a revoked one is refused from then on.
    h.restart().await;
    let AdminReply::Admins(list) = ops.request(AdminCommand::AdminList).await.unwrap() else {
        panic!("no list")
    };
    let names: Vec<_> = list
        .iter()
        .map(|a| (a.name.as_str(), a.created_by.as_str()))
        .collect();
    assert_eq!(names, [("ci", "root"), ("ops", "ci")]);
    ops.request(AdminCommand::AdminRevoke { name: "ci".into() })
        .await
        .unwrap();
    let (code, msg) = refused(ci.request(AdminCommand::NodeList).await.unwrap_err());
    assert_eq!(code, ErrorCode::AdminDenied);
    assert!(msg.contains("revoked"), "{msg}");
    assert!(matches!(
        ops.request(AdminCommand::NodeList).await.unwrap(),
        AdminReply::Nodes(_)
    ));
    let AdminReply::Admins(list) = root.request(AdminCommand::AdminList).await.unwrap() else {
        panic!("no list")
    };
    assert!(list[0].revoked_at.is_some() && list[1].revoked_at.is_none());
}
