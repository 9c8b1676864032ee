//! The OS user the server runs as: `postgres` when Tally is root (PostgreSQL refuses to run as
//! root), else Tally's own; and running its programs as that user.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::error::{ManagedError, io_error};

/// The OS user that runs the server when Tally itself runs as root.
pub const SERVER_OS_USER: &str = "postgres";

/// The OS user the server runs as when Tally is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn server_user() -> Result<Option<ServerUser>, ManagedError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match lookup_user(SERVER_OS_USER)? {
        Some(user) => Ok(Some(user)),
        None => Err(ManagedError::NoServerUser),
    }
}

pub(crate) fn lookup_user(name: &str) -> Result<Option<ServerUser>, ManagedError> {
    let lookup_error = |cause| ManagedError::UserLookup {
        user: name.to_string(),
        cause,
    };
    let c_name = CString::new(name)
        .map_err(|_| lookup_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain old data; getpwnam_r fills it, pointing into `buffer`, which
        // outlives every read below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buffer.len() < (1 << 20) {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(lookup_error(io::Error::from_raw_os_error(rc)));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(ServerUser {
            name: name.to_string(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }));
    }
}

/// Whether a user with `uid` and primary group `gid` (and no supplementary groups, which the
/// server is started without) may enter a directory with these mode, owner and group.
pub(crate) fn can_search(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        true
    } else if owner == uid {
        mode & 0o100 != 0
    } else if group == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Prepares `command` to run as `user` when given. The working directory is `/` because the
/// caller's (under /root, say) may be closed to that user. Supplementary groups are dropped by
/// std itself: when a root parent sets a uid without explicit groups, the child calls
/// `setgroups(0, NULL)` before `setuid`.
pub(crate) fn run_as(command: &mut Command, user: Option<&ServerUser>) {
    command.current_dir("/");
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
}

/// Fails early, with a message saying so, when the server's user could not reach the cluster:
/// initdb would otherwise fail with a bare "permission denied".
pub(crate) fn check_reachable(
    parent: &Path,
    user: &ServerUser,
    dir: &Path,
) -> Result<(), ManagedError> {
    for ancestor in parent.ancestors() {
        let meta = fs::metadata(ancestor).map_err(io_error("inspect", ancestor))?;
        if !can_search(meta.mode(), meta.uid(), meta.gid(), user.uid, user.gid) {
            return Err(ManagedError::Unreachable {
                user: user.name.clone(),
                dir: dir.to_path_buf(),
                blocker: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs::{isolate_environment, run_checked};

    #[test]
    fn search_permission_follows_owner_group_other() {
        let (uid, gid) = (101, 104);
        assert!(!can_search(0o700, 0, 0, uid, gid), "/root-like directory");
        assert!(can_search(0o755, 0, 0, uid, gid));
        assert!(can_search(0o700, uid, 0, uid, gid));
        assert!(can_search(0o710, 0, gid, uid, gid));
        assert!(
            !can_search(0o701, 0, gid, uid, gid),
            "group bits apply, not other"
        );
        assert!(can_search(0o700, 0, 0, 0, 0), "root enters everything");
    }

    /// Only meaningful as root with a `postgres` user, which is how Tally runs in containers.
    #[test]
    fn server_programs_run_as_the_server_user_without_extra_groups() {
        let Ok(Some(user)) = server_user() else {
            eprintln!("skipped: not root, or no postgres user");
            return;
        };
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "id -u; id -G; pwd; env"]);
        isolate_environment(&mut command, Path::new("/usr/bin"));
        run_as(&mut command, Some(&user));
        let output = run_checked(command, "sh").expect("sh runs as the server user");
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], user.uid.to_string());
        assert_eq!(lines[1], user.gid.to_string(), "only the primary group");
        assert_eq!(lines[2], "/");
        assert!(!text.contains("PGDATA="));
        assert!(!text.contains("PGHOST="));
        assert!(text.contains("LC_ALL=C"));
    }
}
