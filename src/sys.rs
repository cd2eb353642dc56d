//! Calls into the C library, and small process-wide helpers more than one module needs: one
//! copy of each, so that every `unsafe` block and the reasoning for it live in this file.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `m`, ignoring poison: the gate's mutexes guard state that a panicking holder leaves
/// consistent (counts, values replaced whole), and one panicked task must not take every later
/// user of the lock down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `wait` spread by up to `share` of it either way (`0.1`: anywhere from 90 % to 110 %), so
/// that timers set together do not fire together. Never negative.
pub fn jittered(wait: Duration, share: f64) -> Duration {
    wait.mul_f64(spread(share, random_unit()))
}

/// The factor [`jittered`] applies for a uniform `unit` in [0, 1).
fn spread(share: f64, unit: f64) -> f64 {
    (1.0 + share * (2.0 * unit - 1.0)).max(0.0)
}

/// A pseudo-random number in [0, 1), good for spreading timers, not for secrets: every
/// `RandomState` is freshly keyed, so hashing nothing yields a new value.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // The top 53 bits: exactly representable in an f64.
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes a file so that readers see the old content or the new, never a part: `write`
/// fills a temporary file beside `path`, which is synced, renamed over `path`, and the
/// directory synced (the rename itself is durable only then).
pub fn write_atomic_with(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // A bare file name's parent is "": the current directory.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_with`] for bytes in memory.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`; unlimited is `u64::MAX`), or
/// `None` when it cannot be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur)
}

/// Moves the calling thread to the lowest CPU priority (`SCHED_IDLE`, and nice 19), so that it
/// only takes the CPU that other threads leave: one of them that wakes up preempts it at once.
/// A no-op outside Linux; a refusal is logged at debug level and the thread runs on as it was.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: neither call has memory-safety preconditions beyond a valid `sched_param`; on
    // Linux `pid = 0` / `who = 0` name the calling thread only.
    unsafe {
        // SCHED_IDLE: a normal thread that wakes up always preempts this one (with nice 19
        // alone, the scheduler may let it run out its slice first: milliseconds of latency).
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!(thread = ?std::thread::current().name(), "could not move the thread to SCHED_IDLE");
        }
        // Nice 19 too, should the policy above be refused.
        if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
            tracing::debug!(thread = ?std::thread::current().name(), "could not lower the thread's priority");
        }
    }
}

/// Hands the free memory inside glibc's arenas back to the system (`malloc_trim`): the tables
/// of small lists and the growth steps of a list being parsed live there (below the 1 MiB
/// mmap threshold), and without a trim the holes they leave keep RSS up after a refresh.
/// A no-op with another C library.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc's allocator give rebuilt rule sets back to the system: allocations of 1 MiB and
/// more always get their own mapping (returned on free; by default the threshold creeps up to
/// 32 MiB after the first free, so later rule tables land in arenas that never shrink), and at
/// most two arenas (each thread would otherwise keep one, grown to a rule set's size).
/// Call once at process start, before other threads exist. Without it, peak RSS during a
/// refresh of the full shared set was ~4.5x steady instead of ~1.8x (`benches/refresh.sh`, when
/// a refresh still rebuilt every list at once).
/// Same effect as `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576`. A no-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Asks the kernel to report, with every datagram `fd` receives, the local address it
/// was sent to (IP_PKTINFO, IPV6_RECVPKTINFO): a socket bound to `0.0.0.0` or `::` then
/// knows which of the host's addresses a client used. `v6`: the socket is IPv6
/// (dual-stack sockets get IPv4 datagrams' addresses as `::ffff:a.b.c.d`).
pub fn enable_pktinfo(fd: std::os::fd::RawFd, v6: bool) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int
    // that lives for the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One datagram from `fd` (non-blocking: `WouldBlock` when none is queued) into `buf`:
