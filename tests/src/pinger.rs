//! A ping running in the background, with the time of every reply, to
//! measure how long a restart or a renumbering cut a path off.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Lab, Proc};

/// `ping -D -O` at a fixed interval from a namespace; stopped at teardown.
pub struct Pinger {
    proc: Proc,
    interval: Duration,
}

impl Pinger {
    /// Pings `target` from `ns` every `interval` (at least 10 ms) until
    /// the lab is torn down or [`Pinger::stop`] is called.
    pub fn start(lab: &Lab, ns: &str, target: &str, interval: Duration) -> Pinger {
        let i = format!("{:.3}", interval.as_secs_f64().max(0.01));
        // Line-buffered: ping writes to a file, which it would buffer whole.
        let proc = lab.spawn(
            ns,
            "stdbuf",
            &["-oL", "ping", "-D", "-O", "-n", "-i", &i, "-W", "1", target],
            &[],
        );
        Pinger { proc, interval }
    }

    /// Unix times (seconds) of the replies so far.
    pub fn replies(&self) -> Vec<f64> {
        reply_times(&self.proc.stdout())
    }

    /// The first reply at or after unix time `after`.
    pub fn first_reply_after(&self, after: f64) -> Option<f64> {
        self.replies().into_iter().find(|t| *t >= after)
    }

    /// Waits up to `timeout` for a reply at or after `after`; seconds from
    /// `after` to it.
    pub fn wait_reply_after(&self, after: f64, timeout: Duration) -> Option<f64> {
        crate::wait_for(timeout, "a ping reply", || self.first_reply_after(after))
            .ok()
            .map(|t| t - after)
    }

    /// The replies received between unix times `from` and `to`, against
    /// the number of requests sent in that time.
    pub fn delivery(&self, from: f64, to: f64) -> (usize, usize) {
        let got = self
            .replies()
            .into_iter()
            .filter(|t| *t >= from && *t < to)
            .count();
        let sent = ((to - from) / self.interval.as_secs_f64()).floor() as usize;
        (got, sent)
    }

    pub fn stop(&self) {
        self.proc.stop();
    }
}

/// Now, in unix seconds (the clock `ping -D` prints).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `[1764578000.123456]` stamps of the reply lines of `ping -D`.
pub fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let stamp = l.strip_prefix('[')?.split(']').next()?;
            stamp.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_stamps_are_read_and_other_lines_skipped() {
        let out = "PING 100.64.1.1 (100.64.1.1) 56(84) bytes of data.\n\
                   [1764578000.100000] 64 bytes from 100.64.1.1: icmp_seq=1 ttl=64 time=0.4 ms\n\
                   [1764578000.300000] no answer yet for icmp_seq=2\n\
                   [1764578000.500000] 64 bytes from 100.64.1.1: icmp_seq=3 ttl=64 time=0.3 ms\n";
        assert_eq!(reply_times(out), vec![1764578000.1, 1764578000.5]);
    }
}
