//! What the agent gathers on the device for its server: the app's state document (from a
//! command, bounded in time and output, or from a file) and the log and crash files an
//! `upload-logs` command sends (newest first, size-capped, never through a symbolic link).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use formats::fleet::{MAX_STATE, MAX_UPLOAD};

/// Where the app's state document comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StateSource {
    /// No state document.
    #[default]
    None,
    /// The standard output of this shell command (`sh -c`).
    Command(String),
    /// The content of this file.
    File(PathBuf),
}

/// How long a `--state-cmd` may run.
pub const STATE_CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the state document: JSON, at most [`formats::fleet::MAX_STATE`] bytes; output that is
/// not JSON is sent as a JSON string. `Ok(None)` when there is no source.
pub fn read_state(src: &StateSource) -> Result<Option<serde_json::Value>, String> {
    let bytes = match src {
        StateSource::None => return Ok(None),
        StateSource::File(p) => {
            let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut out = Vec::new();
            f.take(MAX_STATE as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            out
        }
        StateSource::Command(cmd) => run_bounded(cmd, STATE_CMD_TIMEOUT, MAX_STATE)?,
    };
    if bytes.len() > MAX_STATE {
        return Err(format!(
            "state document longer than the limit of {MAX_STATE} bytes"
        ));
    }
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).trim_end().to_string())
    });
    let len = serde_json::to_vec(&v)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if len > MAX_STATE {
        return Err(format!(
            "state document longer than the limit of {MAX_STATE} bytes"
        ));
    }
    Ok(Some(v))
}

/// A hook's command line (`--state-cmd`, `--on-offer`), run by the platform's shell: `sh -c`
/// on Unix, `cmd /C` on Windows. Hooks are command lines written by the app's packager (pipes,
/// redirections and variables are expected to work), never text from the network.
pub fn shell_command(cmd: &str) -> Command {
    #[cfg(windows)]
    let mut c = {
        let mut c = Command::new("cmd");
        c.arg("/C");
        c
    };
    #[cfg(not(windows))]
    let mut c = {
        let mut c = Command::new("sh");
        c.arg("-c");
        c
    };
    c.arg(cmd);
    c
}

/// Runs `cmd` through [`shell_command`], keeping at most `max + 1` bytes of its standard output;
/// kills it after `timeout`. Output over `max` bytes and a failing exit status are errors.
pub fn run_bounded(cmd: &str, timeout: Duration, max: usize) -> Result<Vec<u8>, String> {
    let mut child = shell_command(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?} could not start: {e}"))?;
    let Some(out) = child.stdout.take() else {
        return Err(format!("{cmd:?}: no output pipe"));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = out.take(max as u64 + 1).read_to_end(&mut buf);
        let _ = tx.send(r.map(|_| buf));
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} ran longer than {} s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("{cmd:?}: {e}")),
        }
    };
    // A grandchild may still hold the pipe: the output is not waited for beyond a second.
    let out = rx
        .recv_timeout(Duration::from_secs(1))
        .map_err(|_| format!("{cmd:?}: output still open after it exited"))?
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    // Over the bound, the reader closed the pipe and the command may have died of SIGPIPE:
    // the bound is the cause worth reporting, not that exit status.
    if out.len() > max {
        return Err(format!("{cmd:?} wrote more than the limit of {max} bytes"));
    }
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status})"));
    }
    Ok(out)
}

/// Most files one `upload-logs` considers.
pub const MAX_FILES: usize = 32;

/// A file chosen for upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its path.
    pub path: PathBuf,
    /// Its size when it was listed; no more than this is sent.
    pub size: u64,
    /// Its modification time.
    pub modified: SystemTime,
}

/// What an `upload-logs` picked and what it skipped (path and reason).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Files to send, newest first, within the cap.
    pub files: Vec<Candidate>,
    /// Files left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Lists the files matching `globs` (`/var/log/app/*.log`, `logs/**/*.txt`) and the regular
/// files in `crash_dir`, newest first, and keeps as many as fit in `cap` bytes in total.
/// Symbolic links are never followed (neither as files nor as directories); they are listed
/// as skipped, as are files larger than what is left of the cap.
pub fn select_files(globs: &[String], crash_dir: Option<&Path>, cap: u64) -> Selection {
    let mut sel = Selection::default();
    let mut found: Vec<Candidate> = Vec::new();
    for g in globs {
        let (base, pattern, depth) = split_glob(g);
        let matcher = match globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
        {
            Ok(m) => m.compile_matcher(),
            Err(e) => {
                sel.skipped.push((g.clone(), format!("not a glob: {e}")));
                continue;
            }
        };
        walk(&base, depth, &mut found, &mut sel, |p| matcher.is_match(p));
    }
    if let Some(d) = crash_dir {
        walk(d, 8, &mut found, &mut sel, |_| true);
    }
    keep_newest(found, &mut sel, MAX_FILES, cap);
    sel
}

/// Most crash files attached to one crash report.
pub const MAX_CRASH_FILES: usize = 8;

