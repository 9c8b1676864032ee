//! Fault-injection points for crash tests.
//!
//! With the `fault-injection` cargo feature (enabled for the test suite only), a point named in
//! the environment variable `TALLY_FAULT_POINT` kills the process with SIGKILL when reached,
//! exactly as `kill -9` would at that instant. Without the feature, a point compiles to
//! nothing.

/// Kills the process here if `TALLY_FAULT_POINT` names this point (feature
/// `fault-injection` only).
#[inline(always)]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    armed::point(name);
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<String>> = OnceLock::new();

    pub fn point(name: &str) {
        let armed = ARMED.get_or_init(|| std::env::var("TALLY_FAULT_POINT").ok());
        if armed.as_deref() == Some(name) {
            eprintln!("fault injection: killing the process at {name}");
            // SAFETY: raising a signal on our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}
