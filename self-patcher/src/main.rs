//! `self-patcher`: finishes an update after the app exits.
//!
//! `patch-apply` stages and verifies an update that changes the app's own code, writes a plan
//! (`APP/.patchkit/self-patch.json`, docs/format.md §8.3) and starts `self-patcher --plan FILE`
//! detached. It waits for the app to exit, moves the staged files into place under the app's
//! journal (a re-run after a crash resumes), records the new version and relaunches the app.

use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
self-patcher: finish an update after the app exits

Usage: self-patcher --plan FILE

Waits for the process named in the plan to exit (with the plan's timeout), moves the staged
files into place under the app's journal (each step a rename, everything it replaces kept in
APP/.patchkit/backup), records the new version in APP/.patchkit/installed.json and runs the
plan's relaunch command. Running it again on the same plan after a crash resumes and skips
the steps already done. If a step fails, every step is undone, the app is relaunched at its
old version and the error names the file.

The plan is read again under self-patcher's lock: if an updater withdrew or replaced it
meanwhile, nothing is changed. If the app does not exit within the plan's timeout, nothing is
changed and the timeout is recorded (APP/.patchkit/self-patch.timed-out.json): the next
`patch-apply apply` or `rollback` drops the plan with a warning.

Options:
  --plan FILE   the plan written by `patch-apply apply --hand-over`
  -h, --help    print this help
  -V, --version print the version
";

fn parse() -> Result<PathBuf, String> {
    let mut args = std::env::args_os().skip(1);
    let mut plan = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-h" | "--help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Some("-V" | "--version") => {
                println!("self-patcher {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Some("--plan") => plan = Some(PathBuf::from(args.next().ok_or("--plan needs a file")?)),
            _ => return Err(format!("unexpected argument {a:?} (see --help)")),
        }
    }
    plan.ok_or_else(|| "--plan FILE is required (see --help)".to_string())
}

fn main() -> ExitCode {
    let plan = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let log = |line: &str| eprintln!("self-patcher: {line}");
    match self_patcher::runner::run_plan(&plan, &log) {
        Ok(o) => {
            println!(
                "installed {} ({} steps{})",
                o.version,
                o.actions_run,
                if o.resumed { ", resumed" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
