//! The coordinator's web page in a real browser: headless Chromium, driven
//! over the DevTools protocol, loads the page of a lab cluster through the
//! login link `weft web-url` prints, sees every node and the path matrix,
//! and sees a pair's cell turn from direct to relay within 5 s of the host
//! itself noticing its direct path died (UDP between the two blocked with
//! nftables). Screenshots go to `target/test-artifacts/` (or
//! `$WEFT_ARTIFACTS`). Needs root and Debian's `chromium`; in CI
//! (`CI=true`) a missing one fails instead of skipping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::browser::{artifact_dir, Browser};
use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{require_root, require_tools, wait_for, Lab};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

const WEB: &str = "127.0.0.1:8480";
/// Each agent's read-only page, in its own namespace.
const AGENT_PAGE: &str = "127.0.0.1:9586";

/// The `data-path` of the matrix cell of `from`'s path to `to`.
fn cell_js(from: &str, to: &str) -> String {
    format!(
        "((document.querySelector('td[data-from=\"{from}\"][data-to=\"{to}\"]') || {{dataset: {{}}}}).dataset.path || '')"
    )
}

#[test]
fn the_page_shows_every_node_and_a_path_change_within_5_s() {
    if !require_root() || !require_tools(&["/usr/bin/chromium"], "chromium") {
        return;
    }
    let lab = Lab::new("web");
    let spec = ClusterSpec {
        coordinator_args: &["--web-listen", WEB],
        agent_args: &["--metrics-listen", AGENT_PAGE],
        ..ClusterSpec::hosts_only(3)
    };
    let c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let names: Vec<String> = c.hosts.iter().map(|h| h.name.clone()).collect();
    for (i, _) in names.iter().enumerate() {
        for (j, peer) in names.iter().enumerate() {
            if i != j {
                wait_for(Duration::from_secs(20), "direct paths everywhere", || {
                    (c.path(i, peer)?.0 == "direct").then_some(())
                })
                .expect("routed clouds: direct");
            }
        }
    }

    let admin = c.coordinator_dir.join("admin.json");
    let url = weft_tests::try_run(&[
        &weft().to_string_lossy(),
        "web-url",
        "--admin",
        &admin.to_string_lossy(),
    ])
    .expect("weft web-url")
    .trim()
    .to_string();
    assert!(
        url.starts_with(&format!("http://{WEB}/login?token=")),
        "{url}"
    );

    let browser = Browser::launch(Some(&c.coordinator_ns)).expect("chromium");
    // Without the login, nothing is served.
    browser
        .navigate(&format!("http://{WEB}/"))
        .expect("the page");
    let refused = browser
        .eval("fetch('/api/cluster').then(r => r.status)")
        .expect("fetch");
    assert_eq!(refused, serde_json::json!(401), "served without a session");
    browser.navigate(&url).expect("the login link");
    browser
        .wait_for(
            "document.body.dataset.ready === '1'",
            Duration::from_secs(10),
        )
        .expect("the page renders");
    let where_ = browser
        .eval("location.pathname + location.search")
        .expect("location");
    assert_eq!(
        where_,
        serde_json::json!("/"),
        "the token stays in the address bar"
    );
    for n in &names {
        browser
            .wait_for(
                &format!("!!document.querySelector('tr[data-node=\"{n}\"]')"),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("node {n} not shown: {e}"));
    }
    // A policy and a service appear without a reload.
    let policy = lab.tempdir().join("policy.yaml");
    std::fs::write(
        &policy,
        "default: deny\nrules:\n  - allow: { from: ['*'], to: ['*'] }\n",
    )
    .expect("policy");
    c.admin(&["acl", "set", &policy.to_string_lossy()])
        .expect("acl set");
    c.admin(&[
        "service", "expose", "web", "--node", &names[2], "--port", "80/tcp",
    ])
    .expect("service expose");
    browser
        .wait_for(
            "document.getElementById('policy').innerText.includes('version 1 in force') \
             && document.getElementById('services').innerText.includes('web')",
            Duration::from_secs(5),
        )
        .expect("the policy version and the service are shown");
    let (a, b) = (&names[0], &names[1]);
    browser
        .wait_for(
            &format!("{} === 'direct'", cell_js(a, b)),
            Duration::from_secs(10),
        )
        .expect("the pair is shown direct");
    let dir = artifact_dir();
    browser
        .screenshot(&dir.join("web-direct.png"))
        .expect("screenshot");

    // Cut UDP between the two: the first host's direct path dies after
    // its probes go unanswered, and it falls back to the relay.
    let peer_ip = c.hosts[1].underlay.to_string();
    let ns = &c.hosts[0].ns;
    for rule in [
        vec!["add", "table", "inet", "cut"],
        vec![
            "add", "chain", "inet", "cut", "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ],
        vec![
            "add", "chain", "inet", "cut", "in", "{", "type", "filter", "hook", "input",
            "priority", "0", ";", "}",
        ],
        vec![
            "add", "rule", "inet", "cut", "out", "ip", "daddr", &peer_ip, "meta", "l4proto", "udp",
            "drop",
        ],
        vec![
            "add", "rule", "inet", "cut", "in", "ip", "saddr", &peer_ip, "meta", "l4proto", "udp",
            "drop",
        ],
    ] {
        let mut args = vec!["nft"];
        args.extend(rule);
        let out = lab.exec(ns, &args);
        assert!(out.status.success(), "nft {args:?}: {out:?}");
    }
    let seen_by_host = wait_for(
        Duration::from_secs(30),
        "the host to fall back to the relay",
        || (c.path(0, b)?.0 == "relay").then(Instant::now),
    )
    .expect("relayed once UDP is cut");
    browser
        .wait_for(
            &format!("{} === 'relay'", cell_js(a, b)),
            Duration::from_secs(5),
        )
        .expect("the page shows the relay within 5 s of the host");
    let took = seen_by_host.elapsed();
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let title = browser
        .eval(&format!(
            "document.querySelector('td[data-from=\"{a}\"][data-to=\"{b}\"]').title"
        ))
        .expect("title");
    assert!(
        title.as_str().is_some_and(|t| t.len() > 10),
        "a relayed cell says why: {title}"
    );
    browser
        .screenshot(&dir.join("web-relay.png"))
        .expect("screenshot");
    // One page with no outside requests, and nothing thrown.
    let requests = browser.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with(&format!("http://{WEB}/"))),
        "requests outside the coordinator: {requests:?}"
    );
    assert!(
        browser.page_errors().is_empty(),
        "{:?}",
        browser.page_errors()
    );
    // The first host's own read-only page shows it and its peers, and its
    // side of the cut pair as relayed.
    drop(browser);
    let local = Browser::launch(Some(ns)).expect("chromium in the host");
    local
        .navigate(&format!("http://{AGENT_PAGE}/"))
        .expect("the agent's page");
    local
        .wait_for(
            &format!(
                "document.body.dataset.ready === '1' && {} === 'relay' && {} === 'direct'",
                cell_js(a, b),
                cell_js(a, &names[2])
            ),
            Duration::from_secs(10),
        )
        .expect("the host's page shows its paths");
    let rows = local
        .eval("document.querySelectorAll('tr[data-node]').length")
        .expect("rows");
    assert_eq!(rows, serde_json::json!(3), "itself and its two peers");
    let text = local.eval("document.body.innerText").expect("text");
    assert!(
        text.as_str().is_some_and(|t| t.contains("read-only")),
        "the page says it is one host's view"
    );
    local
        .screenshot(&dir.join("web-agent.png"))
        .expect("screenshot");
    eprintln!(
        "the page showed the relay {took:?} after the host did; screenshots in {}",
        dir.display()
    );
}
