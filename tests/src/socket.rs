//! Waiting for a server to listen on its unix socket.
//!
//! The socket file appears at `bind()`, a moment before `listen()`, and a daemon killed with
//! SIGKILL leaves its old file behind: a file that exists says nothing about whether anyone
//! accepts on it. These helpers wait until `connect()` succeeds, within a deadline, and panic
//! with the socket, the last connect error and the server's log otherwise.

use std::{
    io,
    os::unix::net::UnixStream,
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

/// How long a server gets to start listening, unless a caller says otherwise.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the sockets are tried.
const POLL: Duration = Duration::from_millis(20);

/// The first of `sockets` that does not accept a connection, with the error.
fn not_listening<'a>(sockets: &[&'a Path]) -> Option<(&'a Path, io::Error)> {
    sockets
        .iter()
        .find_map(|s| UnixStream::connect(s).err().map(|e| (*s, e)))
}

/// Panics once `timeout` has passed since `start`, naming the socket, the error and the log.
fn give_up_after(
    what: &str,
    start: Instant,
    timeout: Duration,
    socket: &Path,
    err: &io::Error,
    log: &impl Fn() -> String,
) {
    assert!(
        start.elapsed() < timeout,
        "{what} does not accept connections on {} after {:?} (last error: {err}):\n{}",
        socket.display(),
        timeout,
        log()
    );
}

/// Waits until every one of `sockets` accepts a connection. `what` names the server in the
/// panic message; `child`, when the server is a process of the test, makes an early exit fail at
/// once with its status; `log` returns its log (stderr) for the message.
pub fn wait_until_listening(
    what: &str,
    sockets: &[&Path],
    mut child: Option<&mut Child>,
    log: impl Fn() -> String,
    timeout: Duration,
) {
    let start = Instant::now();
    while let Some((socket, err)) = not_listening(sockets) {
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            panic!(
                "{what} exited ({status}) before listening on {}:\n{}",
                socket.display(),
                log()
            );
        }
        give_up_after(what, start, timeout, socket, &err, &log);
        std::thread::sleep(POLL);
    }
}

/// [`wait_until_listening`] for a server running as a task of the caller's tokio runtime: it
/// sleeps with tokio, so a current-thread runtime keeps serving meanwhile.
pub async fn wait_until_listening_async(what: &str, sockets: &[&Path], log: impl Fn() -> String, timeout: Duration) {
    let start = Instant::now();
    while let Some((socket, err)) = not_listening(sockets) {
        give_up_after(what, start, timeout, socket, &err, &log);
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixDatagram, UnixListener};

    use super::*;

    #[test]
    fn a_bound_socket_that_does_not_listen_yet_is_not_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A socket file nobody accepts on, as a killed server leaves it. Not a dropped stream
        // listener: a process forked meanwhile by another test holds its fd until it execs,
        // and connects succeed until then (seen once in CI).
        drop(UnixDatagram::bind(&path).unwrap());
        assert!(path.exists());
        let err = std::panic::catch_unwind(|| {
            wait_until_listening(
                "server",
                &[&path],
                None,
                || "its log".into(),
                Duration::from_millis(100),
            )
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with(&format!(
                "server does not accept connections on {} after 100ms (last error: ",
                path.display()
            )) && msg.ends_with(":\nits log"),
            "{msg}"
        );

        std::fs::remove_file(&path).unwrap();
        let _listener = UnixListener::bind(&path).unwrap();
        wait_until_listening("server", &[&path], None, String::new, Duration::from_secs(5));
    }

    #[test]
    fn a_server_that_exits_fails_at_once_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let mut child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let start = Instant::now();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until_listening("sh", &[&path], Some(&mut child), || "LOG".into(), LISTEN_TIMEOUT)
        }))
        .unwrap_err();
        assert!(start.elapsed() < LISTEN_TIMEOUT);
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("sh exited (exit status: 3) before listening on"),
            "{msg}"
        );
        assert!(msg.ends_with(":\nLOG"), "{msg}");
    }
}
