//! Several datagrams in one system call (Linux's `recvmmsg` and `sendmmsg`): a busy server
//! worker reads what has queued up on its socket, and sends the answers of one wake-up, with
//! one call each instead of one per datagram, and without a last call per wake-up that only
//! learns that the socket is empty. Elsewhere, one datagram per call.
//!
//! The only `unsafe` of this crate: the two calls take arrays of C headers that point into
//! buffers alive for the length of the call.

use std::{io, net::SocketAddr, os::fd::AsFd};

/// Datagrams read or sent in one call at most.
pub const BATCH: usize = 16;

/// The largest datagram a slot takes: the largest UDP payload, so that nothing is cut short.
const SLOT: usize = 65536;

/// Where [`recv`] puts what it reads: `BATCH` slots of `SLOT` bytes, allocated once and zeroed
/// by the allocator (pages never written cost no memory).
pub struct RecvBatch {
    bufs: Vec<u8>,
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * SLOT],
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// The datagrams the last [`recv`] read, in order of arrival: (payload, sender). One whose
    /// sender is of an address family other than IPv4 and IPv6 is left out.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .enumerate()
            .filter_map(|(i, &(len, peer))| Some((&self.bufs[i * SLOT..i * SLOT + len], peer?)))
    }
}

/// Reads what is queued on the non-blocking `socket`, [`BATCH`] datagrams at most, into `b`;
/// how many. `WouldBlock` when nothing is.
pub fn recv(socket: &impl AsFd, b: &mut RecvBatch) -> io::Result<usize> {
    b.got.clear();
    sys::recv(socket, b)?;
    Ok(b.got.len())
}

/// Sends the first datagrams of `out`, [`BATCH`] at most; how many went (at least one). An
/// error is the first one's: `WouldBlock` when the socket's buffer is full.
pub fn send(socket: &impl AsFd, out: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    sys::send(socket, &out[..out.len().min(BATCH)])
}

#[cfg(target_os = "linux")]
mod sys {
    use super::{RecvBatch, BATCH, SLOT};
    use std::{
        io,
        mem::{self, MaybeUninit},
        net::{SocketAddr, SocketAddrV4, SocketAddrV6},
        os::fd::{AsFd, AsRawFd},
        ptr,
    };

