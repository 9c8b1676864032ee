//! Finding the PostgreSQL server programs installed on this machine, and their version.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::ManagedError;
use crate::programs::{isolate_environment, run_checked};

const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where the PostgreSQL server programs are, and which major version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory holding `initdb`, `pg_ctl` and `postgres`, symlinks resolved.
    pub bindir: PathBuf,
    /// The major version, as PostgreSQL writes it in `PG_VERSION`: "15", or "9.6" before 10.
    pub version: String,
}

impl PgBinaries {
    /// Finds `initdb`, `pg_ctl` and `postgres`: first on `PATH` (following symlinks to the
    /// directory that really holds all three), then through `pg_config --bindir`, then the
    /// newest of `/usr/lib/postgresql/*/bin` (Debian, Ubuntu) and `/usr/pgsql-*/bin` (RHEL).
    /// Fails with [`ManagedError::NotInstalled`], whose message says how to install them or
    /// to set `DATABASE_URL`.
    pub fn find() -> Result<PgBinaries, ManagedError> {
        let bindir = bindir_on_path()
            .or_else(bindir_from_pg_config)
            .or_else(newest_packaged_bindir)
            .ok_or_else(|| ManagedError::NotInstalled {
                searched: "on PATH, through pg_config, in /usr/lib/postgresql/*/bin or \
                           /usr/pgsql-*/bin"
                    .to_string(),
            })?;
        PgBinaries::in_dir(&bindir)
    }

    /// Uses the server programs in `bindir`, failing with [`ManagedError::NotInstalled`] when
    /// one of them is missing there.
    pub fn in_dir(bindir: &Path) -> Result<PgBinaries, ManagedError> {
        if !has_server_programs(bindir) {
            return Err(ManagedError::NotInstalled {
                searched: format!("in {}", bindir.display()),
            });
        }
        let version = server_version(bindir)?;
        Ok(PgBinaries {
            bindir: bindir.to_path_buf(),
            version,
        })
    }

    /// The path of one of the programs in [`PgBinaries::bindir`].
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

fn has_server_programs(dir: &Path) -> bool {
    SERVER_PROGRAMS
        .iter()
        .all(|program| is_executable_file(&dir.join(program)))
}

/// Symlinks on PATH (Homebrew's, or `/usr/local/bin/pg_ctl` pointing into a versioned
/// directory) are followed: `initdb` and `pg_ctl` look for `postgres` beside their real path.
fn bindir_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for program in SERVER_PROGRAMS {
            let candidate = dir.join(program);
            if !is_executable_file(&candidate) {
                continue;
            }
            if let Ok(real) = fs::canonicalize(&candidate)
                && let Some(real_dir) = real.parent()
                && has_server_programs(real_dir)
            {
                return Some(real_dir.to_path_buf());
            }
        }
    }
    None
}

fn bindir_from_pg_config() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let bindir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    has_server_programs(&bindir).then_some(bindir)
}

fn newest_packaged_bindir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|name| name.strip_prefix(prefix)) else {
                continue;
            };
            let Some(key) = version_key(version) else {
                continue;
            };
            let bindir = entry.path().join("bin");
            if has_server_programs(&bindir) {
                candidates.push((key, bindir));
            }
        }
    }
    candidates.into_iter().max().map(|(_, bindir)| bindir)
}

/// "9.6" → [9, 6], "15" → [15], so that versions sort numerically.
fn version_key(version: &str) -> Option<Vec<u32>> {
    version.split('.').map(|part| part.parse().ok()).collect()
}

fn server_version(bindir: &Path) -> Result<String, ManagedError> {
    let program = bindir.join("postgres");
    let mut command = Command::new(&program);
    command.arg("--version");
    isolate_environment(&mut command, bindir);
    let output = run_checked(command, "postgres --version")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_major_version(&text).ok_or_else(|| ManagedError::Command {
        command: "postgres --version".to_string(),
        status: output.status,
        output: format!("no version number in {:?}", text.trim()),
    })
}

/// The major version from `postgres --version` output such as
/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": "15"; "9.6" for 9.6.24.
fn parse_major_version(text: &str) -> Option<String> {
    let number = text
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    if major >= 10 {
        Some(major.to_string())
    } else {
        let minor = parts.next()??;
        Some(format!("{major}.{minor}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_is_read_from_postgres_version_output() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some("15".to_string())
        );
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 9.6.24"),
            Some("9.6".to_string())
        );
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some("17".to_string())
        );
        assert_eq!(parse_major_version("postgres (PostgreSQL)"), None);
    }

    #[test]
    fn versions_sort_numerically() {
        let mut versions = vec![version_key("9.6"), version_key("15"), version_key("10")];
        versions.sort();
        assert_eq!(
            versions,
            vec![version_key("9.6"), version_key("10"), version_key("15")]
        );
        assert_eq!(version_key("main"), None);
    }
}
