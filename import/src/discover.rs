//! Finding the files to import: files named as they are, folders searched for `*.parquet`
//! and `*.csv`, each with the size and modification time its progress is keyed by.

use std::path::{Path, PathBuf};

use crate::ImportError;

/// What a file holds, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Csv,
    Parquet,
}

/// One file to import.
pub(crate) struct Input {
    pub(crate) path: PathBuf,
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    pub(crate) modified_ns: u128,
}

/// Files under `paths`: named files as they are (an unknown extension is an error), folders
/// searched recursively for `*.parquet` and `*.csv` (hidden files, such as the Parquet sink's
/// incomplete `.tmp` files, are skipped). Sorted, without duplicates.
pub(crate) fn discover(paths: &[PathBuf]) -> Result<Vec<Input>, ImportError> {
    fn kind_of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Kind::Csv),
            "parquet" => Some(Kind::Parquet),
            _ => None,
        }
    }
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Kind)>) -> Result<(), ImportError> {
        let unreadable = |e| ImportError::io("reading folder", dir, e);
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(unreadable)?
            .collect::<Result<_, _>>()
            .map_err(unreadable)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if let Some(kind) = kind_of(&path) {
                out.push((path, kind));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else if !path.exists() {
            return Err(ImportError::NoSuchPath { path: path.clone() });
        } else {
            match kind_of(path) {
                Some(kind) => found.push((path.clone(), kind)),
                None => return Err(ImportError::NotAnInput { path: path.clone() }),
            }
        }
    }
    let mut inputs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, kind) in found {
        let path = path
            .canonicalize()
            .map_err(|e| ImportError::io("resolving", &path, e))?;
        if !seen.insert(path.clone()) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|source| ImportError::Metadata {
            path: path.clone(),
            source,
        })?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        inputs.push(Input {
            path,
            kind,
            size: meta.len(),
            modified_ns,
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_finds_parquet_and_csv_and_skips_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("readings/date=2024-01-01");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("part-1.parquet"), b"x").unwrap();
        std::fs::write(sub.join(".part-2.parquet.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("export.CSV"), b"a").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"a").unwrap();
        let found = discover(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["export.CSV", "part-1.parquet"]);
        let err = discover(&[dir.path().join("notes.txt")]).err().unwrap();
        assert!(err.to_string().contains("not a .parquet or .csv"), "{err}");
    }
}