/// The regular files of `crash_dir` written since `since` (a crash's files: they appeared or
/// changed while the crashed process ran), newest first, at most [`MAX_CRASH_FILES`] and `cap`
/// bytes in total; symbolic links are listed as skipped, never followed.
pub fn select_crash_files(crash_dir: &Path, since: SystemTime, cap: u64) -> Selection {
    let mut sel = Selection::default();
    let mut found: Vec<Candidate> = Vec::new();
    walk(crash_dir, 8, &mut found, &mut sel, |_| true);
    found.retain(|c| c.modified >= since);
    keep_newest(found, &mut sel, MAX_CRASH_FILES, cap);
    sel
}

/// Moves the newest of `found` into `sel.files`, at most `max_files` and `cap` bytes in total;
/// the others go to `sel.skipped` with the reason.
fn keep_newest(mut found: Vec<Candidate>, sel: &mut Selection, max_files: usize, cap: u64) {
    found.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.path.cmp(&b.path)));
    found.dedup_by(|a, b| a.path == b.path);
    let mut left = cap;
    for c in found {
        if sel.files.len() >= max_files {
            sel.skipped
                .push((c.path.display().to_string(), "too many files".into()));
        } else if c.size > left.min(MAX_UPLOAD) {
            sel.skipped.push((
                c.path.display().to_string(),
                format!(
                    "too large ({} bytes; {left} bytes left of the {cap}-byte cap)",
                    c.size
                ),
            ));
        } else {
            left -= c.size;
            sel.files.push(c);
        }
    }
}

/// The directory to walk for a glob (its part before the first wildcard), the glob itself,
/// and how deep to walk (unbounded with `**`).
fn split_glob(g: &str) -> (PathBuf, String, usize) {
    let p = Path::new(g);
    let mut base = PathBuf::new();
    let mut rest = 0;
    let mut wild = false;
    for c in p.components() {
        let s = c.as_os_str().to_string_lossy();
        if wild || s.contains(['*', '?', '[', '{']) {
            wild = true;
            rest += 1;
        } else {
            base.push(c);
        }
    }
    if !wild {
        // A plain path: that one file.
        let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
        return (parent, g.to_string(), 1);
    }
    let depth = if g.contains("**") { 64 } else { rest };
    (base, g.to_string(), depth)
}

/// Walks `dir` without following links, adding regular files `accept`ed by path.
fn walk(
    dir: &Path,
    depth: usize,
    found: &mut Vec<Candidate>,
    sel: &mut Selection,
    accept: impl Fn(&Path) -> bool,
) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .max_depth(depth)
        .into_iter()
        .filter_map(Result::ok)
        .take(100_000)
    {
        let path = if dir == Path::new(".") {
            e.path().strip_prefix(".").unwrap_or(e.path()).to_path_buf()
        } else {
            e.path().to_path_buf()
        };
        if e.depth() == 0 || !accept(&path) {
            continue;
        }
        let ft = e.file_type();
        if ft.is_symlink() {
            sel.skipped.push((
                path.display().to_string(),
                "symbolic link, not followed".into(),
            ));
        } else if ft.is_file() {
            if let Ok(m) = e.metadata() {
                found.push(Candidate {
                    path,
                    size: m.len(),
                    modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
}

/// Opens a listed file for upload without following a link in its last component, checks it
/// is still a regular file, and returns a reader of at most its listed size.
pub fn open_candidate(c: &Candidate) -> std::io::Result<std::io::Take<std::fs::File>> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let f = opts.open(&c.path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if m.len() < c.size {
        return Err(std::io::Error::other("shrank since it was listed"));
    }
    Ok(f.take(c.size))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn state_commands_are_bounded_in_time_and_output() {
        let v = read_state(&StateSource::Command("echo '{\"a\": 1}'".into())).unwrap();
        assert_eq!(v, Some(serde_json::json!({"a": 1})));
        let v = read_state(&StateSource::Command("echo plain words".into())).unwrap();
        assert_eq!(v, Some(serde_json::json!("plain words")));
        let e = read_state(&StateSource::Command("head -c 100000 /dev/zero".into())).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let t = Instant::now();
        let e = run_bounded("sleep 5", Duration::from_millis(300), 10).unwrap_err();
        assert!(e.contains("longer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(read_state(&StateSource::Command("exit 3".into())).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn selection_is_newest_first_capped_and_skips_links() {
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::write(logs.join("old.log"), vec![b'o'; 100]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(logs.join("new.log"), vec![b'n'; 100]).unwrap();
        std::fs::write(logs.join("big.log"), vec![b'b'; 5000]).unwrap();
        std::fs::write(logs.join("other.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", logs.join("evil.log")).unwrap();
        let g = format!("{}/*.log", logs.display());
        let sel = select_files(&[g], None, 1000);
        let names: Vec<_> = sel
            .files
            .iter()
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["new.log", "old.log"]);
        let skipped: Vec<_> = sel
            .skipped
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect();
        assert!(skipped
            .iter()
            .any(|s| s.contains("evil.log") && s.contains("symbolic")));
        assert!(skipped
            .iter()
            .any(|s| s.contains("big.log") && s.contains("too large")));
        let mut r = open_candidate(&sel.files[0]).unwrap();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len(), 100);
    }
}
