//! A small `tmpfs` mounted for one test: a real file system that really fills up.
//!
//! Tests of what happens when the disk is full (`Error::DiskFull`, a commit that cannot be
//! written) need a file system that runs out of space at a size the test chooses, without
//! filling the machine's disk. A `tmpfs` of a few megabytes does exactly that and lives in
//! memory. Mounting needs root (CI runs as root); without that right, [`Tmpfs::mount`] panics
//! with a message saying so, because a full-disk test that cannot make a full disk must fail,
//! not pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A `tmpfs` of a fixed size mounted on a fresh temporary directory, unmounted when dropped
/// (also when the test panics, since drop runs while unwinding).
#[derive(Debug)]
pub struct Tmpfs {
    mount_point: PathBuf,
    // Dropped after `Drop::drop` has unmounted, so the (then empty) directory is removed.
    _dir: TempDir,
}

impl Tmpfs {
    /// Mounts a `tmpfs` of `size_bytes` (rounded up by the kernel to whole pages) on a fresh
    /// temporary directory.
    ///
    /// # Panics
    /// When the mount fails, with the reason: most often the test is not running as root (or
    /// lacks `CAP_SYS_ADMIN`, as in an unprivileged container).
    pub fn mount(size_bytes: u64) -> Tmpfs {
        match Tmpfs::try_mount(size_bytes) {
            Ok(tmpfs) => tmpfs,
            Err(reason) => panic!(
                "this test needs a real full file system: it mounts a {size_bytes}-byte tmpfs, \
                 and that failed: {reason}. Run the tests as root (CI does), or with \
                 CAP_SYS_ADMIN; the test must not pass without it."
            ),
        }
    }

    /// As [`Tmpfs::mount`], returning the reason instead of panicking.
    pub fn try_mount(size_bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("sqlrepo-tmpfs-")
            .tempdir()
            .map_err(|e| format!("cannot create the mount point: {e}"))?;
        let mount_point = dir.path().to_path_buf();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode=0755"))
            .arg("tmpfs")
            .arg(&mount_point)
            .output()
            .map_err(|e| format!("cannot run `mount`: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "`mount -t tmpfs` exited with {} ({}); running as uid {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                current_uid()
            ));
        }
        Ok(Tmpfs {
            mount_point,
            _dir: dir,
        })
    }

    /// The directory the `tmpfs` is mounted on.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Busy: a connection (or a worker thread still closing one) holds a file open.
            // A lazy unmount detaches it now and frees it when the last file closes, so no
            // mount outlives the test either way.
            let lazy = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
            if !lazy.is_ok_and(|status| status.success()) && !std::thread::panicking() {
                panic!(
                    "could not unmount the tmpfs at {}",
                    self.mount_point.display()
                );
            }
        }
    }
}

/// The effective user id, for the message when mounting is refused (read from `/proc`, so no
/// `libc` dependency for one number).
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
