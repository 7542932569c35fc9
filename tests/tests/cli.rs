//! The command-line conventions of the four binaries, run for real: every command's `--help`
//! against a reviewed snapshot (`tests/tests/snapshots/`), completions and man pages, errors
//! as JSON with the documented exit codes, the `PATCHKIT_*` environment fallbacks (signing in
//! CI without key files on disk) and `-q` / `-v` / `RUST_LOG`.
//!
//! A changed `--help` fails here (under `CI=true` insta never accepts a change): review it with
//! `cargo insta review`, or `INSTA_UPDATE=always cargo test -p e2e-tests --test cli` and `git
//! diff tests/tests/snapshots/`.

use std::process::{Command, Output};

use e2e_tests::{bin, cmd, run, World};

const BINARIES: [&str; 4] = [
    "patch-create",
    "patch-apply",
    "patch-server",
    "self-patcher",
];

/// The variables the binaries read, removed so that the machine's environment does not change
/// what the tests see.
const ENV: [&str; 11] = [
    "PATCHKIT_REPO",
    "PATCHKIT_PUBLIC_KEY",
    "PATCHKIT_SIGNING_KEY",
    "PATCHKIT_ROOT_KEY",
    "PATCHKIT_APP_DIR",
    "PATCHKIT_SERVER",
    "PATCHKIT_DB",
    "PATCHKIT_CA_CERT",
    "PATCHKIT_LOG",
    "RUST_LOG",
    "COLUMNS",
];

