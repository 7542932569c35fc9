//! What the four patchkit binaries (`patch-create`, `patch-apply`, `patch-server`,
//! `self-patcher`) share, so that each has it once and the same way:
//!
//! - [`Verbosity`]: `-q` / `-v` / `-vv`, and [`init_logging`], which shows the libraries'
//!   `tracing` output on stderr at the chosen level (`RUST_LOG` wins when set);
//! - [`ToolCmd`]: the `completions SHELL` and `man --dir DIR` subcommands, generated from the
//!   clap definitions;
//! - [`parse`] and [`finish`]: usage errors and run-time errors as text on stderr, or as one
//!   JSON object on stdout too when the command line has `--json`, with the exit codes of
//!   [`EXIT_CODES`].
//!
//! Only binaries depend on this crate; it is not published.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgAction, CommandFactory, Parser};

/// Exit status of a command that succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status of a command that failed (the message says why).
pub const EXIT_ERROR: u8 = 1;
/// Exit status of a command line that cannot be run: an unknown flag, a missing or malformed
/// value, a flag that needs another one.
pub const EXIT_USAGE: u8 = 2;

/// The exit codes and the JSON error form, for each binary's `--help` (`after_help`).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error: the command failed (the message names the file, URL or version at fault)
  2  usage: the command line is wrong (unknown flag, missing or malformed value)

With --json an error is also printed on stdout, as one JSON object (stderr keeps the text):
  {\"error\": {\"kind\": \"...\", \"message\": \"...\", \"exit_code\": N}}";

/// `-q` and `-v`: how much besides the result goes to stderr. Flatten it into a binary's
/// top-level parser (`#[command(flatten)]`); the flags are global, so they may follow the
/// subcommand.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// Print only errors: no progress, no warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more: each phase and request, and the libraries' log (-v: info, -vv: debug,
    /// -vvv: trace; RUST_LOG, when set, chooses instead).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The coarse level most output decisions need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `-q`: errors only.
    Quiet,
    /// The default: results, warnings and progress.
    Normal,
    /// `-v` or more: also phases, requests and details.
    Verbose,
}

impl Verbosity {
    /// The coarse level.
    pub fn level(&self) -> Level {
        if self.quiet {
            Level::Quiet
        } else if self.verbose > 0 {
            Level::Verbose
        } else {
            Level::Normal
        }
    }

    /// The `tracing` filter used when `RUST_LOG` is not set: errors only under `-q`, warnings by
    /// default, then info, debug and trace for our crates (dependencies stay at warn except at
    /// -vvv).
    pub fn default_filter(&self) -> String {
        const OURS: [&str; 6] = [
            "formats",
            "patch_apply",
            "patch_create",
            "patch_server",
            "self_patcher",
            "cli_support",
        ];
        let (base, ours) = match (self.quiet, self.verbose) {
            (true, _) => return "error".into(),
            (false, 0) => return "warn".into(),
            (false, 1) => ("warn", "info"),
            (false, 2) => ("warn", "debug"),
            (false, _) => return "trace".into(),
        };
        let mut f = base.to_string();
        for c in OURS {
            f.push_str(&format!(",{c}={ours}"));
        }
        f
    }
}

