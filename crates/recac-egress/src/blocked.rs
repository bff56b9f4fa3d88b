//! What the proxy refused, per client address, so that a task can say what its agent was
//! denied (the operator asks the proxy's `/blocked` from the agent's pod at the end of a run, or
//! the agent asks itself).
//!
//! Only the client itself ever sees its list, and a list belongs to one client *name*: pod IPs
//! are reused, so when an address turns up under a different name ([`BlockedLog::claim`]), what
//! the previous owner was refused is dropped rather than shown to the new one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use recac_api::egress::BlockedHost;

/// Distinct destinations kept per client; refusals beyond them are counted in
/// [`BlockedLog::total`] only, so that a client probing many names cannot grow the proxy's
/// memory without bound.
pub const MAX_HOSTS_PER_CLIENT: usize = 512;
/// Longest host name kept (longer ones are cut): a DNS name is at most 253 characters.
const MAX_HOST_LEN: usize = 255;

/// Blocked destinations per client address, counted.
#[derive(Default)]
pub struct BlockedLog {
    clients: Mutex<HashMap<IpAddr, ClientLog>>,
    total: AtomicU64,
}

#[derive(Default)]
struct ClientLog {
    /// The client name the entries belong to; `None` until claimed.
    owner: Option<String>,
    refused: BTreeMap<(String, u16), u64>,
}

impl BlockedLog {
    /// Counts one refused connection or request from `client` to `host:port`. Names are kept
    /// lower case without a trailing dot.
    pub fn record(&self, client: IpAddr, host: &str, port: u16) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.len() > MAX_HOST_LEN {
            let mut cut = MAX_HOST_LEN;
            while !host.is_char_boundary(cut) {
                cut -= 1;
            }
            host.truncate(cut);
        }
        let mut clients = self.lock();
        let log = clients.entry(client.to_canonical()).or_default();
        let key = (host, port);
        if let Some(count) = log.refused.get_mut(&key) {
            *count += 1;
        } else if log.refused.len() < MAX_HOSTS_PER_CLIENT {
            log.refused.insert(key, 1);
        }
    }

    /// What `client` was refused, sorted by host then port.
    pub fn for_client(&self, client: IpAddr) -> Vec<BlockedHost> {
        self.lock()
            .get(&client.to_canonical())
            .map(|log| {
                log.refused
                    .iter()
                    .map(|((host, port), count)| BlockedHost {
                        host: host.clone(),
                        port: *port,
                        count: *count,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Refusals counted since the proxy started, for every client.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Drops what `client` was refused (its pod is gone).
    pub fn forget(&self, client: IpAddr) {
        self.lock().remove(&client.to_canonical());
    }

    /// Marks `client`'s entries as belonging to `owner`; entries recorded under a different
    /// owner (the address's previous pod) are dropped first.
    pub fn claim(&self, client: IpAddr, owner: &str) {
        let mut clients = self.lock();
        let log = clients.entry(client.to_canonical()).or_default();
        if log.owner.as_deref() != Some(owner) {
            if log.owner.is_some() {
                log.refused.clear();
            }
            log.owner = Some(owner.to_string());
        }
    }

    /// The map, even if a thread panicked while holding it: every update leaves it consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, ClientLog>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const POD_B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn blocked(host: &str, port: u16, count: u64) -> BlockedHost {
        BlockedHost {
            host: host.to_string(),
            port,
            count,
        }
    }

    #[test]
    fn counts_per_client_sorted_and_separate() {
        let log = BlockedLog::default();
        log.record(POD_A, "evil.example", 443);
        log.record(POD_A, "Evil.Example.", 443);
        log.record(POD_A, "a.example", 80);
        log.record(POD_A, "evil.example", 22);
        log.record(POD_B, "b.example", 443);
        assert_eq!(
            log.for_client(POD_A),
            vec![
                blocked("a.example", 80, 1),
                blocked("evil.example", 22, 1),
                blocked("evil.example", 443, 2)
            ]
        );
        assert_eq!(log.for_client(POD_B), vec![blocked("b.example", 443, 1)]);
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().expect("address");
        assert_eq!(log.for_client(mapped), vec![blocked("b.example", 443, 1)]);
        assert_eq!(log.total(), 5);
        log.forget(POD_A);
        assert!(log.for_client(POD_A).is_empty());
        assert_eq!(log.total(), 5);
    }

    #[test]
    fn a_reused_address_does_not_show_the_previous_pods_list() {
        let log = BlockedLog::default();
        log.claim(POD_A, "ns/first");
        log.record(POD_A, "evil.example", 443);
        log.claim(POD_A, "ns/first");
        assert_eq!(log.for_client(POD_A).len(), 1);
        log.claim(POD_A, "ns/second");
        assert!(log.for_client(POD_A).is_empty());
    }

    #[test]
    fn distinct_hosts_per_client_are_bounded() {
        let log = BlockedLog::default();
        for i in 0..MAX_HOSTS_PER_CLIENT + 10 {
            log.record(POD_A, &format!("h{i}.example"), 443);
        }
        log.record(POD_A, &"x".repeat(1000), 443);
        assert_eq!(log.for_client(POD_A).len(), MAX_HOSTS_PER_CLIENT);
        assert_eq!(log.total(), MAX_HOSTS_PER_CLIENT as u64 + 11);
    }
}
