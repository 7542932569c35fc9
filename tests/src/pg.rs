//! A throwaway PostgreSQL cluster for the tests, from Debian's `postgresql` package: `initdb`
//! into a fresh directory, `pg_ctl start` on a free loopback port, one database, and
//! `pg_ctl stop` on drop. `initdb` and `pg_ctl` refuse to run as root, so as root they run as
//! the `postgres` user (`runuser -u postgres --`) on a directory it owns.
//!
//! Nothing is skipped: if PostgreSQL is not installed or does not start, [`PgCluster::start`]
//! panics with what went wrong, and the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; stopped and deleted on drop.
pub struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The directory of the PostgreSQL server binaries (`/usr/lib/postgresql/N/bin`, newest N).
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PATCHKIT_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql (test.sh does this)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgCluster {
    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn must(what: &str, c: &mut Command) -> Output {
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run {c:?}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {c:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Initialises and starts a cluster on a free loopback port with a database `fleet`.
    pub fn start() -> PgCluster {
        let bin = pg_bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("patchkit-pg")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir data");
        if as_postgres {
            // The temp dir must be traversable, the data dir owned by postgres.
            set_mode(dir.path(), 0o755);
            PgCluster::must(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&data),
            );
        }
        let mut pg = PgCluster {
            _dir: dir,
            data,
            bin,
            port: 0,
            as_postgres,
        };
        let data_s = pg.data.display().to_string();
        PgCluster::must(
            "initdb",
            pg.tool("initdb").args([
                "-D",
                &data_s,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
        );
        let mut last_err = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
                pg.port, data_s
            );
            let log = pg.data.join("server.log").display().to_string();
            let out = pg
                .tool("pg_ctl")
                .args([
                    "-D", &data_s, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
                ])
                .output()
                .expect("pg_ctl runs");
            if out.status.success() {
                PgCluster::must(
                    "createdb",
                    pg.tool("createdb").args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &pg.port.to_string(),
                        "-U",
                        "postgres",
                        "fleet",
                    ]),
                );
                return pg;
            }
            last_err = format!(
                "{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(pg.data.join("server.log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last_err}");
    }

    /// The URL of the test database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/fleet", self.port)
    }

    /// Restarts the cluster (`pg_ctl restart -m fast`: every connection is closed) on the
    /// same port and data.
    pub fn restart(&self) {
        let data_s = self.data.display().to_string();
        // `-l` again: without it the new postmaster would keep pg_ctl's output pipes open
        let log = self.data.join("server.log").display().to_string();
        PgCluster::must(
            "pg_ctl restart",
            self.tool("pg_ctl").args([
                "-D", &data_s, "-l", &log, "-m", "fast", "-w", "-t", "60", "restart",
            ]),
        );
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = PgCluster::must(
            "psql",
            self.tool("psql").args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "fleet",
                "-At",
                "-c",
                sql,
            ]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data_s = self.data.display().to_string();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data_s, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn set_mode(p: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}
