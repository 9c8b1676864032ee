//! A real headless Chromium (Debian's `chromium`), driven through the DevTools protocol over
//! the pipe `--remote-debugging-pipe` opens: the browser reads commands on its descriptor 3
//! and writes answers and events on its descriptor 4, each a JSON message ended by a NUL byte.
//! No WebDriver, no network port, no crate beyond serde_json.
//!
//! Each browser has a fresh profile directory, deleted with it, and the flags that keep it
//! from reaching out on its own (updates, sync, field trials), which a closed network refuses.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long one command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser program: `$TALLY_CHROMIUM`, else `chromium` (Debian), else `chromium-browser`.
fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_CHROMIUM") {
        return PathBuf::from(path);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "chromium is not installed: run scripts/test, which installs it (Debian: apt-get install \
         chromium), or name the program in TALLY_CHROMIUM"
    )
}

/// A pipe whose two ends are owned descriptors.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A headless Chromium with one page open.
pub struct Browser {
    child: Child,
    commands: File,
    messages: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    /// The page's session, to which page commands are addressed.
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, opens a blank page of `width` x `height` pixels and attaches to it.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = File::create(profile.path().join("chromium.log")).unwrap();
        // Commands go to the browser's descriptor 3, answers come from its descriptor 4.
        let (their_commands, our_commands) = pipe();
        let (our_messages, their_messages) = pipe();
        let (read_fd, write_fd) = (their_commands.as_raw_fd(), their_messages.as_raw_fd());
        let mut command = Command::new(program());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                "--remote-debugging-pipe",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2). The
        // descriptors are first copied above 4, so that neither dup2 overwrites the other's
        // source; dup2 clears close-on-exec on 3 and 4.
        unsafe {
            command.pre_exec(move || {
                let read = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((their_commands, their_messages));

        let (sender, messages) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(File::from(our_messages));
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: File::from(our_commands),
            messages,
            next_id: 0,
            session: String::new(),
            profile,
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
            .page(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends a command (to the page's session, or to the browser) and returns its result;
    /// panics on an error answer or none within [`COMMAND_TIMEOUT`].
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}{}", self.log()))
                .unwrap_or_else(|| panic!("chromium closed its pipe{}", self.log()));
            if message["id"] != json!(id) {
                continue; // an event, or the answer to an abandoned command
            }
            if let Some(error) = message.get("error") {
                panic!("chromium refused {method}: {error}");
            }
            return message["result"].clone();
        }
    }

    /// Sends a command to the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// Loads `url` and waits until the page and its scripts have loaded.
    pub async fn open(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
        self.wait_for("the page to load", "document.readyState === 'complete'")
            .await;
    }

    /// The value of a JavaScript expression in the page (awaited when it is a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// The text an element shows, by its id.
    pub async fn text(&mut self, id: &str) -> String {
        let expression = format!("document.getElementById({id:?}).textContent");
        self.eval(&expression)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Types `text` into the element with this id, as a keyboard would.
    pub async fn type_into(&mut self, id: &str, text: &str) {
        let focus = format!(
            "(() => {{ const e = document.getElementById({id:?}); e.value = ''; e.focus(); }})()"
        );
        self.eval(&focus).await;
        self.page("Input.insertText", json!({"text": text})).await;
    }

    /// Waits until `condition`, a JavaScript expression, is true in the page; panics after
    /// 30 s, naming `what`.
    pub async fn wait_for(&mut self, what: &str, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(&format!("!!({condition})")).await == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page shows:\n{}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .expect("a screenshot is base64")
    }

    /// What the browser wrote to its output, for a failure's message.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromium.log"));
        format!("; chromium's output:\n{}", log.unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, Chromium stops its own helper processes; killed, it may leave them.
        let close = json!({"id": 999_999_999, "method": "Browser.close"});
        let mut bytes = serde_json::to_vec(&close).unwrap();
        bytes.push(0);
        let _ = self.commands.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
