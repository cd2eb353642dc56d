//! The gate's own host as its network sees it: the addresses of its interfaces and its
//! default gateways. Both change while the gate runs (a container attached to another
//! network, DHCP, a new route), so they are read at start and again every
//! [`REFRESH`]: the proxy refuses exactly the gate's own addresses, not every host on a
//! listener's port, and the gateway it refuses is the current one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::policy::addr::AddrClassifier;

/// How often interface addresses and gateways are read again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The host's addresses, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// Every address of every interface (loopback included).
    pub interfaces: Vec<IpAddr>,
    /// Default-route gateways.
    pub gateways: Vec<IpAddr>,
}

impl HostAddrs {
    /// Reads both from the system (`getifaddrs(3)`, `/proc/net/route`, `/proc/net/ipv6_route`).
    pub fn read() -> HostAddrs {
        HostAddrs {
            interfaces: interface_addrs(),
            gateways: AddrClassifier::detect_gateways(),
        }
    }

    pub fn is_own(&self, ip: IpAddr) -> bool {
        self.interfaces.contains(&ip)
    }

    pub fn is_gateway(&self, ip: IpAddr) -> bool {
        self.gateways.contains(&ip)
    }
}

/// [`HostAddrs`] kept current; cheap to clone and to read from every connection.
#[derive(Clone)]
pub struct LiveHost(Arc<ArcSwap<HostAddrs>>);

impl LiveHost {
    pub fn new(addrs: HostAddrs) -> LiveHost {
        LiveHost(Arc::new(ArcSwap::from_pointee(addrs)))
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<HostAddrs>> {
        self.0.load()
    }

    pub fn store(&self, addrs: HostAddrs) {
        self.0.store(Arc::new(addrs));
    }

    /// Re-reads the host with `read` every `every` (off the async workers), logging what
    /// changed, until the returned task is aborted.
    pub fn spawn_refresh(
        &self,
        every: Duration,
        read: impl Fn() -> HostAddrs + Send + Sync + Clone + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Ok(mut now) = tokio::task::spawn_blocking(read.clone()).await else {
                    continue;
                };
                // Every host has a loopback address: none means the read failed, and the
                // addresses last read stay refused rather than none.
                if now.interfaces.is_empty() {
                    now.interfaces = live.load().interfaces.clone();
                }
                if **live.load() != now {
                    tracing::info!(
                        interfaces = ?now.interfaces,
                        gateways = ?now.gateways,
                        "the host's addresses changed"
                    );
                    live.store(now);
                }
            }
        })
    }
}

/// Every interface address, from `getifaddrs(3)`; empty when it fails.
fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocated; it is walked
    // read-only, each `ifa_addr` read as the sockaddr type its family names, and freed once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                let ip = match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                };
                if let Some(ip) = ip
                    && !out.contains(&ip)
                {
                    out.push(ip);
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_is_found() {
        let host = HostAddrs::read();
        assert!(host.is_own(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{host:?}");
    }

    #[tokio::test]
    async fn a_refresh_picks_up_new_addresses() {
        let live = LiveHost::new(HostAddrs::default());
        let read = || HostAddrs {
            interfaces: vec!["192.0.2.7".parse().unwrap()],
            gateways: vec!["192.0.2.1".parse().unwrap()],
        };
        let task = live.spawn_refresh(Duration::from_millis(20), read);
        assert!(!live.load().is_own("192.0.2.7".parse().unwrap()));
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if live.load().is_gateway("192.0.2.1".parse().unwrap()) {
                break;
            }
        }
        assert!(live.load().is_own("192.0.2.7".parse().unwrap()));
        assert!(live.load().is_gateway("192.0.2.1".parse().unwrap()));
        task.abort();

        // A read that finds no interface at all failed: the last addresses stay.
        let failed = || HostAddrs {
            interfaces: Vec::new(),
            gateways: vec!["192.0.2.1".parse().unwrap()],
        };
        let task = live.spawn_refresh(Duration::from_millis(20), failed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(live.load().is_own("192.0.2.7".parse().unwrap()));
        task.abort();
    }
}
