//! PostgreSQL's server programs (`pg_ctl`, `pg_basebackup`) for the tests that stop, start,
//! promote or copy a server themselves: found where `.ci/pg-cluster` finds them
//! (`.ci/lib/pg-bindir.sh`), so a test drives the same installation that started its cluster.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of PostgreSQL's server program `name`: in `pg_config --bindir` when that holds it,
/// else in the newest `/usr/lib/postgresql/<version>/bin` (pg_config lives in libpq-dev, which
/// a machine with the server alone may lack).
pub fn program(name: &str) -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name))
        .filter(|path| path.is_file());
    from_pg_config.unwrap_or_else(|| {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server programs in /usr/lib/postgresql")
            .map(|entry| entry.unwrap().path())
            // By version as a number, so 10 comes after 9.
            .max_by_key(|dir| {
                dir.file_name()
                    .and_then(|name| name.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("a PostgreSQL version in /usr/lib/postgresql");
        newest.join("bin").join(name)
    })
}

/// A command for server program `name`, run as the `postgres` OS user when the tests run as
/// root (the server refuses to run as root), as ourselves otherwise.
pub fn command(name: &str) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program(name));
        command
    } else {
        Command::new(program(name))
    }
}

/// Runs server program `name` with `args` and returns its output; fails the test, with what
/// the program printed, unless it succeeds. Its output is captured, so a `pg_ctl start` needs
/// `-l LOGFILE` (the server would otherwise hold the pipe open and this would never return).
pub fn run<S: AsRef<OsStr>>(name: &str, args: impl IntoIterator<Item = S>) -> Output {
    let args: Vec<S> = args.into_iter().collect();
    let output = command(name)
        .args(&args)
        .output()
        .unwrap_or_else(|err| panic!("run {name}: {err}"));
    let shown: Vec<_> = args
        .iter()
        .map(|arg| arg.as_ref().to_string_lossy())
        .collect();
    assert!(
        output.status.success(),
        "{name} {shown:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