/// A command for `name` with a clean environment for our variables.
fn clean(name: &str) -> Command {
    let mut c = cmd(name);
    for v in ENV {
        c.env_remove(v);
    }
    c.env("NO_COLOR", "1");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The subcommands a `--help` lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.trim_end() == "Commands:" {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name != "help" {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Machine-specific text in a help (the binary's path, the version) replaced.
fn redact(text: &str, binary: &str) -> String {
    let path = bin(binary).display().to_string();
    text.replace(&path, &format!("[{binary}]"))
        .replace(env!("CARGO_PKG_VERSION"), "[version]")
}

/// `--help` of `path` (binary then subcommands) and, recursively, of its subcommands.
fn snapshot_tree(binary: &str, path: &mut Vec<String>, count: &mut usize) {
    let o = run(clean(binary).args(path.iter()).arg("--help"));
    assert!(
        o.status.success(),
        "{binary} {} --help failed: {}",
        path.join(" "),
        stderr(&o)
    );
    let help = stdout(&o);
    assert!(help.contains("Usage:"), "{binary} {path:?}: {help}");
    let name = std::iter::once(binary.to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join("__");
    insta::assert_snapshot!(name, redact(&help, binary));
    *count += 1;
    for sub in subcommands(&help) {
        path.push(sub);
        snapshot_tree(binary, path, count);
        path.pop();
    }
}

#[test]
fn every_commands_help_matches_its_snapshot() {
    let mut count = 0;
    for b in BINARIES {
        snapshot_tree(b, &mut Vec::new(), &mut count);
    }
    // Four binaries, each with its subcommands: a parse of `Commands:` that found nothing
    // would snapshot only the four top levels.
    assert!(count > 40, "only {count} helps found");
}

#[test]
fn help_lists_exit_codes_and_environment_variables() {
    for b in BINARIES {
        let help = stdout(&run(clean(b).arg("--help")));
        assert!(help.contains("Exit codes:"), "{b}: {help}");
        assert!(help.contains("2  usage"), "{b}: {help}");
        assert!(
            help.contains("-q, --quiet") && help.contains("-v, --verbose"),
            "{b}: {help}"
        );
    }
    let h = stdout(&run(clean("patch-create").args(["release", "--help"])));
    assert!(h.contains("[env: PATCHKIT_SIGNING_KEY]"), "{h}");
    let h = stdout(&run(clean("patch-apply").args(["apply", "--help"])));
    for v in ["PATCHKIT_REPO", "PATCHKIT_PUBLIC_KEY", "PATCHKIT_APP_DIR"] {
        assert!(h.contains(&format!("[env: {v}]")), "{v}: {h}");
    }
    // A value set in the environment is never shown, keys least of all.
    let h = stdout(&run(clean("patch-create")
        .args(["resign", "--help"])
        .env("PATCHKIT_SIGNING_KEY", "{\"very\": \"secret-value\"}")));
    assert!(!h.contains("secret-value"), "{h}");
    let h = stdout(&run(clean("patch-server")
        .args(["serve", "--help"])
        .env("PATCHKIT_DB", "postgres://u:db-password@h/db")));
    assert!(!h.contains("db-password"), "{h}");
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    for b in BINARIES {
        let help = stdout(&run(clean(b).arg("--help")));
        let subs = subcommands(&help);
        assert!(subs.contains(&"completions".to_string()), "{b}: {subs:?}");
        let o = run(clean(b).args(["completions", "bash"]));
        assert!(o.status.success(), "{b}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains("complete -F"), "{b}: {script}");
        for s in &subs {
            assert!(script.contains(s.as_str()), "{b} bash completion lacks {s}");
        }
        for shell in ["zsh", "fish", "powershell"] {
            let o = run(clean(b).args(["completions", shell]));
            assert!(o.status.success() && o.stdout.len() > 200, "{b} {shell}");
        }
        let man = dir.path().join(b);
        let o = run(clean(b).args(["man", "--dir"]).arg(&man));
        assert!(o.status.success(), "{b}: {}", stderr(&o));
        let top = std::fs::read_to_string(man.join(format!("{b}.1"))).expect("top man page");
        assert!(top.contains(".TH"), "{b}: {top}");
        for s in &subs {
            let page = man.join(format!("{b}-{s}.1"));
            let text = std::fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            assert!(text.contains(".SH"), "{}", page.display());
            assert!(top.contains(s.as_str()), "{b}.1 does not name {s}");
        }
    }
}

/// The one JSON object an error prints under `--json`.
fn json_error(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not one JSON object: {out:?}: {e}\nstderr: {}", stderr(o)));
    let code = v["error"]["exit_code"].as_i64().expect("exit_code");
    assert_eq!(Some(code as i32), o.status.code(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["kind"].is_string(), "{v}");
    v
}

#[test]
fn errors_under_json_are_one_object_with_the_documented_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A run-time error: exit 1, the kind named after the library's error.
    let o = run(clean("patch-apply")
        .args(["check", "--json", "--app-dir"])
        .arg(d.join("app"))
        .arg("--repo")
        .arg(d.join("no-repo"))
        .arg("--public-key")
        .arg(d.join("missing.pub")));
    let v = json_error(&o);
    assert_eq!(v["error"]["exit_code"], 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing.pub")),
        "{v}"
    );
    // stderr keeps the text for people and logs.
    assert!(stderr(&o).contains("error: "), "{}", stderr(&o));
    // A usage error: exit 2, kind usage, also as JSON.
    let o = run(clean("patch-apply").args(["check", "--json", "--no-such-flag"]));
    let v = json_error(&o);
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    assert_eq!(v["error"]["exit_code"], 2, "{v}");
    // Neither --repo nor --bundle: a usage error found after parsing.
    let o = run(clean("patch-apply")
        .args(["check", "--json", "--app-dir"])
        .arg(d)
        .arg("--public-key")
        .arg(d.join("k.pub")));
    assert_eq!(json_error(&o)["error"]["kind"], "usage");
    // patch-create: a repository that does not verify.
    let o = run(clean("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(d.join("no-repo"))
        .arg("--public-key")
        .arg(d.join("missing.pub")));
    assert_eq!(json_error(&o)["error"]["exit_code"], 1);
    // patch-server and self-patcher.
    let o = run(clean("patch-server").args(["apps", "--json", "--server", "http://127.0.0.1:9"]));
    assert_eq!(json_error(&o)["error"]["exit_code"], 1);
    let o = run(clean("self-patcher").args(["--json"]));
    assert_eq!(json_error(&o)["error"]["exit_code"], 2);
    // Durations carry their unit: a bare number is a usage error naming the flag.
    let o = run(clean("patch-apply")
        .args(["check", "--json", "--timeout", "30", "--app-dir"])
        .arg(d)
        .args(["--repo", "http://127.0.0.1:9", "--public-key", "k.pub"]));
    let v = json_error(&o);
    assert_eq!(v["error"]["exit_code"], 2, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--timeout")),
        "{v}"
    );
    // keygen reports with --json too, and refuses to overwrite, saying so once.
    let keys = d.join("keys");
    let o = run(clean("patch-create")
        .args(["keygen", "--json", "--out"])
        .arg(&keys));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("keygen json");
    assert!(
        v["secret"]
            .as_str()
            .is_some_and(|p| p.ends_with("release.key")),
        "{v}"
    );
    let o = run(clean("patch-create")
        .args(["keygen", "--json", "--out"])
        .arg(&keys));
    let m = json_error(&o)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(m.matches("refusing to overwrite").count(), 1, "{m}");
    // Without --json: text on stderr, nothing on stdout, same codes.
    let o = run(clean("patch-apply").args(["check", "--no-such-flag"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty() && stderr(&o).contains("error:"));
}

#[test]
fn ci_signs_and_clients_check_with_keys_from_the_environment() {
    let w = World::new(1);
    let secret = std::fs::read_to_string(&w.key).expect("key");
    let public = std::fs::read_to_string(&w.public).expect("pub");
    // No --key: the key's contents come from PATCHKIT_SIGNING_KEY.
    let o = run(clean("patch-create")
        .args([
            "release",
            "--name",
            "demo",
            "--level",
            "3",
            "--version",
            "1.0.0",
            "--repo",
        ])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[0])
        .env("PATCHKIT_SIGNING_KEY", &secret));
    assert!(o.status.success(), "{}", stderr(&o));
    // The repository verifies with the public key from PATCHKIT_PUBLIC_KEY (contents)...
    let o = run(clean("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .env("PATCHKIT_PUBLIC_KEY", &public));
    assert!(o.status.success(), "{}", stderr(&o));
    // ... and a client finds everything in the environment.
    let app = w.path("app");
    std::fs::create_dir_all(&app).expect("app dir");
    let o = run(clean("patch-apply")
        .args(["check", "--json"])
        .env("PATCHKIT_APP_DIR", &app)
        .env("PATCHKIT_REPO", &w.repo)
        .env("PATCHKIT_PUBLIC_KEY", &w.public));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["latest"], "1.0.0", "{v}");
    // A bad key in the environment is named by its variable, never printed.
    let o = run(clean("patch-create")
        .args(["resign", "--repo"])
        .arg(&w.repo)
        .env("PATCHKIT_SIGNING_KEY", "{\"keyval\": \"secret-bytes\"}"));
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("$PATCHKIT_SIGNING_KEY"), "{all}");
    assert!(!all.contains("secret-bytes"), "{all}");
    // The public key's contents are refused where a secret key is needed, and vice versa.
    let o = run(clean("patch-create")
        .args(["resign", "--repo"])
        .arg(&w.repo)
        .env("PATCHKIT_SIGNING_KEY", &public));
    assert!(
        stderr(&o).contains("is a public key file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn quiet_verbose_and_rust_log_choose_what_goes_to_stderr() {
    let (w, app) = World::with_app_at_v1();
    let check = |args: &[&str]| run(w.apply_cmd("check", &app).args(args));
    let quiet = check(&["-q"]);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", stderr(&quiet));
    let verbose = check(&["-v"]);
    assert!(verbose.status.success());
    assert!(stderr(&verbose).contains("phase:"), "{}", stderr(&verbose));
    // The libraries' tracing log: sqlx logs each statement at debug, shown when RUST_LOG asks
    // for it, and at -vvv (everything); not by default.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = |extra: &[&str], rust_log: Option<&str>| {
        let mut c = clean("patch-server");
        c.args(extra)
            .args(["token", "create", "--scope", "read", "--data"])
            .arg(dir.path());
        if let Some(l) = rust_log {
            c.env("RUST_LOG", l);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let default = token(&[], None);
    assert!(!default.contains("sqlx"), "{default}");
    let logged = token(&[], Some("sqlx=debug"));
    assert!(logged.contains("sqlx"), "{logged}");
    let traced = token(&["-vvv"], None);
    assert!(traced.contains("sqlx"), "{traced}");
    assert!(token(&["-q"], None).is_empty());
}
