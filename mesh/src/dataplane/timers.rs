//! Drives boringtun's timers for every peer: handshake retries, rekeys,
//! keepalives, persistent keepalives and session expiry. boringtun expects
//! `update_timers` about every 250 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;

use super::wake::{self, Ready};
use super::Shared;

const TICK: Duration = Duration::from_millis(250);

pub(super) fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    let mut last_tick = Instant::now();
    let mut kicks_left = false;
    loop {
        let wait = if kicks_left {
            super::kick::ROUND
        } else {
            TICK.saturating_sub(last_tick.elapsed())
        };
        match wake::wait(
            None,
            0,
            &[&shared.stop, &shared.kicks.wake],
            wait.as_millis() as i32,
        ) {
            Ok(Ready::Woken(0)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "timer wait failed; timers stopped");
                return;
            }
        }
        kicks_left = shared
            .kicks
            .send_round(&shared, &shared.udp.load(), &mut buf);
        if last_tick.elapsed() < TICK {
            continue;
        }
        last_tick = Instant::now();
        let table = shared.table.load();
        if last_reset.elapsed() >= Duration::from_secs(1) {
            if let Some(l) = &table.rate_limiter {
                l.reset_count();
            }
            last_reset = Instant::now();
        }
        let udp = shared.udp.load();
        for peer in table.peers.values() {
            let mut st = peer.state();
            let endpoint = st.endpoint;
            let Some(tunn) = st.tunn.as_mut() else {
                continue;
            };
            let out = match tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(p) => p.len(),
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.public_key.to_base64(), error = ?e, "timer");
                    0
                }
                _ => 0,
            };
            drop(st);
            if out > 0 {
                if let Some(ep) = endpoint {
                    peer.add_tx(out, &shared.traffic);
                    if shared.send_wire(&udp, ep, &buf[..out], None).is_err() {
                        super::bump(&shared.counters.tx_send_errors);
                    }
                }
            }
        }
    }
}
