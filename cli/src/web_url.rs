//! `weft web-url`: the login link of the coordinator's web page.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use weft_coordinator::admin::AdminCredential;

#[derive(Args, Debug)]
pub struct WebUrlArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long)]
    admin: Option<PathBuf>,
    /// HOST:PORT the browser reaches the page at (default: the coordinator's
    /// --web-listen address, from the admin credential). Use it behind a
    /// tunnel or proxy: `ssh -L 8080:127.0.0.1:8080 coordinator`, then
    /// `--addr 127.0.0.1:8080`.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
}

/// The link for `cred`, to `addr` or the address it names.
pub fn url(cred: &AdminCredential, addr: Option<&str>) -> anyhow::Result<String> {
    let addr = match addr.or(cred.web.as_deref()) {
        Some(a) => a,
        None => anyhow::bail!(
            "the coordinator does not serve the web page; start it with --web-listen 127.0.0.1:8080 \
             (or another address), then run this again"
        ),
    };
    let mut secret = [0u8; 32];
    hex::decode_to_slice(cred.secret.trim(), &mut secret)
        .context("the admin credential's secret is not 64 hex digits; use the admin.json the coordinator wrote")?;
    let key = weft_proto::auth::secret_hash(&secret);
    Ok(format!(
        "http://{addr}/login?token={}",
        weft_coordinator::web::auth::login_token(&key)
    ))
}

#[expect(clippy::print_stdout, reason = "the CLI prints its result")]
pub fn run(args: WebUrlArgs) -> anyhow::Result<()> {
    let path = AdminCredential::locate(args.admin.as_deref());
    let cred = AdminCredential::load(&path)?;
    println!("{}", url(&cred, args.addr.as_deref())?);
    Ok(())
}
