//! This node's identity and its claim on the data directory.
//!
//! PostgreSQL records, per node id, the last flush batch it applied; that record is what makes
//! a retried flush exactly-once. The id therefore belongs to the data directory (whose journal
//! holds the batches), is created once, and two processes must never share it: the data
//! directory is locked for the life of the process.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The file in the data directory that holds the node id.
const NODE_ID_FILE: &str = "node-id";
/// The file in the data directory that a running node holds an exclusive `flock` on.
const LOCK_FILE: &str = "lock";

/// A node id: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the characters and length of a node id.
pub fn validate_node_id(s: &str) -> Result<(), String> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if s.is_empty() || s.len() > 64 || !ok_chars {
        return Err("a node id is 1 to 64 characters of letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "data directory {0} is in use by another tally process (two nodes must not share a data directory)"
    )]
    Locked(PathBuf),
    #[error(
        "data directory {dir} belongs to node id `{stored}`, not `{requested}`; use another data directory for another node"
    )]
    NodeIdMismatch {
        dir: PathBuf,
        stored: String,
        requested: String,
    },
    #[error("{path} holds an invalid node id: {reason}")]
    BadNodeId { path: PathBuf, reason: String },
}

/// The data directory, locked by this process until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    // Held open for its flock; closing it releases the lock (also when the process dies).
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, failing at once if another process
    /// holds it.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io_err = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        create_dir_durably(path).map_err(io_err)?;
        let path = fs::canonicalize(path).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                DataDirError::Locked(path)
            } else {
                io_err(err)
            });
        }
        Ok(DataDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node id kept in this directory. When `requested` is given it must match the stored
    /// id (or becomes it, on first use); otherwise a random id is created on first use.
    pub fn node_id(&self, requested: Option<&str>) -> Result<NodeId, DataDirError> {
        let file = self.path.join(NODE_ID_FILE);
        let io_err = |source| DataDirError::Io {
            path: file.clone(),
            source,
        };
        match fs::read_to_string(&file) {
            Ok(text) => {
                let stored = text.trim().to_owned();
                validate_node_id(&stored).map_err(|reason| DataDirError::BadNodeId {
                    path: file.clone(),
                    reason,
                })?;
                match requested {
                    Some(r) if r != stored => Err(DataDirError::NodeIdMismatch {
                        dir: self.path.clone(),
                        stored,
                        requested: r.to_owned(),
                    }),
                    _ => Ok(NodeId(stored)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = match requested {
                    Some(r) => r.to_owned(),
                    None => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
                };
                write_durably(&self.path, NODE_ID_FILE, format!("{id}\n").as_bytes())
                    .map_err(io_err)?;
                Ok(NodeId(id))
            }
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Creates `path` and any missing parents, and makes each new directory's entry durable in its
/// parent: a data directory that a power cut forgets would take the node id and the journal
/// with it.
fn create_dir_durably(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(dir);
        at = dir.parent();
    }
    fs::create_dir_all(path)?;
    for dir in missing.iter().rev() {
        let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent,
            None => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Writes a small file so that after a crash it is either absent or complete: write to a
/// temporary name, fsync, rename, fsync the directory.
fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_created_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap().node_id(None).unwrap();
        let again = DataDir::open(tmp.path()).unwrap().node_id(None).unwrap();
        assert_eq!(first, again);
        validate_node_id(first.as_str()).unwrap();
    }

    #[test]
    fn requested_node_id_must_match_the_stored_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(dir.node_id(Some("a-1")).unwrap().as_str(), "a-1");
        assert_eq!(dir.node_id(Some("a-1")).unwrap().as_str(), "a-1");
        let err = dir.node_id(Some("b-2")).unwrap_err();
        assert!(matches!(err, DataDirError::NodeIdMismatch { .. }), "{err}");
    }

    #[test]
    fn a_data_directory_has_one_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let held = DataDir::open(tmp.path()).unwrap();
        let err = DataDir::open(tmp.path()).unwrap_err();
        assert!(matches!(err, DataDirError::Locked(_)), "{err}");
        drop(held);
        DataDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn node_id_rules() {
        assert!(validate_node_id("node-1.eu_west").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("has space").is_err());
        assert!(validate_node_id(&"x".repeat(65)).is_err());
    }
}
