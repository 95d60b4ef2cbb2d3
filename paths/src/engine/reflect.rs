//! The reflector: this host's public mapping, asked of the coordinator's
//! two reflector ports in turn.

use std::net::SocketAddr;
use std::time::Instant;

use weft_proto::disco::{DiscoMsg, TxId};

use super::{PathEngine, PENDING_TTL, REFLECT_RETRY};
use crate::netcheck::reflectors;
use crate::{Dest, Event, Transmit};

impl PathEngine {
    pub(super) fn reflect(&mut self, now: Instant) {
        self.last_reflect = Some(now);
        self.reflect_to(0, now);
    }

    /// Asks reflector `which`; the second is asked once the first answers
    /// (two first packets racing through a NAT can get two mappings even
    /// where it maps endpoint-independently).
    pub(super) fn reflect_to(&mut self, which: usize, now: Instant) {
        let Some(coord) = self.coordinator else {
            return;
        };
        let Some(r) = reflectors(coord).get(which).copied() else {
            return;
        };
        self.reflect_pending
            .retain(|_, (_, t)| now.duration_since(*t) < PENDING_TTL);
        let txid = self.txid();
        self.reflect_pending.insert(txid, (which, now));
        let wait = match self.reflect_waiting {
            Some((w, _, wait)) if w == which => wait,
            _ => REFLECT_RETRY,
        };
        self.reflect_waiting = Some((which, now, wait));
        self.transmits.push_back(Transmit {
            dest: Dest::Addr(r),
            payload: DiscoMsg::ReflectRequest { txid }.encode(None),
        });
    }

    /// Reflector `txid` saw this host's socket as `observed`.
    pub(super) fn on_reflect_reply(&mut self, txid: TxId, observed: SocketAddr, now: Instant) {
        let Some((which, _)) = self.reflect_pending.remove(&txid) else {
            return;
        };
        if self.reflect_waiting.is_some_and(|(w, _, _)| w == which) {
            self.reflect_waiting = None;
        }
        let before = self.netcheck.clone();
        self.netcheck.udp = true;
        if which == 0 {
            self.netcheck.public = Some(observed);
            if before.public != Some(observed) {
                self.events.push_back(Event::PublicMapping(observed));
            }
            self.reflect_to(1, now);
        } else {
            self.netcheck.public_second = Some(observed);
        }
        if self.netcheck != before {
            self.events
                .push_back(Event::Netcheck(self.netcheck.clone()));
        }
    }
}
