//! IPAM: hands each host a subnet of the cluster pool.
//!
//! Pure bookkeeping over subnet indices: index `i` is the `i`-th subnet of the
//! pool. Fresh indices are used first, so a released subnet is not handed out
//! again until the pool has no fresh ones left (peers' stale routes age out).
//! The store rebuilds an `Ipam` from the registered nodes at start.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_proto::HostSubnet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("host subnet prefix /{subnet} must be between the pool prefix /{pool} and /30; pass a different --subnet-prefix")]
    BadPrefix { pool: u8, subnet: u8 },
    #[error("subnet {0} is not a /{1} inside the pool {2}")]
    OutsidePool(HostSubnet, u8, Ipv4Net),
    #[error("subnet {0} is already in use")]
    InUse(HostSubnet),
}

/// Subnet allocation state for one pool.
#[derive(Debug, Clone)]
pub struct Ipam {
    pool: Ipv4Net,
    subnet_prefix: u8,
    capacity: u64,
    next_fresh: u64,
    used: BTreeSet<u64>,
    free: BTreeSet<u64>,
}

impl Ipam {
    pub fn new(pool: Ipv4Net, subnet_prefix: u8) -> Result<Self, IpamError> {
        let pool = pool.trunc();
        if subnet_prefix < pool.prefix_len() || subnet_prefix > 30 {
            return Err(IpamError::BadPrefix {
                pool: pool.prefix_len(),
                subnet: subnet_prefix,
            });
        }
        Ok(Self {
            pool,
            subnet_prefix,
            capacity: 1u64 << (subnet_prefix - pool.prefix_len()),
            next_fresh: 0,
            used: BTreeSet::new(),
            free: BTreeSet::new(),
        })
    }

    pub fn pool(&self) -> Ipv4Net {
        self.pool
    }

    /// The pool as a [`HostSubnet`] (for the welcome message).
    pub fn pool_subnet(&self) -> HostSubnet {
        HostSubnet {
            addr: self.pool.network(),
            prefix_len: self.pool.prefix_len(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    fn subnet(&self, index: u64) -> HostSubnet {
        let size = 1u64 << (32 - self.subnet_prefix);
        let addr = u64::from(u32::from(self.pool.network())) + index * size;
        HostSubnet {
            addr: Ipv4Addr::from(addr as u32),
            prefix_len: self.subnet_prefix,
        }
    }

    fn index(&self, subnet: HostSubnet) -> Result<u64, IpamError> {
        let err = || IpamError::OutsidePool(subnet, self.subnet_prefix, self.pool);
        if subnet.prefix_len != self.subnet_prefix || !self.pool.contains(&subnet.addr) {
            return Err(err());
        }
        let offset = u64::from(u32::from(subnet.addr) - u32::from(self.pool.network()));
        let size = 1u64 << (32 - self.subnet_prefix);
        if offset % size != 0 {
            return Err(err());
        }
        Ok(offset / size)
    }

    /// Takes a free subnet, or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<HostSubnet> {
        while self.next_fresh < self.capacity {
            let i = self.next_fresh;
            self.next_fresh += 1;
            if self.used.insert(i) {
                return Some(self.subnet(i));
            }
        }
        let i = self.free.pop_first()?;
        self.used.insert(i);
        Some(self.subnet(i))
    }

    /// Marks a subnet that is already registered as taken.
    pub fn reserve(&mut self, subnet: HostSubnet) -> Result<(), IpamError> {
        let i = self.index(subnet)?;
        if !self.used.insert(i) {
            return Err(IpamError::InUse(subnet));
        }
        self.free.remove(&i);
        Ok(())
    }

    /// Returns a subnet to the pool. Releasing a subnet not in use is a no-op.
    pub fn release(&mut self, subnet: HostSubnet) {
        if let Ok(i) = self.index(subnet) {
            if self.used.remove(&i) && i < self.next_fresh {
                self.free.insert(i);
            }
        }
    }

    /// Recomputes fresh and free indices after a batch of `reserve` calls at
    /// start: everything below the highest used index that is not used is
    /// free.
    pub fn settle(&mut self) {
        self.next_fresh = self.used.last().map_or(0, |m| m + 1);
        self.free = (0..self.next_fresh)
            .filter(|i| !self.used.contains(i))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_and_exhaustion() {
        let mut ipam = Ipam::new("100.64.0.0/10".parse().unwrap(), 24).unwrap();
        assert_eq!(ipam.capacity(), 16384);
        assert_eq!(ipam.allocate().unwrap().to_string(), "100.64.0.0/24");
        assert_eq!(ipam.allocate().unwrap().to_string(), "100.64.1.0/24");
        let mut small = Ipam::new("10.0.0.0/29".parse().unwrap(), 30).unwrap();
        assert!(small.allocate().is_some());
        assert!(small.allocate().is_some());
        assert!(small.allocate().is_none());
        assert!(Ipam::new("10.0.0.0/24".parse().unwrap(), 16).is_err());
        assert!(Ipam::new("10.0.0.0/24".parse().unwrap(), 31).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join,
        Remove(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Join),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Under any join/remove/restart sequence no subnet is held by two
        /// live nodes, and a join fails only when every subnet is live.
        #[test]
        fn never_hands_one_subnet_to_two_live_nodes(ops in proptest::collection::vec(op(), 1..200)) {
            let pool: Ipv4Net = "10.1.0.0/26".parse().unwrap();
            let mut ipam = Ipam::new(pool, 29).unwrap();
            let mut live: Vec<HostSubnet> = Vec::new();
            for op in ops {
                match op {
                    Op::Join => match ipam.allocate() {
                        Some(s) => {
                            prop_assert!(live.iter().all(|l| !l.overlaps(&s)), "{s} given twice");
                            prop_assert!(pool.contains(&s.addr));
                            live.push(s);
                        }
                        None => prop_assert_eq!(live.len() as u64, ipam.capacity()),
                    },
                    Op::Remove(i) => {
                        if !live.is_empty() {
                            let s = live.swap_remove(i % live.len());
                            ipam.release(s);
                        }
                    }
                    Op::Restart => {
                        ipam = Ipam::new(pool, 29).unwrap();
                        for s in &live {
                            ipam.reserve(*s).unwrap();
                        }
                        ipam.settle();
                    }
                }
                prop_assert_eq!(ipam.in_use(), live.len());
            }
        }
    }
}