/// Installs the `tracing` subscriber that writes the libraries' log to stderr: the level
/// [`Verbosity::default_filter`] gives, or `RUST_LOG` when it is set (`PATCHKIT_LOG` is read
/// too, for servers started before `RUST_LOG` was honoured). `timestamps` for long-running
/// servers; a command's lines go without. A `RUST_LOG` that does not parse is reported and
/// the default is used.
pub fn init_logging(v: &Verbosity, timestamps: bool) {
    let from_env = ["RUST_LOG", "PATCHKIT_LOG"].iter().find_map(|name| {
        let s = std::env::var(name).ok()?;
        (!s.trim().is_empty()).then_some((*name, s))
    });
    let filter = match from_env {
        Some((name, s)) => match tracing_subscriber::EnvFilter::try_new(&s) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("warning: {name}={s:?} is not a log filter ({e}); using the default");
                tracing_subscriber::EnvFilter::new(v.default_filter())
            }
        },
        None => tracing_subscriber::EnvFilter::new(v.default_filter()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(v.verbose >= 2);
    // Only fails when a subscriber is installed already, which then keeps working.
    let _ = if timestamps {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// The subcommands every binary has for packaging: shell completions and man pages, both
/// generated from the binary's clap definitions. Flatten it into the binary's subcommand enum
/// (`#[command(flatten)] Tool(ToolCmd)`) and call [`ToolCmd::run`].
#[derive(clap::Subcommand, Debug)]
pub enum ToolCmd {
    /// Print a shell completion script to stdout (bash, zsh, fish, powershell, elvish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into DIR: one for the command and one for each subcommand
    /// (`NAME.1`, `NAME-SUBCOMMAND.1`, ...).
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

impl ToolCmd {
    /// Runs the subcommand for the binary whose parser is `C`.
    pub fn run<C: CommandFactory>(&self) -> Result<()> {
        let mut cmd = C::command();
        match self {
            ToolCmd::Completions { shell } => {
                let name = cmd.get_name().to_string();
                clap_complete::generate(*shell, &mut cmd, name, &mut std::io::stdout());
                Ok(())
            }
            ToolCmd::Man { dir } => {
                let written = write_man_pages(cmd, dir)?;
                eprintln!("wrote {written} man page(s) into {}", dir.display());
                Ok(())
            }
        }
    }
}

/// Writes one man page per command and subcommand into `dir`; returns how many.
fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let before = man_pages_in(dir)?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(man_pages_in(dir)?.saturating_sub(before))
}

fn man_pages_in(dir: &Path) -> Result<usize> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count())
}

/// Whether the command line asks for JSON output (`--json` before any `--`), so that even an
/// error found while parsing it is reported as JSON.
pub fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// A usage error found after parsing (a missing combination of flags): exit code 2, kind
/// `usage`. Build it with [`usage`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// An error for a command line that cannot be run as given (exit code 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Parses the command line into `C`. `--help` and `--version` print and exit 0; a usage error
/// exits 2, as text on stderr and, with `--json`, also as one JSON object on stdout.
pub fn parse<C: Parser>() -> C {
    match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let informational = matches!(e.kind(), K::DisplayHelp | K::DisplayVersion);
            if !informational && json_requested() {
                let mut message = first_line(&e.render().to_string());
                if message.is_empty() {
                    message = e.kind().as_str().unwrap_or("usage error").to_string();
                }
                print_json_error("usage", &message, EXIT_USAGE);
                let _ = e.print();
                std::process::exit(i32::from(EXIT_USAGE));
            }
            e.exit()
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

fn print_json_error(kind: &str, message: &str, exit_code: u8) {
    println!(
        "{}",
        serde_json::json!({"error": {"kind": kind, "message": message, "exit_code": exit_code}})
    );
}

/// Ends `main`: exit 0 for `Ok`; for an error, prints `error: MESSAGE` on stderr (the cause
/// chain once, see `formats::error::chain_text`) and, with `--json`, also one JSON object on
/// stdout, and exits 1 (2 for a [`Usage`] error). `kind_of` names the kind of a binary's own errors
/// (e.g. the library error's variant); `error` otherwise.
pub fn finish(result: Result<()>, kind_of: fn(&anyhow::Error) -> Option<&'static str>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::from(EXIT_OK);
    };
    let message = formats::error::chain_text(e.as_ref());
    let (kind, code) = if e.downcast_ref::<Usage>().is_some() {
        ("usage", EXIT_USAGE)
    } else {
        (kind_of(&e).unwrap_or("error"), EXIT_ERROR)
    };
    if json_requested() {
        print_json_error(kind, &message, code);
    }
    // The text stays on stderr with --json too: logs and people read it there.
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// For [`finish`] in a binary without kinds of its own.
pub fn no_kind(_: &anyhow::Error) -> Option<&'static str> {
    None
}

