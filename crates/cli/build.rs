//! Names the commit the binary is built from, for `tally --version`: `git rev-parse` at build
//! time, or `unknown` outside a git checkout (a source archive).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TALLY_COMMIT={commit}");
    // A new commit moves a branch ref (or packed-refs); a checkout moves HEAD.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        println!("cargo:rerun-if-changed=../../.git/{path}");
    }
}
