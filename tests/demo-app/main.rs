//! A tiny app for the self-patching tests (`tests/tests/self_patch.rs` compiles it with
//! `rustc`, once per version: `DEMO_VERSION=2.0.0 rustc ...`). No dependencies.
//!
//! `demo-app --app-dir APP --control DIR` appends lines to `DIR/log`:
//! `start pid=P version=V`, then every 20 ms it reads `APP/resources/message.txt` and logs
//! `resource pid=P version=V content=C` when it changes. Requests are files in `DIR`:
//! - `reload`: re-read the resource now, log `reloaded pid=P content=C` (what `--notify` does);
//! - `update`: one argument per line, the update command; the app runs it, logs
//!   `update-done pid=P status=S outcome=O`, and exits when the outcome is `handed_over`;
//! - `stop`: exit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn version() -> &'static str {
    option_env!("DEMO_VERSION").unwrap_or("1.0.0")
}

fn log(control: &Path, line: &str) {
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(control.join("log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| -> PathBuf {
        let i = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        PathBuf::from(&args[i + 1])
    };
    let app = get("--app-dir");
    let control = get("--control");
    let pid = std::process::id();
    let v = version();
    log(&control, &format!("start pid={pid} version={v}"));
    let resource = app.join("resources/message.txt");
    let mut last: Option<String> = None;
    loop {
        let now = fs::read_to_string(&resource)
            .ok()
            .map(|s| s.trim().to_string());
        if now != last {
            log(
                &control,
                &format!(
                    "resource pid={pid} version={v} content={}",
                    now.clone().unwrap_or_default()
                ),
            );
            last = now;
        }
        if fs::remove_file(control.join("reload")).is_ok() {
            let c = fs::read_to_string(&resource).unwrap_or_default();
            log(
                &control,
                &format!("reloaded pid={pid} content={}", c.trim()),
            );
        }
        if let Ok(cmd) = fs::read_to_string(control.join("update")) {
            let _ = fs::remove_file(control.join("update"));
            let argv: Vec<&str> = cmd.lines().collect();
            let out = Command::new(argv[0]).args(&argv[1..]).output();
            let (status, stdout, stderr) = match out {
                Ok(o) => (
                    o.status.to_string(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                ),
                Err(e) => (format!("cannot start: {e}"), String::new(), String::new()),
            };
            let outcome = if stdout.contains("\"outcome\":\"handed_over\"") {
                "handed_over"
            } else if stdout.contains("\"outcome\":\"in_place\"") {
                "in_place"
            } else {
                "other"
            };
            log(
                &control,
                &format!("update-output {}", stdout.replace('\n', " | ")),
            );
            log(
                &control,
                &format!("update-stderr {}", stderr.replace('\n', " | ")),
            );
            log(
                &control,
                &format!("update-done pid={pid} status={status} outcome={outcome}"),
            );
            if outcome == "handed_over" {
                log(&control, &format!("exiting pid={pid} for self-patch"));
                return;
            }
        }
        if control.join("stop").exists() {
            let _ = fs::remove_file(control.join("stop"));
            log(&control, &format!("stopped pid={pid}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