/// its length, its source, and the local address it was sent to when the socket has
/// [`enable_pktinfo`] on.
pub fn recv_with_destination(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr, Option<std::net::IpAddr>)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    // SAFETY: every pointer handed to recvmsg points into a local that outlives the call
    // (the caller's buffer, the address storage, the control buffer), with its true size;
    // the control messages are read only through the CMSG_* macros within the length the
    // kernel reported, and their payloads are copied out unaligned.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one in6_pktinfo (the larger of the two) with its header, aligned.
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let source = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a: libc::sockaddr_in =
                    std::ptr::read_unaligned((&addr as *const libc::sockaddr_storage).cast());
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let a: libc::sockaddr_in6 =
                    std::ptr::read_unaligned((&addr as *const libc::sockaddr_storage).cast());
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                ))
            }
            family => {
                return Err(std::io::Error::other(format!(
                    "recvmsg: unexpected address family {family}"
                )));
            }
        };
        let mut local = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let v6 = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                local = Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, source, local))
    }
}

/// The local address the kernel would send from to reach `peer` (a UDP socket connected
/// to it: no packet is sent). What a listener bound to `0.0.0.0` answers from.
pub fn local_address_towards(peer: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let bind: std::net::SocketAddr = match peer {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect((peer, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Sends `bytes` to `peer` from the local address `from` (IP_PKTINFO / IPV6_PKTINFO), so
/// that a socket bound to a wildcard answers from the address the client asked (a client
/// drops an answer from another address). Non-blocking: `WouldBlock` when the socket's
/// buffer is full. `v6`: the socket is IPv6.
pub fn send_from(
    fd: std::os::fd::RawFd,
    bytes: &[u8],
    peer: std::net::SocketAddr,
    from: std::net::IpAddr,
    v6: bool,
) -> std::io::Result<usize> {
    use std::net::{IpAddr, SocketAddr};
    // SAFETY: as in `recv_with_destination`: every pointer points into a local or the
    // caller's slice, alive for the call and with its true size; the control message is
    // written through the CMSG_* macros into a buffer sized by CMSG_SPACE.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let addr_len = match (peer, v6) {
            (SocketAddr::V4(p), false) => {
                let a = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: p.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*p.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                std::ptr::write_unaligned((&mut storage as *mut libc::sockaddr_storage).cast(), a);
                std::mem::size_of::<libc::sockaddr_in>()
            }
            (peer, true) => {
                let ip = match peer.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let (flowinfo, scope) = match peer {
                    SocketAddr::V6(p) => (p.flowinfo(), p.scope_id()),
                    SocketAddr::V4(_) => (0, 0),
                };
                let a = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: peer.port().to_be(),
                    sin6_flowinfo: flowinfo,
                    sin6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    sin6_scope_id: scope,
                };
                std::ptr::write_unaligned((&mut storage as *mut libc::sockaddr_storage).cast(), a);
                std::mem::size_of::<libc::sockaddr_in6>()
            }
            (SocketAddr::V6(_), false) => {
                return Err(std::io::Error::other("an IPv6 peer on an IPv4 socket"));
            }
        };
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = addr_len as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        let cmsg_len = if v6 {
            libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32)
        } else {
            libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32)
        };
        msg.msg_controllen = cmsg_len as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if v6 {
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
            let src = match from {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: src.octets(),
                },
                ipi6_ifindex: 0,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
        } else {
            let IpAddr::V4(src) = from else {
                return Err(std::io::Error::other("an IPv6 source on an IPv4 socket"));
            };
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(src).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
        }
        let n = libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100), 0.1);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(7), 0.0),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn the_spread_covers_the_whole_share_and_never_goes_negative() {
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(near(spread(0.2, 0.0), 0.8));
        assert!(near(spread(0.2, 0.5), 1.0));
        assert_eq!(spread(3.0, 0.0), 0.0);
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&random_unit()));
        }
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _held = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn the_descriptor_limit_is_readable() {
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
