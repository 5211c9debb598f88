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
/// off it, so that nothing under it is reachable by them whatever its own mode. A folder
/// shared on purpose (sticky or writable by everyone, such as `/tmp`) is left as it is, and
/// so is one meterflow may not change (owned by another user, a read-only mount): both are
/// warned about, and the files meterflow makes there are still 0640.
pub fn prepare(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("creating data_dir", dir, e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| StorageError::io("reading the mode of data_dir", dir, e))?
        .permissions()
        .mode();
    if mode & 0o007 == 0 {
        return Ok(());
    }
    let was = format!("{:o}", mode & 0o7777);
    if mode & 0o1000 != 0 || mode & 0o002 != 0 {
        tracing::warn!(dir = %dir.display(), mode = was, "the data folder is shared with other users (sticky or writable by all): its files are 0640, but give meterflow a folder of its own");
        return Ok(());
    }
    let closed = mode & 0o7770;
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed)) {
        Ok(()) => tracing::warn!(
            dir = %dir.display(),
            was,
            now = format!("{closed:o}"),
            "the data folder was open to other users; closed"
        ),
        Err(e) => tracing::warn!(
            dir = %dir.display(),
            mode = was,
            error = %e,
            "the data folder is open to other users and meterflow may not change that: close it (chmod o-rwx)"
        ),
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
        // A folder shared on purpose is not meterflow's to close.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare(&shared).unwrap();
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
    }
}
