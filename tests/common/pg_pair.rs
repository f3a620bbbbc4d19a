//! A primary and its streaming replica of one test's own, started with `.ci/pg-cluster` on
//! ports of that test (so it may split, demote or promote them without touching the servers
//! other suites share), stopped and deleted when dropped, whatever the test did to them.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/pg-cluster")
}

/// The running pair: its directory (`primary/`, `replica/` inside) and the URLs
/// `.ci/pg-cluster` printed for it.
pub struct Pair {
    pub dir: PathBuf,
    pub primary: String,
    pub replica: String,
    _parent: tempfile::TempDir,
}

impl Pair {
    /// Starts a pair on the port in the environment variable `port_var` (else
    /// `default_port`) and the next (or the two pairs after, if those are taken); fails the
    /// test, saying what it needs, if it cannot.
    pub fn start(port_var: &str, default_port: &str) -> Pair {
        let first: u16 = std::env::var(port_var)
            .unwrap_or_else(|_| default_port.to_owned())
            .parse()
            .expect("a port number");
        let parent = tempfile::tempdir().unwrap();
        // The servers run as the `postgres` user, which must reach the directory.
        let mut permissions = std::fs::metadata(parent.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o711);
        std::fs::set_permissions(parent.path(), permissions).unwrap();
        // Our default ports lie below Linux's ephemeral range, so no outgoing connection
        // takes one; a port held by something else of the machine's ("could not bind ...
        // Address already in use") makes the next pair of ports be tried, twice at most.
        let mut attempt = 0;
        let (dir, out, port) = loop {
            let port = first + 2 * attempt;
            let dir = parent.path().join(format!("pair-{port}"));
            let out = Command::new(script())
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .output()
                .expect("run .ci/pg-cluster");
            if out.status.success() || attempt == 2 {
                break (dir, out, port);
            }
            attempt += 1;
        };
        assert!(
            out.status.success(),
            "could not start a PostgreSQL pair (this test needs PostgreSQL 15 -- the script \
             installs it as root -- and ports {port} and the next free):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let export = |name: &str| {
            stdout
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .trim_matches(|c| c == '\'' || c == '"')
                .to_owned()
        };
        Pair {
            primary: export("SQLREPO_PG_URL"),
            replica: export("SQLREPO_PG_REPLICA_URL"),
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}
