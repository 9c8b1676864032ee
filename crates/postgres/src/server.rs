//! The server process as seen from outside: its pid file, whether the postmaster lives, the
//! lock that serialises start and stop between processes, and whether it takes connections.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{ManagedError, io_error};

/// Whether `pid` is a live process working in `data_dir`, as a postmaster does. `kill(pid, 0)`
/// alone also succeeds for a zombie and, as root, for any process that reused the pid of a
/// crashed server.
pub(crate) fn postmaster_alive(pid: u32, data_dir: &Path) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let expected = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        // Unreadable for zombies, and for processes of other users (the server runs as us).
        fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == expected)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = data_dir;
        true
    }
}

/// The lines of `postmaster.pid` that say where a running server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PidFile {
    pub(crate) pid: u32,
    pub(crate) port: Option<u16>,
    pub(crate) socket_dir: Option<PathBuf>,
}

pub(crate) fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    let port = lines.get(3).and_then(|line| line.trim().parse().ok());
    let socket_dir = lines
        .get(4)
        .map(|line| line.trim())
        .filter(|line| line.starts_with('/'))
        .map(PathBuf::from);
    Some(PidFile {
        pid,
        port,
        socket_dir,
    })
}

/// An exclusive `flock` on the lock file beside the cluster, released when dropped.
pub(crate) struct ClusterLock {
    _file: File,
}

impl ClusterLock {
    pub(crate) fn acquire(path: &Path) -> Result<ClusterLock, ManagedError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error("open the lock file", path))?;
        loop {
            // SAFETY: the descriptor belongs to `file`, which lives as long as the lock.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(ClusterLock { _file: file });
            }
            let cause = io::Error::last_os_error();
            if cause.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("lock", path)(cause));
            }
        }
    }
}

/// What a wait for the server to accept connections found.
pub(crate) enum Readiness {
    Ready,
    /// The server process went away while we waited (it was stopping, or crashed).
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn pid_file_gives_pid_port_and_socket_dir() {
        let text = "4242\n/srv/tally/postgres\n1700000000\n5433\n/tmp/tally-pg-1\n\n  1234   5678\nready   \n";
        assert_eq!(
            parse_pid_file(text),
            Some(PidFile {
                pid: 4242,
                port: Some(5433),
                socket_dir: Some(PathBuf::from("/tmp/tally-pg-1")),
            })
        );
        assert_eq!(parse_pid_file("garbage"), None);
    }

    #[test]
    fn a_dead_process_is_not_a_postmaster() {
        let mut child = Command::new("true").spawn().expect("run true");
        let pid = child.id();
        child.wait().expect("wait for true");
        assert!(!postmaster_alive(pid, Path::new("/")));
        assert!(!postmaster_alive(0, Path::new("/")));
    }
}
