//! `AF_UNIX` sequenced-packet sockets carrying descriptors (`SCM_RIGHTS`), and `poll` over several
//! descriptors: the platform calls of the fork server (`process::forkserver`).
//!
//! Every socket here is one end of a `socketpair(2)`: it has no name in the filesystem or the abstract
//! namespace, nobody can `connect` to it, and `open(2)` on `/proc/<pid>/fd/<n>` fails for a socket
//! (`ENXIO`). Only processes that inherited or were sent an end can talk on it.
//!
//! Received descriptors become [`OwnedFd`]s at once, close-on-exec (`MSG_CMSG_CLOEXEC`), so none leaks
//! into a program started meanwhile and none is left open when a message is refused. A peer that sends
//! more descriptors than the caller asked for gets the message refused: the kernel closes what did not
//! fit (`MSG_CTRUNC`, unix(7)), and what did fit is dropped here.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The most descriptors one message carries in this crate.
pub(crate) const MAX_FDS: usize = 5;

/// Room for the control message of [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

const _: () = assert!(std::mem::size_of::<CmsgBuf>() == 64);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation (cmsg(3)); `fds <= MAX_FDS` keeps it tiny.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends one packet with `fds` attached (`SCM_RIGHTS`). Blocks while the peer's queue is full; fails with
/// [`Error::Closed`] if the peer's end is gone (`EPIPE`/`ECONNRESET`, never `SIGPIPE`).
///
/// # Panics
/// If more than [`MAX_FDS`] descriptors are given (a programming error of this crate).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    send_with_fds_until(sock, bytes, fds, None)
}

/// As [`send_with_fds`], waiting for room in the peer's queue only until `deadline` (then
/// [`Error::Timeout`], nothing sent): packets a peer does not read (it is stopped, or stuck) stay
/// charged to our send buffer, and once that is full a blocking send would wait for it for good.
pub(crate) fn send_with_fds_until(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors");
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: a zeroed msghdr is valid (null name and control, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        debug_assert!(space <= cbuf.0.len());
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points to `space` bytes of `cbuf`, aligned for cmsghdr (align 8), enough
        // for one header and `fds.len()` ints (CMSG_SPACE above); CMSG_FIRSTHDR is therefore non-null and
        // CMSG_DATA points inside the buffer with room for the ints written (cmsg(3)).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        let flags = if deadline.is_some() {
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        } else {
            libc::MSG_NOSIGNAL
        };
        // SAFETY: `msg` describes live buffers (`bytes` through `iov`, `cbuf`) for the whole call; the
        // descriptors named are open (borrowed). MSG_NOSIGNAL turns a closed peer into EPIPE.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
        if n >= 0 {
            // A SOCK_SEQPACKET send is all or nothing (unix(7)).
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                return Err(Error::Closed)
            }
            // Room in our send buffer, or the deadline: `poll` says which.
            Some(libc::EAGAIN) => {
                let left = deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if !super::process::wait_polled(sock, libc::POLLOUT, Some(left))? {
                    return Err(Error::Timeout);
                }
            }
            _ => return Err(Error::os("sendmsg", e)),
        }
    }
}

/// What [`recv_with_fds`] got.
#[derive(Debug)]
pub(crate) enum Received {
    /// A packet of this many bytes (at the start of the buffer) and these descriptors.
    Packet(usize, Vec<OwnedFd>),
    /// The peer closed its end: no packet will ever come.
    Closed,
    /// Nothing queued (only with `wait = false`).
    Nothing,
}

/// Receives one packet into `buf` with at most `max_fds` descriptors.
///
/// A packet longer than `buf` or carrying more descriptors than `max_fds` is refused with
/// [`Error::Corrupted`], and every descriptor it carried is closed: the peer decides neither how much
/// this process allocates nor how many descriptors it holds.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    wait: bool,
) -> Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: a zeroed msghdr is valid (null name and control, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    // Room for `max_fds` only: the kernel closes the excess and sets MSG_CTRUNC (unix(7)). With zero
    // room the kernel still reports (and closes) any descriptor sent.
    msg.msg_controllen = if max_fds == 0 { 0 } else { cmsg_space(max_fds) } as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if wait { 0 } else { libc::MSG_DONTWAIT };
    let n = loop {
        // SAFETY: `msg` describes live buffers (`buf` through `iov`, `cbuf`) for the whole call; the kernel
        // writes at most `iov_len` bytes and `msg_controllen` bytes of control data into them.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(Received::Nothing),
            Some(libc::ECONNRESET) => return Ok(Received::Closed),
            _ => return Err(Error::os("recvmsg", e)),
        }
    };
    // Take ownership of every descriptor received before judging the message, so a refusal closes them.
    let mut fds = Vec::new();
    if msg.msg_controllen > 0 {
        // SAFETY: after recvmsg, `msg_control`/`msg_controllen` describe the control messages the kernel
        // wrote into `cbuf`; CMSG_FIRSTHDR/CMSG_NXTHDR walk them within those bounds (cmsg(3)), and each
        // SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / size_of::<int>()` descriptors the kernel
        // just installed in this process, owned by nobody else.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let payload =
                        ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        return Err(Error::Corrupted(format!(
            "a socket message carried more than {max_fds} descriptors"
        )));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(Error::Corrupted(format!(
            "a socket message was longer than {} bytes",
            buf.len()
        )));
    }
    if n == 0 && fds.is_empty() {
        // A zero-length read on a SOCK_SEQPACKET socket is the end of the stream (the peer closed).
        return Ok(Received::Closed);
    }
    Ok(Received::Packet(n, fds))
}

