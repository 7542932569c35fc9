//! `self-patcher`: finishes an update after the app exits.
//!
//! `patch-apply` stages and verifies an update that changes the app's own code, writes a plan
//! (`APP/.patchkit/self-patch.json`, docs/format.md §8.3) and starts `self-patcher --plan FILE`
//! detached. It waits for the app to exit, moves the staged files into place under the app's
//! journal (a re-run after a crash resumes), records the new version and relaunches the app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Finish an update after the app exits.
///
/// Waits for the process named in the plan to exit (with the plan's timeout), moves the staged
/// files into place under the app's journal (each step a rename, everything it replaces kept in
/// APP/.patchkit/backup), records the new version in APP/.patchkit/installed.json and runs the
/// plan's relaunch command. Running it again on the same plan after a crash resumes and skips
/// the steps already done. If a step fails, every step is undone, the app is relaunched at its
/// old version and the error names the file.
///
/// The plan is read again under self-patcher's lock: if an updater withdrew or replaced it
/// meanwhile, nothing is changed. If the app does not exit within the plan's timeout, nothing is
/// changed and the timeout is recorded (APP/.patchkit/self-patch.timed-out.json): the next
/// `patch-apply apply` or `rollback` drops the plan with a warning.
#[derive(Parser)]
#[command(
    name = "self-patcher",
    version,
    args_conflicts_with_subcommands = true,
    after_help = cli_support::EXIT_CODES
)]
struct Cli {
    /// The plan written by `patch-apply apply --hand-over`.
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    #[command(flatten)]
    verbosity: cli_support::Verbosity,
    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(Subcommand)]
enum Tool {
    #[command(flatten)]
    Tool(cli_support::ToolCmd),
}

fn run() -> Result<()> {
    let cli: Cli = cli_support::parse();
    cli_support::init_logging(&cli.verbosity, false);
    if let Some(Tool::Tool(t)) = cli.tool {
        return t.run::<Cli>();
    }
    let Some(plan) = cli.plan else {
        return Err(cli_support::usage("--plan FILE is required (see --help)"));
    };
    let quiet = cli.verbosity.level() == cli_support::Level::Quiet;
    let log = |line: &str| {
        if !quiet {
            eprintln!("self-patcher: {line}");
        }
    };
    let o = self_patcher::runner::run_plan(&plan, &log)?;
    println!(
        "installed {} ({} steps{})",
        o.version,
        o.actions_run,
        if o.resumed { ", resumed" } else { "" }
    );
    Ok(())
}

fn main() -> ExitCode {
    cli_support::finish(run(), cli_support::no_kind)
}
