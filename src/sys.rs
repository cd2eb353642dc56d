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

/// Where a file open on `fd` is written next, when it is a regular file (`None`: a pipe, a
/// terminal, a socket, a device, or a closed descriptor). With `O_APPEND` that is its end.
pub fn regular_file_offset(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: fstat and lseek only read the descriptor's state; `st` is written by fstat.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        u64::try_from(libc::lseek(fd, 0, libc::SEEK_CUR)).ok()
    }
}

/// Tells the kernel that `len` bytes of the file on `fd` from `offset` will not be read
/// again soon (`POSIX_FADV_DONTNEED`): it starts writing back the dirty pages of the range and
/// drops the clean ones from the page cache, to be reused for the file's next writes.
pub fn drop_cached(fd: std::os::fd::RawFd, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: posix_fadvise only advises the kernel; it touches no memory of ours.
    match unsafe { libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Which pages of `file` are in the page cache (`mincore(2)` over a read-only mapping): for
/// tests of what [`drop_cached`] leaves behind.
#[cfg(test)]
pub fn cached_pages(file: &std::fs::File) -> std::io::Result<Vec<bool>> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the mapping is read-only, only its residency is asked, and it is unmapped before
    // return; `pages` has one byte per page of `len`, as mincore writes.
    unsafe {
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap_or(4096);
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut pages = vec![0u8; len.div_ceil(page)];
        let asked = libc::mincore(map, len, pages.as_mut_ptr());
        let error = std::io::Error::last_os_error();
        libc::munmap(map, len);
        if asked != 0 {
            return Err(error);
        }
        Ok(pages.into_iter().map(|p| p & 1 == 1).collect())
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

/// A non-blocking UDP socket bound to `addr` with SO_REUSEPORT set before the bind: several
/// such sockets on one address share its datagrams (the kernel spreads them by flow).
pub fn bind_udp_reuseport(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    let v6 = addr.is_ipv6();
    let mut storage = zeroed_storage();
    let len = encode_addr(addr, v6, &mut storage)?;
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket() returns a new descriptor that this function owns (closed on every
    // error path, else handed to the UdpSocket); the option value is a c_int alive for
    // the call, and the address is a local storage with its true length.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let on: libc::c_int = 1;
        let ok = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) == 0;
        if !ok {
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
        Ok(std::net::UdpSocket::from_raw_fd(fd))
    }
}

/// How many datagrams one [`recv_batch`] or [`send_batch`] call moves at most.
pub const BATCH: usize = 32;

/// Room for one control message carrying an `in6_pktinfo` (the larger of the two) with its
/// header, aligned for `cmsghdr`.
type Control = [u64; 8];

/// An all-zero `sockaddr_storage`.
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data (integers and padding): all zeroes is a valid
    // value (family AF_UNSPEC).
    unsafe { std::mem::zeroed() }
}

/// The address in `addr` as the kernel filled it in (`None`: a family other than IPv4/IPv6).
fn socket_addr(addr: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let at = (addr as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in; the read is unaligned-safe
            // and the family says the kernel wrote one.
            let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(at.cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(at.cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `peer` into `storage` as the socket's family wants it (`v6`: an IPv6 socket, which
/// reaches IPv4 peers as `::ffff:a.b.c.d`); the length to pass with it.
fn encode_addr(
    peer: std::net::SocketAddr,
    v6: bool,
    storage: &mut libc::sockaddr_storage,
) -> std::io::Result<libc::socklen_t> {
    use std::net::{IpAddr, SocketAddr};
    let at = (storage as *mut libc::sockaddr_storage).cast::<u8>();
    match (peer, v6) {
        (SocketAddr::V4(p), false) => {
            let a = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: p.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*p.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in; the write is unaligned-safe.
            unsafe { std::ptr::write_unaligned(at.cast(), a) };
            Ok(std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
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
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write_unaligned(at.cast(), a) };
            Ok(std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
        (SocketAddr::V6(_), false) => Err(std::io::Error::other("an IPv6 peer on an IPv4 socket")),
    }
}

/// Writes into `control` the message that makes the kernel send from `from` (IP_PKTINFO /
/// IPV6_PKTINFO; `v6`: an IPv6 socket); the length of control data to pass with it.
fn encode_pktinfo(
    control: &mut Control,
    from: std::net::IpAddr,
    v6: bool,
) -> std::io::Result<usize> {
    use std::net::IpAddr;
    let src4 = match (from, v6) {
        (IpAddr::V4(src), false) => Some(src),
        (_, true) => None,
        (IpAddr::V6(_), false) => {
            return Err(std::io::Error::other("an IPv6 source on an IPv4 socket"));
        }
    };
    *control = [0; 8];
    // SAFETY: the msghdr only points at `control`, which is alive for the block and whose
    // true size is passed; CMSG_FIRSTHDR returns its start (it is larger than a cmsghdr, so
    // never null), and the header and payload are written through the CMSG_* macros within
    // CMSG_SPACE of the payload, which fits in `control` (checked by a test).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<Control>() as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if let Some(src) = src4 {
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
            Ok(libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize)
        } else {
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
            Ok(libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) as usize)
        }
    }
}

/// The local address a received datagram was sent to, from its IP_PKTINFO / IPV6_PKTINFO
/// control message (IPv4 on a dual-stack socket: the plain IPv4 address).
///
/// # Safety
///
/// `msg` is a msghdr that `recvmsg`/`recvmmsg` just filled in: its control pointer and
/// length describe a buffer that is still alive.
unsafe fn destination(msg: &libc::msghdr) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut local = None;
    // SAFETY: the caller's promise; control messages are read only through the CMSG_*
    // macros, within the length the kernel reported, and their payloads copied out
    // unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
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
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    local
}

/// Buffers for up to [`BATCH`] datagrams received in one call ([`recv_batch`]), reused from
/// call to call.
pub struct RecvBatch {
    /// Bytes per datagram: a longer one arrives cut to this length.
    size: usize,
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    got: Vec<Received>,
}

#[derive(Clone, Copy)]
struct Received {
    slot: usize,
    len: usize,
    source: std::net::SocketAddr,
    local: Option<std::net::IpAddr>,
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of up to `size` bytes each.
    pub fn new(size: usize) -> RecvBatch {
        RecvBatch {
            size,
            data: vec![0; size * BATCH],
            addrs: vec![zeroed_storage(); BATCH],
            controls: vec![[0; 8]; BATCH],
            got: Vec::with_capacity(BATCH),
        }
    }

    /// How many datagrams the last [`recv_batch`] returned.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    /// Datagram `i` of the last call: its bytes, its source, and the local address it was
    /// sent to when the socket has [`enable_pktinfo`] on.
    pub fn get(&self, i: usize) -> (&[u8], std::net::SocketAddr, Option<std::net::IpAddr>) {
        let r = self.got[i];
        let at = r.slot * self.size;
        (&self.data[at..at + r.len], r.source, r.local)
    }
}

/// Receives up to [`BATCH`] queued datagrams from `fd` into `batch` in one `recvmmsg`
/// (non-blocking: `WouldBlock` when none is queued; fewer when fewer are): how many. With
/// [`enable_pktinfo`] on, each carries the local address it was sent to. A datagram from an
/// address family other than IPv4/IPv6 is left out.
pub fn recv_batch(fd: std::os::fd::RawFd, batch: &mut RecvBatch) -> std::io::Result<usize> {
    batch.got.clear();
    let size = batch.size;
    // SAFETY: every pointer in the headers points into `batch`'s buffers (a slot of `size`
    // bytes each of `data`, one address storage and one control buffer per slot) or into the
    // local iovec array, all alive for the call and passed with their true sizes; the
    // headers and iovecs are plain data for which zeroes are valid. After the call only the
    // first `n` headers are read, as the kernel filled them in.
    unsafe {
        let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        let data = batch.data.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: data.add(i * size).cast(),
                iov_len: size,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = batch.addrs.as_mut_ptr().add(i).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iovs.as_mut_ptr().add(i);
            h.msg_iovlen = 1;
            h.msg_control = batch.controls.as_mut_ptr().add(i).cast();
            h.msg_controllen = std::mem::size_of::<Control>() as _;
        }
        let n = libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (slot, msg) in msgs.iter().enumerate().take(n) {
            let Some(source) = socket_addr(&batch.addrs[slot]) else {
                continue;
            };
            batch.got.push(Received {
                slot,
                len: msg.msg_len as usize,
                source,
                local: destination(&msg.msg_hdr),
            });
        }
        Ok(n)
    }
}

/// Datagrams to send with [`send_batch`]: each one's bytes, its peer and (a wildcard socket
/// answering from a datagram's destination) the local address to send it from, encoded for
/// the kernel when added. Reused: [`SendBatch::clear`] keeps the buffers.
pub struct SendBatch {
    /// The socket is IPv6.
    v6: bool,
    slots: Vec<Outgoing>,
    /// Slots in use, and how many of them were sent (or skipped).
    len: usize,
    sent: usize,
}

struct Outgoing {
    bytes: Vec<u8>,
    peer: std::net::SocketAddr,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    control: Control,
    control_len: usize,
}

impl SendBatch {
    /// For a socket of that family (`v6`: IPv6).
    pub fn new(v6: bool) -> SendBatch {
        SendBatch {
            v6,
            slots: Vec::with_capacity(BATCH),
            len: 0,
            sent: 0,
        }
    }

    /// The buffer of the next datagram, empty: write it, then [`SendBatch::commit`] it (or
    /// not: the next call hands out the same buffer again).
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        if self.len == self.slots.len() {
            self.slots.push(Outgoing {
                bytes: Vec::with_capacity(512),
                peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                addr: zeroed_storage(),
                addr_len: 0,
                control: [0; 8],
                control_len: 0,
            });
        }
        let bytes = &mut self.slots[self.len].bytes;
        bytes.clear();
        bytes
    }

    /// Adds what was written into [`SendBatch::next_buffer`], to `peer`, from `from` if
    /// given. An error (an address of the other family) adds nothing.
    pub fn commit(
        &mut self,
        peer: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
    ) -> std::io::Result<()> {
        let v6 = self.v6;
        let Some(slot) = self.slots.get_mut(self.len) else {
            return Err(std::io::Error::other("commit without next_buffer"));
        };
        slot.addr_len = encode_addr(peer, v6, &mut slot.addr)?;
        slot.control_len = match from {
            Some(from) => encode_pktinfo(&mut slot.control, from, v6)?,
            None => 0,
        };
        slot.peer = peer;
        self.len += 1;
        Ok(())
    }

    /// Adds a copy of `bytes`, as [`SendBatch::commit`].
    pub fn push(
        &mut self,
        bytes: &[u8],
        peer: std::net::SocketAddr,
        from: Option<std::net::IpAddr>,
    ) -> std::io::Result<()> {
        self.next_buffer().extend_from_slice(bytes);
        self.commit(peer, from)
    }

    /// Datagrams added and not yet sent nor skipped.
    pub fn pending(&self) -> usize {
        self.len - self.sent
    }

    /// The peer of the next datagram to send.
    pub fn next_peer(&self) -> Option<std::net::SocketAddr> {
        (self.sent < self.len).then(|| self.slots[self.sent].peer)
    }

    /// Gives up on the next datagram (one the kernel refused).
    pub fn skip(&mut self) {
        self.sent = (self.sent + 1).min(self.len);
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.sent = 0;
    }
}

/// Sends the next (up to [`BATCH`]) pending datagrams of `batch` in one `sendmmsg`
/// (non-blocking): how many went, which are marked sent. `WouldBlock` when the socket's
/// buffer is full before the first; an error for the first pending datagram otherwise (the
/// kernel reports an error after the first only on the next call, when that datagram comes
/// first).
pub fn send_batch(fd: std::os::fd::RawFd, batch: &mut SendBatch) -> std::io::Result<usize> {
    let start = batch.sent;
    let n = batch.pending().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: every pointer in the headers points into `batch`'s slots (bytes, address and
    // control buffer, each with its true length) or into the local iovec array, all alive
    // and unmoved for the call; the kernel only reads them. Zeroes are valid for the headers.
    let rc = unsafe {
        let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        for (i, slot) in batch.slots[start..start + n].iter_mut().enumerate() {
            iovs[i] = libc::iovec {
                iov_base: slot.bytes.as_ptr() as *mut libc::c_void,
                iov_len: slot.bytes.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut slot.addr as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = slot.addr_len;
            h.msg_iov = iovs.as_mut_ptr().add(i);
            h.msg_iovlen = 1;
            if slot.control_len > 0 {
                h.msg_control = slot.control.as_mut_ptr().cast();
                h.msg_controllen = slot.control_len as _;
            }
        }
        libc::sendmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT as _,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    batch.sent += rc as usize;
    Ok(rc as usize)
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
    let mut storage = zeroed_storage();
    let addr_len = encode_addr(peer, v6, &mut storage)?;
    let mut control: Control = [0; 8];
    let control_len = encode_pktinfo(&mut control, from, v6)?;
    // SAFETY: every pointer points into a local or the caller's slice, alive for the call
    // and with its true size; zeroes are valid for the msghdr.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = addr_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
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

    #[test]
    fn a_pktinfo_control_message_fits_its_buffer() {
        // SAFETY: CMSG_SPACE only computes a size.
        let (v4, v6) = unsafe {
            (
                libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize,
                libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) as usize,
            )
        };
        assert!(v4 <= std::mem::size_of::<Control>());
        assert!(v6 <= std::mem::size_of::<Control>());
    }

    /// Waits (a little) until `fd` has a datagram queued.
    fn wait_readable(fd: std::os::fd::RawFd) {
        for _ in 0..200 {
            let mut byte = [0u8; 1];
            // SAFETY: a one-byte peek into a local buffer.
            let n = unsafe {
                libc::recv(
                    fd,
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nothing arrived");
    }

    #[test]
    fn batches_move_many_datagrams_each_way_to_the_right_peers() {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd;
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..4)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        // 40 datagrams (more than one batch), each naming its client and number.
        for i in 0..10u8 {
            for (c, client) in clients.iter().enumerate() {
                client.send_to(&[c as u8, i, 0xab], at).unwrap();
            }
        }
        let fd = server.as_raw_fd();
        let mut batch = RecvBatch::new(4);
        let mut got = Vec::new();
        while got.len() < 40 {
            wait_readable(fd);
            let n = recv_batch(fd, &mut batch).unwrap();
            assert!((1..=BATCH).contains(&n), "{n}");
            assert_eq!(batch.len(), n);
            for i in 0..batch.len() {
                let (bytes, source, local) = batch.get(i);
                assert_eq!(local, None, "no IP_PKTINFO asked for");
                got.push((bytes.to_vec(), source));
            }
        }
        assert_eq!(
            recv_batch(fd, &mut batch).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        for (bytes, source) in &got {
            assert_eq!(*source, clients[bytes[0] as usize].local_addr().unwrap());
            assert_eq!(bytes.len(), 3);
        }
        // Echo every datagram back reversed, in batches, and check each client gets its own.
        let mut replies = SendBatch::new(false);
        for (bytes, source) in &got {
            let mut back = bytes.clone();
            back.reverse();
            replies.push(&back, *source, None).unwrap();
        }
        assert_eq!(replies.pending(), 40);
        while replies.pending() > 0 {
            let n = send_batch(fd, &mut replies).unwrap();
            assert!((1..=BATCH).contains(&n), "{n}");
        }
        for (c, client) in clients.iter().enumerate() {
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..10 {
                let mut buf = [0u8; 16];
                let (n, from) = client.recv_from(&mut buf).unwrap();
                assert_eq!(from, at);
                assert_eq!(&buf[..n], &[0xab, buf[1], c as u8]);
                seen.push(buf[1]);
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        }
        // Cut to the slot's size, like a single recv.
        clients[0].send_to(&[9; 10], at).unwrap();
        wait_readable(fd);
        assert_eq!(recv_batch(fd, &mut batch).unwrap(), 1);
        assert_eq!(batch.get(0).0, &[9; 4]);
    }

    #[test]
    fn a_wildcard_socket_learns_and_answers_from_each_destination() {
        use std::net::{IpAddr, Ipv4Addr, UdpSocket};
        use std::os::fd::AsRawFd;
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let fd = server.as_raw_fd();
        enable_pktinfo(fd, false).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let destinations: Vec<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        for (i, ip) in destinations.iter().enumerate() {
            client.send_to(&[i as u8], (*ip, port)).unwrap();
        }
        let mut batch = RecvBatch::new(16);
        let mut replies = SendBatch::new(false);
        let mut seen = 0;
        while seen < destinations.len() {
            wait_readable(fd);
            recv_batch(fd, &mut batch).unwrap();
            for i in 0..batch.len() {
                let (bytes, source, local) = batch.get(i);
                assert_eq!(local, Some(IpAddr::V4(destinations[bytes[0] as usize])));
                replies.push(bytes, source, local).unwrap();
                seen += 1;
            }
        }
        while replies.pending() > 0 {
            send_batch(fd, &mut replies).unwrap();
        }
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for _ in 0..destinations.len() {
            let mut buf = [0u8; 4];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(n, 1);
            assert_eq!(from, (destinations[buf[0] as usize], port).into());
        }
    }

    #[test]
    fn a_batch_refuses_addresses_of_the_other_family() {
        let mut replies = SendBatch::new(false);
        let v6: std::net::SocketAddr = "[::1]:53".parse().unwrap();
        assert!(replies.push(b"x", v6, None).is_err());
        assert!(
            replies
                .push(
                    b"x",
                    "127.0.0.1:53".parse().unwrap(),
                    Some("::1".parse().unwrap())
                )
                .is_err()
        );
        assert_eq!(replies.pending(), 0);
        replies.skip();
        assert_eq!(replies.pending(), 0);
        assert_eq!(replies.next_peer(), None);
    }

    #[test]
    fn reuseport_sockets_share_a_port_that_a_plain_bind_cannot_take() {
        let first = bind_udp_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = first.local_addr().unwrap();
        let second = bind_udp_reuseport(at).unwrap();
        assert_eq!(second.local_addr().unwrap(), at);
        assert_eq!(
            std::net::UdpSocket::bind(at).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
    }
}
