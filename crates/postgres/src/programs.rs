//! Running PostgreSQL's programs and reading what they say: an isolated environment, checked
//! exit statuses, and the tails of their output and of the server log for error messages.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tokio_postgres::{Client, Config, NoTls};

use crate::error::ManagedError;

pub(crate) const LOG_TAIL_LINES: usize = 20;

pub(crate) const OUTPUT_TAIL_LINES: usize = 10;

/// The last `count` non-empty lines of `text`, joined into one line.
pub(crate) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    if tail.is_empty() {
        "(nothing)".to_string()
    } else {
        tail.join(" | ")
    }
}

/// The last lines of a log, reading only what was appended after `since` when given.
pub(crate) fn log_tail(path: &Path, since: Option<u64>) -> String {
    const MAX_READ: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return "(no log written)".to_string();
    };
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let start = since
        .filter(|&since| since <= len)
        .unwrap_or(0)
        .max(len.saturating_sub(MAX_READ));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return "(log unreadable)".to_string();
    }
    last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES)
}

pub(crate) fn output_tail(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    last_lines(&text, OUTPUT_TAIL_LINES)
}

/// The user's environment must not redirect the server programs (PGDATA, PGHOST, PGPORT, ...)
/// nor change the language of their messages, which errors quote.
pub(crate) fn isolate_environment(command: &mut Command, bindir: &Path) {
    let path = std::env::join_paths([bindir, Path::new("/usr/bin"), Path::new("/bin")])
        .unwrap_or_else(|_| OsString::from("/usr/bin:/bin"));
    command
        .env_clear()
        .env("PATH", path)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .stdin(Stdio::null());
}

pub(crate) fn run_checked(mut command: Command, description: &str) -> Result<Output, ManagedError> {
    let program = PathBuf::from(command.get_program());
    let output = command
        .output()
        .map_err(|cause| ManagedError::Spawn { program, cause })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ManagedError::Command {
            command: description.to_string(),
            status: output.status,
            output: output_tail(&output),
        })
    }
}

/// One line for a tokio-postgres error: its own Display says only "db error" and the like.
pub(crate) fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `work` to completion on a private current-thread runtime in a scoped thread, so the
/// blocking API can talk to the server whether or not its caller is inside a tokio runtime
/// (where `block_on` would panic).
pub(crate) fn block_on_private<T: Send>(work: impl Future<Output = T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(work))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

pub(crate) async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Errors here surface on the client's next request; the task only drives the socket.
        let _ = connection.await;
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_makes_one_line_of_the_tail() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 5), "(nothing)");
    }
}