/// Waits until at least one of `fds` is readable or hung up, for at most `timeout` (`None`: forever).
/// Returns, per descriptor, whether it is ready (readable, hung up or in error): all `false` on timeout.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t)); // past the range: none
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds; the kernel writes only their `revents`.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r > 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        if r == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(vec![false; pfds.len()]);
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::os("poll", e));
        }
    }
}

/// The pid, effective uid and effective gid of the process that created the peer end of a
/// socketpair, as they were when it did (`SO_PEERCRED`).
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> Result<(u32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `ucred` into `cred` (a live local) and its size into `len`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(Error::last_os("getsockopt(SO_PEERCRED)"));
    }
    Ok((cred.pid as u32, cred.uid, cred.gid))
}

/// `SO_PEERGROUPS` (Linux 4.13), which the `libc` crate does not export for every architecture.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process that created the peer end of a socketpair, as they were
/// when it did (`SO_PEERGROUPS`), sorted, if there are at most `max` of them; `Ok(None)` where the
/// kernel cannot say (before 4.13, or a sandbox's kernel that does not implement the option). More
/// than `max` is an error (`ERANGE`): the caller sizes the buffer by what it expects, never by what
/// the peer has.
pub(crate) fn peer_groups(sock: BorrowedFd<'_>, max: usize) -> Result<Option<Vec<u32>>> {
    let mut groups = vec![0 as libc::gid_t; max];
    let bytes = max
        .checked_mul(std::mem::size_of::<libc::gid_t>())
        .and_then(|b| libc::socklen_t::try_from(b).ok())
        .ok_or_else(|| {
            Error::os(
                "SO_PEERGROUPS",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
    let mut len = bytes;
    // SAFETY: SO_PEERGROUPS writes at most `len` bytes, all of `groups` (a live vector of `max` gids),
    // and then the number of bytes it wrote (or needed) into `len`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // A kernel that does not know the option (before 4.13), or a sandbox's kernel that answers
        // for it with another errno (gVisor does not implement it): cannot tell. Refusing there made
        // every real child run `main`, which spawns again, without end. Only ERANGE says something:
        // the peer has more groups than `max`.
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        ) {
            return Ok(None);
        }
        return Err(Error::os("getsockopt(SO_PEERGROUPS)", e));
    }
    groups.truncate(len.min(bytes) as usize / std::mem::size_of::<libc::gid_t>());
    groups.sort_unstable();
    Ok(Some(groups))
}

/// Takes ownership of an inherited descriptor whose number a trusted message named (the fork server's
/// request socket, named in its spawn task), if it is an open socket beyond the standard three.
pub(crate) fn adopt_socket(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor's flags; it fails with EBADF for a closed number.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::os(
            "adopt socket",
            std::io::Error::from_raw_os_error(libc::EBADF),
        ));
    }
    // SAFETY: the descriptor is open and was handed down to this process for exactly this use by the
    // parent that spawned it; nothing else in this process names it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again, so it never reaches a program this process starts.
    // SAFETY: F_SETFD on an owned, open descriptor touches no memory.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one `stat` into `st`, a live local; zeroed is a valid bit pattern for it.
    if unsafe { libc::fstat(owned.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(Error::last_os("fstat(socket)"));
    }
    // SAFETY: fstat succeeded and filled `st`.
    let mode = unsafe { st.assume_init() }.st_mode;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::os(
            "adopt socket",
            std::io::Error::from_raw_os_error(libc::ENOTSOCK),
        ));
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        crate::sys::channel::key_socketpair().unwrap()
    }

    #[test]
    fn packets_carry_descriptors() {
        let (a, b) = pair();
        let (x, _y) = pair();
        send_with_fds(a.as_fd(), b"hello", &[x.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        match recv_with_fds(b.as_fd(), &mut buf, 2, true).unwrap() {
            Received::Packet(5, fds) => {
                assert_eq!(&buf[..5], b"hello");
                assert_eq!(fds.len(), 1);
                assert!(adopt_socket(std::os::fd::IntoRawFd::into_raw_fd(
                    fds.into_iter().next().unwrap()
                ))
                .is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv_with_fds(b.as_fd(), &mut buf, 2, false).unwrap(),
            Received::Nothing
        ));
        drop(a);
        assert!(matches!(
            recv_with_fds(b.as_fd(), &mut buf, 2, true).unwrap(),
            Received::Closed
        ));
        assert!(matches!(
            send_with_fds(b.as_fd(), b"x", &[]),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn oversized_packets_and_surplus_descriptors_are_refused() {
        let (a, b) = pair();
        let (x, y) = pair();
        send_with_fds(a.as_fd(), b"0123456789", &[]).unwrap();
        let mut small = [0u8; 4];
        assert!(matches!(
            recv_with_fds(b.as_fd(), &mut small, 0, true),
            Err(Error::Corrupted(_))
        ));
        send_with_fds(a.as_fd(), b"x", &[x.as_fd(), y.as_fd()]).unwrap();
        let mut buf = [0u8; 4];
        assert!(matches!(
            recv_with_fds(b.as_fd(), &mut buf, 1, true),
            Err(Error::Corrupted(_))
        ));
    }

    #[test]
    fn poll_reports_the_ready_one() {
        let (a, b) = pair();
        let (c, d) = pair();
        assert_eq!(
            poll_readable(&[b.as_fd(), d.as_fd()], Some(Duration::from_millis(1))).unwrap(),
            [false, false]
        );
        send_with_fds(c.as_fd(), b"x", &[]).unwrap();
        assert_eq!(
            poll_readable(&[b.as_fd(), d.as_fd()], None).unwrap(),
            [false, true]
        );
        drop(a);
        assert!(poll_readable(&[b.as_fd()], None).unwrap()[0], "hang-up");
        assert_eq!(peer_cred(d.as_fd()).unwrap().0, std::process::id());
    }
}
