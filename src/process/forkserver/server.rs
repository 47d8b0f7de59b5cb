//! The fork server's side: the loop that serves requests, checks each, forks its child and reports
//! how it ended (see the [module docs](super)).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use super::{
    decode_environment, decode_request, encode_ended, ServerArgs, MAX_ANSWER, MAX_ENVIRONMENT,
    MAX_REQUEST, REFUSED_MAGIC, REQUESTER_KEY, STARTED_MAGIC,
};
use crate::error::{Error, Result};
use crate::process::bootstrap::{self, Failure, SpawnKind};
use crate::process::fnref::{Content, FnKey};
use crate::sys::channel;
use crate::sys::process::{self as psys, Fork};
use crate::sys::unix_socket::{self as usock, Received};

/// A child of the server, until it is reaped and its status sent.
struct Live {
    pid: u32,
    pidfd: OwnedFd,
    /// The server's end of the child's status socket; `None` once the requester has closed its end.
    status: Option<OwnedFd>,
    die_with_parent: bool,
}

/// The server's task, run in a spawned child: serve requests until the parent closes the request socket
/// and every child has ended. Returns normally (exit code 0) then; dies with its parent before that.
pub(super) fn server_main(args: ServerArgs) {
    // An interactive Ctrl-C goes to the whole process group: the server must outlive it as long as its
    // parent does (Python's fork server does the same). Its children get the default back.
    channel::set_sigint_ignored(true);
    if let Err(why) = serve(args) {
        psys::write_stderr_raw(format!("mproc: the fork server stops: {why}\n").as_bytes());
    }
}

fn serve(args: ServerArgs) -> Result<()> {
    let sock = usock::adopt_socket(args.sock)?;
    if !channel::made_by(sock.as_fd(), channel::parent_pid()) {
        return Err(Error::ForkServer(
            "the request socket was not made by this process's parent".into(),
        ));
    }
    let key = bootstrap::spawn_key()
        .ok_or_else(|| Error::ForkServer("the fork server was not spawned".into()))?;
    let mut accepting = true;
    let mut live: Vec<Live> = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST];
    while accepting || !live.is_empty() {
        // What to watch: requests (while accepting), each child's end (pidfd), each requester's end.
        let mut watch: Vec<BorrowedFd<'_>> = Vec::with_capacity(1 + 2 * live.len());
        if accepting {
            watch.push(sock.as_fd());
        }
        for l in &live {
            watch.push(l.pidfd.as_fd());
            if let Some(s) = &l.status {
                watch.push(s.as_fd());
            }
        }
        let ready = usock::poll_readable(&watch, None)?;
        drop(watch);
        let mut at = 0;
        let mut request_ready = false;
        if accepting {
            request_ready = ready[0];
            at = 1;
        }
        let mut ended = Vec::new();
        for (i, l) in live.iter_mut().enumerate() {
            if ready[at] {
                ended.push(i);
            }
            at += 1;
            if l.status.is_some() {
                if ready[at] {
                    requester_gone(l);
                }
                at += 1;
            }
        }
        // Reap and report, from the back so the indices stay valid.
        for i in ended.into_iter().rev() {
            let l = live.swap_remove(i);
            report_end(l);
        }
        if request_ready {
            let mut keep = Keep {
                sock: &sock,
                live: &mut live,
            };
            // How much of the buffer the kernel may have written: a packet's length, or all of it
            // for a message refused as too long.
            let written = match usock::recv_with_fds(sock.as_fd(), &mut buf, 5, false) {
                Ok(Received::Packet(n, fds)) => {
                    handle(&buf[..n], fds, &key, &mut keep);
                    n
                }
                Ok(Received::Nothing) => 0,
                Ok(Received::Closed) => {
                    accepting = false;
                    0
                }
                // A malformed message (too long, too many descriptors): the kernel or `recv_with_fds`
                // closed what it carried; the requester sees end-of-file on its status socket.
                Err(Error::Corrupted(_)) => buf.len(),
                Err(e) => return Err(e),
            };
            // Every child forked later gets a copy of this buffer: a request's bytes must not
            // outlive it. A pool worker's request carries the pool's key, which a later, shorter
            // request left in place for every later child to read (found by review: a same-uid
            // child could then sign tasks for that pool's workers).
            let end = written.min(buf.len());
            buf[..end].fill(0);
            std::hint::black_box(&buf);
        }
    }
    Ok(())
}

/// The requester closed its end of a child's status socket: nobody will ask how the child ended. A
/// child that dies with its parent is killed (its requester crashed or dropped it); either way the socket
/// is no longer watched.
fn requester_gone(l: &mut Live) {
    let Some(s) = &l.status else { return };
    // Nothing queued after all (a spurious wake-up): keep watching.
    if requester_waits(s) {
        return;
    }
    if l.die_with_parent {
        let _ = psys::send_signal(&l.pidfd, psys::SIGKILL);
    }
    l.status = None;
}