/// A key named on the command line by its file, or given through an environment variable
/// (`PATCHKIT_SIGNING_KEY`, `PATCHKIT_PUBLIC_KEY`, ...) as either a file path or the key
/// file's contents, so that CI can sign without key files on disk. A value that starts with
/// `{` (after blanks) is a key's contents. `Debug` never shows those contents.
#[derive(Clone)]
pub enum KeySource {
    /// A key file.
    File(PathBuf),
    /// A key file's contents.
    Inline(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

impl KeySource {
    /// The clap value parser.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        if s.trim().is_empty() {
            return Err("empty: give a key file or a key's contents".into());
        }
        Ok(if s.trim_start().starts_with('{') {
            KeySource::Inline(s.to_string())
        } else {
            KeySource::File(PathBuf::from(s))
        })
    }

    /// How error messages name the key: its path, or the variable `env` that holds it (never
    /// the contents).
    pub fn label(&self, env: &str) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Inline(_) => format!("${env}"),
        }
    }

    /// An error about this key as it should reach people: unchanged for a file, with
    /// [`KeySource::redact`] applied for contents from the environment.
    pub fn error<E>(&self, e: E) -> anyhow::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match self {
            KeySource::File(_) => anyhow::Error::new(e),
            KeySource::Inline(_) => anyhow::anyhow!(self.redact(&e.to_string())),
        }
    }

    /// `message` (an error about this key) with every quoted text that comes from the key's
    /// contents replaced by `"<redacted>"`: a parser's error may quote the value it refused.
    pub fn redact(&self, message: &str) -> String {
        let KeySource::Inline(contents) = self else {
            return message.to_string();
        };
        let mut out = String::with_capacity(message.len());
        let mut parts = message.split('"');
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        // Even pieces after the first are inside quotes.
        for (i, piece) in parts.enumerate() {
            out.push('"');
            if i % 2 == 0 && !piece.is_empty() && contents.contains(piece) {
                out.push_str("<redacted>");
            } else {
                out.push_str(piece);
            }
        }
        out
    }

    /// The key file's bytes.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            KeySource::File(p) => {
                std::fs::read(p).with_context(|| format!("cannot read key {}", p.display()))
            }
            KeySource::Inline(s) => Ok(s.as_bytes().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(quiet: bool, verbose: u8) -> Verbosity {
        Verbosity { quiet, verbose }
    }

    #[test]
    fn filters_by_level() {
        assert_eq!(v(true, 0).default_filter(), "error");
        assert_eq!(v(false, 0).default_filter(), "warn");
        assert!(v(false, 1).default_filter().contains("patch_apply=info"));
        assert!(v(false, 2).default_filter().starts_with("warn,"));
        assert!(v(false, 2).default_filter().contains("formats=debug"));
        assert_eq!(v(false, 3).default_filter(), "trace");
        for f in [v(false, 1), v(false, 2)] {
            assert!(tracing_subscriber::EnvFilter::try_new(f.default_filter()).is_ok());
        }
    }

    #[test]
    fn key_sources() {
        assert!(matches!(
            KeySource::parse(" {\"k\": 1}"),
            Ok(KeySource::Inline(_))
        ));
        assert!(matches!(
            KeySource::parse("keys/r.key"),
            Ok(KeySource::File(_))
        ));
        assert!(KeySource::parse(" ").is_err());
        let inline = KeySource::Inline("{\"private\": \"secret\"}".into());
        assert!(!format!("{inline:?}").contains("secret"));
        assert_eq!(
            inline.label("PATCHKIT_SIGNING_KEY"),
            "$PATCHKIT_SIGNING_KEY"
        );
        assert_eq!(
            inline.redact("invalid type: string \"secret\", expected \"x\" at 1"),
            "invalid type: string \"<redacted>\", expected \"x\" at 1"
        );
    }

    #[test]
    fn first_line_drops_the_prefix() {
        assert_eq!(
            first_line("error: unexpected argument '--x' found\n\nUsage: a\n"),
            "unexpected argument '--x' found"
        );
    }
}
