//! `weft wg IFACE`: a bare WireGuard interface in the foreground, configured
//! entirely through the stock `wg` tool, the way `wireguard-go -f` runs.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use weft_mesh::dataplane::{CounterSnapshot, Device, DeviceHandle, DeviceOptions, DEFAULT_MTU};
use weft_mesh::uapi::server::{UapiServer, SOCKET_DIR};

#[derive(Args, Debug)]
pub struct WgArgs {
    /// Name of the TUN interface to create (e.g. wg0).
    pub interface: String,

    /// MTU of the interface.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,

    /// Directory of the UAPI socket that `wg` talks to.
    #[arg(long, default_value = SOCKET_DIR, env = "WEFT_UAPI_DIR")]
    pub socket_dir: PathBuf,

    /// Disable TUN segmentation offloads (for debugging or old kernels).
    #[arg(long)]
    pub no_offload: bool,

    /// Enforce a compiled inbound packet filter (JSON, the `filter` of a
    /// netmap update), for benchmarks and debugging: cluster hosts get
    /// theirs from the coordinator.
    #[arg(long, value_name = "FILE", hide = true)]
    pub filter_json: Option<PathBuf>,

    /// Serve Prometheus metrics (wire traffic by path, drops by reason) on
    /// http://ADDR/metrics. Off by default, and then the per-path counters
    /// are off too (the data-plane benchmark measures the difference).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub fn run(args: WgArgs) -> anyhow::Result<()> {
    let mut opts = DeviceOptions::new(&args.interface);
    opts.mtu = args.mtu;
    opts.offload = !args.no_offload;
    opts.path_counters = args.metrics_listen.is_some();
    let filter = match &args.filter_json {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let f: weft_proto::policy::PacketFilter = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a packet filter", path.display()))?;
            Some(f)
        }
        None => None,
    };
    let device = Device::start(&opts)?;
    if let Some(f) = filter {
        tracing::info!(rules = f.rules.len(), default = %f.default, "inbound packet filter in force");
        device.handle().set_filter(Some(&f));
    }
    let _metrics = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, device.handle())?),
        None => None,
    };
    let uapi = UapiServer::start(&args.socket_dir, device.handle())?;
    tracing::info!(
        interface = %args.interface,
        socket = %uapi.path().display(),
        "ready; configure with `wg set {}` or `wg setconf {} FILE`",
        args.interface,
        args.interface
    );

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let handle = device.handle();
    let (stop_reports, stopped) = mpsc::channel::<()>();
    let reporter = {
        let handle = handle.clone();
        std::thread::Builder::new()
            .name("counters".into())
            .spawn(move || report_counters(&handle, &stopped))
            .context("cannot start counter reporter thread")?
    };
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    drop(stop_reports);
    let _ = reporter.join();
    drop(uapi);
    drop(device);
    log_counters(&handle.counters(), "final counters");
    Ok(())
}

/// Serves the device's metrics on `addr` from a thread of its own (the
/// packet threads never see it); stops with the process.
fn serve_metrics(
    addr: std::net::SocketAddr,
    handle: DeviceHandle,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the metrics runtime")?;
    let scrape: weft_mesh::agent::metrics_http::Scrape = std::sync::Arc::new(move || {
        weft_mesh::agent::metrics::render_device(&handle.traffic(), &handle.counters())
    });
    let (_, task) = rt
        .block_on(weft_mesh::agent::metrics_http::serve(addr, scrape, None))
        .with_context(|| {
            format!("cannot serve metrics on {addr}; pick another --metrics-listen")
        })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let _ = rt.block_on(task);
        })
        .context("cannot start the metrics thread")
}

/// How often changed drop counters reach the log, so junk at the UDP port
/// is visible without flooding it.
const COUNTER_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Logs the drop counters every [`COUNTER_REPORT_INTERVAL`] while they
/// change, until `stop` is dropped.
fn report_counters(handle: &DeviceHandle, stop: &mpsc::Receiver<()>) {
    let mut last = handle.counters();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(COUNTER_REPORT_INTERVAL) {
        let now = handle.counters();
        if now != last {
            log_counters(&now, "drops");
            last = now;
        }
    }
}

fn log_counters(c: &CounterSnapshot, what: &str) {
    tracing::info!(
        tx_no_route = c.tx_no_route,
        tx_no_endpoint = c.tx_no_endpoint,
        tx_malformed = c.tx_malformed,
        tx_send_errors = c.tx_send_errors,
        rx_invalid = c.rx_invalid,
        rx_unknown_peer = c.rx_unknown_peer,
        rx_src_not_allowed = c.rx_src_not_allowed,
        rx_dst_not_local = c.rx_dst_not_local,
        cookies_sent = c.cookies_sent,
        "{what}"
    );
}