/// Whether the requester still holds its end of the status socket `s`, without waiting: it never
/// writes there, so a non-blocking receive finds nothing queued while it does. End-of-file (it closed
/// its end) and a packet (a protocol violation) both mean nobody waits for an answer.
fn requester_waits(s: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    matches!(
        usock::recv_with_fds(s.as_fd(), &mut b, 0, false),
        Ok(Received::Nothing)
    )
}

/// Reaps a child whose pidfd became readable and sends its status to the requester.
fn report_end(l: Live) {
    let status = match psys::waitpid(l.pid, true) {
        Ok(Some(s)) => s,
        // Cannot happen for our own terminated child; nothing to report.
        _ => return,
    };
    if let Some(s) = &l.status {
        // The requester may be gone: then there is nobody to tell.
        let _ = usock::send_with_fds(s.as_fd(), &encode_ended(status), &[]);
    }
}

/// What a forked child must close: the server's request socket and everything it holds for other
/// children (a status socket held open by a sibling would hide the server's death from a requester).
struct Keep<'a> {
    sock: &'a OwnedFd,
    live: &'a mut Vec<Live>,
}

/// Handles one request: checks it, forks the child and answers on its status socket.
fn handle(bytes: &[u8], fds: Vec<OwnedFd>, key: &FnKey, keep: &mut Keep<'_>) {
    let mut fds = fds.into_iter();
    let (Some(status), Some(result)) = (fds.next(), fds.next()) else {
        // No status socket to answer on: drop whatever came.
        return;
    };
    let (cwd, env, task) = (fds.next(), fds.next(), fds.next());
    let refuse = |why: &str| {
        let why = &why.as_bytes()[..why.len().min(MAX_ANSWER - 16)];
        let _ = usock::send_with_fds(
            status.as_fd(),
            &bootstrap::spawn_frame(REFUSED_MAGIC, why),
            &[],
        );
    };
    let Some(request) = decode_request(bytes) else {
        return refuse("the request does not decode");
    };
    let func = match request.func.resolve::<SpawnKind>(key) {
        Ok(f) => f,
        Err(e) => return refuse(&e.to_string()),
    };
    let result = match channel::adopt_result_fd(result) {
        Ok(f) => f,
        Err(why) => return refuse(&why),
    };
    let (Some(cwd), Some(env)) = (cwd, env) else {
        return refuse("the working directory or the environment is missing");
    };
    let verified = |what: Content, bytes: Vec<u8>, mac: u64| {
        if key.content_mac(what, &bytes) == mac {
            Ok(bytes)
        } else {
            Err(format!(
                "the {what:?} memfd is not what the requester wrote (its MAC does not verify)"
            ))
        }
    };
    let vars = match channel::read_sealed(env, "environment", MAX_ENVIRONMENT)
        .and_then(|b| verified(Content::ServerEnvironment, b, request.env_mac))
        .and_then(|b| decode_environment(&b))
    {
        Ok(v) => v,
        Err(why) => return refuse(&why),
    };
    let args = match (request.args, task, request.args_mac) {
        (Some(a), None, None) => a,
        (None, Some(t), Some(mac)) => {
            match channel::read_sealed(t, "task", bootstrap::MAX_TASK_BYTES)
                .and_then(|b| verified(Content::ServerArgs, b, mac))
            {
                Ok(a) => a,
                Err(why) => return refuse(&why),
            }
        }
        _ => return refuse("the argument is missing, sent twice, or without its MAC"),
    };
    // A request can wait in the queue longer than its requester waits for the answer (a server
    // stopped or stuck past `SERVER_ANSWER_WAIT`): a requester that gave up has closed its status
    // socket, and nobody will ever join this child. Found by review: the server forked it all the
    // same and killed it only once the answer below failed, so part of the user's task could run
    // meanwhile. Checked last before the fork, at the cost of one syscall; a requester that gives up
    // from here on still has its child killed by the failed answer.
    if !requester_waits(&status) {
        return;
    }
    let server = std::process::id();
    // SAFETY: this server process is single-threaded (it runs nothing but this loop, started in a
    // fresh spawned process), so the child may run any code: no lock can be held by a vanished thread.
    // The child never returns from this branch: it ends with `exit_immediately`.
    match unsafe { psys::fork() } {
        Ok(Fork::Child) => {
            // Close what belongs to the server and to the other children (see `Keep`).
            keep.live.clear();
            // SAFETY: this child never returns into `serve`, which owns the request socket: it ends
            // with `exit_immediately` below, so the `OwnedFd` is never used or dropped here again.
            // Closing our copy is essential: an end of the request socket held open by a child would
            // keep a dead server's request queue alive, and a requester would wait on it forever.
            unsafe { channel::close_in_forked_child(keep.sock.as_raw_fd()) };
            drop(status);
            let own = bootstrap::result_fd();
            if own >= 0 && own != result.as_raw_fd() {
                // SAFETY: the server's own result memfd, owned by `child_main_if_spawned`'s frame in
                // this copy of the server, which never returns there: it ends with
                // `exit_immediately` below. Closed so that children do not carry it.
                unsafe { channel::close_in_forked_child(own) };
            }
            channel::set_sigint_ignored(false);
            if let Some(k) = request.child_key {
                // A fresh copy of the server, where nobody set it: this always sets it.
                let _ = REQUESTER_KEY.set(k);
            }
            let fd = result.as_raw_fd();
            let code = bootstrap::run_child(fd, move || {
                let entries = vars
                    .into_iter()
                    .filter_map(|(name, value)| {
                        let mut entry = name.into_vec();
                        entry.push(b'=');
                        entry.extend(value.into_vec());
                        CString::new(entry).ok() // checked NUL-free by `decode_environment`
                    })
                    .collect();
                // SAFETY: a child just forked from the single-threaded server, before any thread
                // starts (`watch_parent` below may start one): nothing else touches the environment.
                unsafe { channel::replace_environment(entries) };
                channel::enter_dir(cwd.as_fd()).map_err(Failure::Setup)?;
                drop(cwd);
                if request.die_with_parent {
                    bootstrap::watch_parent(server)?;
                }
                let (f, adapter) = func.parts();
                adapter(f, Vec::leak(args))
            });
            // A forked child of a single-threaded process may flush stdout (nobody else holds its lock);
            // `_exit` then, as every forked child (no atexit handler runs twice).
            let _ = std::io::stdout().flush();
            psys::exit_immediately(code)
        }
        Ok(Fork::Parent(pid)) => {
            drop(result);
            let pidfd = match psys::pidfd_open(pid) {
                Ok(p) => p,
                Err(e) => {
                    psys::kill_and_reap(pid);
                    return refuse(&e.to_string());
                }
            };
            let answer = bootstrap::spawn_frame(STARTED_MAGIC, &pid.to_le_bytes());
            if usock::send_with_fds(status.as_fd(), &answer, &[pidfd.as_fd()]).is_err() {
                // The requester is gone already: the child is nobody's business any more.
                let _ = psys::send_signal(&pidfd, psys::SIGKILL);
            }
            keep.live.push(Live {
                pid,
                pidfd,
                status: Some(status),
                die_with_parent: request.die_with_parent,
            });
        }
        Err(e) => refuse(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{environment_memfd, prepare, Request};
    use super::*;

    /// A request whose requester closed its status socket (it gave up waiting) while the request sat
    /// in the queue: dropped without a fork. Until the fix the server forked the child, which could
    /// run part of the task before the failed answer had it killed.
    #[test]
    fn a_request_its_requester_gave_up_on_forks_no_child() {
        let key = FnKey::random();
        let args = postcard::to_allocvec(&41u32).expect("encode");
        let (result, task) = prepare(&args).expect("result memfd");
        assert!(task.is_none(), "a small argument travels inline");
        let env = environment_memfd().expect("environment memfd");
        let request = Request {
            func: bootstrap::spawn_fn(|x: u32| x + 1).sign(&key),
            die_with_parent: true,
            args: Some(args),
            child_key: None,
            env_mac: key.content_mac(Content::ServerEnvironment, &env.bytes),
            args_mac: None,
        };
        let packet = super::super::encode_request(&request).expect("encode the request");
        let (requester, status) = channel::key_socketpair().expect("status socketpair");
        drop(requester); // The requester gave up: its end is closed.
        let fds: Vec<OwnedFd> = vec![
            status,
            OwnedFd::from(result),
            channel::open_current_dir().expect("cwd"),
            OwnedFd::from(env.file.try_clone().expect("dup the environment memfd")),
        ];
        let (sock, _other) = channel::key_socketpair().expect("request socketpair");
        let mut live = Vec::new();
        handle(
            &packet,
            fds,
            &key,
            &mut Keep {
                sock: &sock,
                live: &mut live,
            },
        );
        let forked: Vec<u32> = live.iter().map(|l| l.pid).collect();
        for l in live {
            psys::kill_and_reap(l.pid);
        }
        assert!(forked.is_empty(), "forked {forked:?} for nobody");
    }
}