    fn to_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(s.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says that the storage holds a sockaddr_in.
                let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    u32::from_be(a.sin_addr.s_addr).into(),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says that the storage holds a sockaddr_in6.
                let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    a.sin6_addr.s6_addr.into(),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    fn from_addr(a: &SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match a {
            SocketAddr::V4(a) => {
                // SAFETY: a sockaddr_storage is large enough, and aligned, for a sockaddr_in.
                let sin = unsafe { &mut *ptr::from_mut(s).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: a sockaddr_storage is large enough, and aligned, for a sockaddr_in6.
                let sin6 = unsafe { &mut *ptr::from_mut(s).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// Zeroed C headers (all-zero is a valid value of each).
    fn zeroed<T>() -> T {
        // SAFETY: only used for plain C structs and arrays of them.
        unsafe { MaybeUninit::zeroed().assume_init() }
    }

    pub fn recv(fd: &impl AsFd, b: &mut RecvBatch) -> io::Result<()> {
        let mut addrs: [libc::sockaddr_storage; BATCH] = zeroed();
        let mut iov: [libc::iovec; BATCH] = zeroed();
        let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
        for (i, slot) in b.bufs.chunks_exact_mut(SLOT).enumerate() {
            iov[i].iov_base = slot.as_mut_ptr().cast();
            iov[i].iov_len = SLOT;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = ptr::from_mut(&mut addrs[i]).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = ptr::from_mut(&mut iov[i]);
            h.msg_iovlen = 1;
        }
        // SAFETY: each header points into `addrs`, `iov` and `b.bufs`, which outlive the call;
        // each iovec covers its own slot of `b.bufs`.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_fd().as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        b.got.extend(
            hdrs[..n]
                .iter()
                .zip(&addrs)
                .map(|(h, a)| (h.msg_len as usize, to_addr(a))),
        );
        Ok(())
    }

    pub fn send(fd: &impl AsFd, out: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
        let mut addrs: [libc::sockaddr_storage; BATCH] = zeroed();
        let mut iov: [libc::iovec; BATCH] = zeroed();
        let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
        for (i, (peer, d)) in out.iter().enumerate() {
            let len = from_addr(peer, &mut addrs[i]);
            iov[i].iov_base = d.as_ptr().cast_mut().cast();
            iov[i].iov_len = d.len();
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = ptr::from_mut(&mut addrs[i]).cast();
            h.msg_namelen = len;
            h.msg_iov = ptr::from_mut(&mut iov[i]);
            h.msg_iovlen = 1;
        }
        // SAFETY: each of the first `out.len()` headers points into `addrs`, `iov` and `out`,
        // which outlive the call; the kernel only reads the payloads.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_fd().as_raw_fd(),
                hdrs.as_mut_ptr(),
                out.len() as _,
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::{RecvBatch, SLOT};
    use socket2::SockRef;
    use std::{io, mem::MaybeUninit, net::SocketAddr, os::fd::AsFd};

    pub fn recv(fd: &impl AsFd, b: &mut RecvBatch) -> io::Result<()> {
        let s = SockRef::from(fd);
        let slot = &mut b.bufs[..SLOT];
        // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv_from only writes.
        let uninit = unsafe { &mut *(std::ptr::from_mut(slot) as *mut [MaybeUninit<u8>]) };
        let (n, from) = s.recv_from(uninit)?;
        b.got.push((n, from.as_socket()));
        Ok(())
    }

    pub fn send(fd: &impl AsFd, out: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
        let s = SockRef::from(fd);
        match out.first() {
            Some((peer, d)) => s.send_to(d, &(*peer).into()).map(|_| 1),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair(addr: &str) -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind(addr).unwrap();
        let b = UdpSocket::bind(addr).unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn sent_and_read_back(addr: &str) {
        let (a, b) = pair(addr);
        let mut batch = RecvBatch::default();
        let empty = recv(&b, &mut batch).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.iter().count(), 0);
        // More than one call's worth, of different sizes, the largest a full UDP payload.
        let to = b.local_addr().unwrap();
        let mut out: Vec<(SocketAddr, Vec<u8>)> = (0..BATCH + 3)
            .map(|i| (to, vec![i as u8; 1 + i * 37]))
            .collect();
        out[1].1 = vec![7; 65507];
        let mut at = 0;
        while at < out.len() {
            at += send(&a, &out[at..]).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < out.len() {
            match recv(&b, &mut batch) {
                Ok(n) => {
                    assert!(n <= BATCH);
                    got.extend(batch.iter().map(|(d, p)| (p, d.to_vec())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        let from = a.local_addr().unwrap();
        assert!(got.iter().all(|(p, _)| *p == from), "{got:?}");
        let sent: Vec<_> = out.into_iter().map(|(_, d)| d).collect();
        let read: Vec<_> = got.into_iter().map(|(_, d)| d).collect();
        assert!(sent == read, "datagrams changed or reordered");
    }

    #[test]
    fn datagrams_go_and_come_whole_and_in_order_over_ipv4() {
        sent_and_read_back("127.0.0.1:0");
    }

    #[test]
    fn datagrams_go_and_come_whole_and_in_order_over_ipv6() {
        if UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        }
        sent_and_read_back("[::1]:0");
    }

    #[test]
    fn a_datagram_that_cannot_go_is_the_error_and_the_rest_still_go() {
        let (a, b) = pair("127.0.0.1:0");
        let to = b.local_addr().unwrap();
        let out = vec![(to, vec![0; 70000]), (to, vec![1; 10])];
        let e = send(&a, &out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
        assert_eq!(send(&a, &out[1..]).unwrap(), 1);
        let mut batch = RecvBatch::default();
        let mut n = 0;
        for _ in 0..1000 {
            if let Ok(k) = recv(&b, &mut batch) {
                n = k;
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(n, 1);
        assert_eq!(batch.iter().next().unwrap().0, &[1; 10][..]);
    }
}
