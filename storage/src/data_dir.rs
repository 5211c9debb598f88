//! The data folder holds personal data (what each meter consumed, when, the devices' raw
//! payloads and addresses): nothing meterflow writes there is open to other users of the
//! machine. New files are 0640 and new folders 0750 ([`restrict_new_files`], a umask of 0027,
//! which the systemd unit sets too), and the data folder itself takes no permission for
//! "other" ([`prepare`]), which also closes off what an older version left open.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::StorageError;

/// Permission bits that files and folders meterflow creates never get: write for the group,
/// anything for other users.
pub const UMASK: u32 = 0o027;

/// From now on, every file and folder this process creates is made without [`UMASK`]'s bits
/// (the umask is process-wide: call it before anything is created).
pub fn restrict_new_files() {
    let _ = rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK));
}

/// Creates `dir` (and its parents) if missing, and takes every permission for other users
/// off it, so that nothing under it is reachable by them whatever its own mode.
pub fn prepare(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating data_dir", dir, e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| StorageError::io("reading the mode of data_dir", dir, e))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        let closed = mode & 0o7770;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed))
            .map_err(|e| StorageError::io("closing data_dir to other users", dir, e))?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:o}", mode & 0o7777),
            now = format!("{closed:o}"),
            "the data folder was open to other users; closed"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_data_folder_is_closed_and_a_new_one_made_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&open).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&open), 0o750);
        let new = tmp.path().join("a/b");
        prepare(&new).unwrap();
        assert_eq!(mode(&new) & 0o007, 0);
    }
}
