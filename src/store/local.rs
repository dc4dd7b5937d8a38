//! The local-directory snapshot store: objects are files under a root directory, each
//! written to a temp file, synced, and renamed (or, when it must not replace anything,
//! hard-linked) into place, with the directory synced after.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{Listed, SnapshotStore, StoreError};

/// Objects as files under a root directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// Tells apart the temp files of one process.
static NEXT_TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Suffix of an object being written (never listed).
const PARTIAL: &str = ".partial";

fn failed(what: impl std::fmt::Display, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::NotFound(what.to_string())
    } else {
        StoreError::Failed(format!("{what}: {e}"))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl LocalStore {
    /// A store rooted at `root` (created with the first object: a store that is not
    /// there yet, like an unmounted volume, fails each call, not the opening).
    ///
    /// # Errors
    /// None yet; the signature leaves room for checks of the root.
    pub fn open(root: &Path) -> Result<LocalStore, String> {
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    /// The path of object `name`, refusing names that would leave the root.
    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if name.is_empty()
            || name
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(StoreError::Failed(format!(
                "{name:?} is not an object name"
            )));
        }
        Ok(self.root.join(name))
    }

    /// Writes `data` to a new temp file beside `path`, synced; returns the temp path.
    fn stage(&self, path: &Path, data: &mut dyn Read, size: u64) -> Result<PathBuf, StoreError> {
        let dir = path.parent().expect("an object has a parent");
        fs::create_dir_all(dir).map_err(|e| failed(dir.display(), e))?;
        let temp = PathBuf::from(format!(
            "{}.{}-{}{PARTIAL}",
            path.display(),
            std::process::id(),
            NEXT_TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = fs::File::create(&temp)?;
            let copied = io::copy(&mut data.take(size), &mut file)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{copied} bytes of {size}"),
                ));
            }
            file.flush()?;
            file.sync_all()
        })();
        match result {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(StoreError::Failed(format!(
                    "writing {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

impl SnapshotStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
        let path = self.path(name)?;
        let temp = self.stage(&path, data, size)?;
        fs::rename(&temp, &path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            failed(name, e)
        })?;
        sync_dir(path.parent().expect("parent")).map_err(|e| failed(name, e))
    }

    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        let path = self.path(name)?;
        let size = data.len() as u64;
        let temp = self.stage(&path, &mut &data[..], size)?;
        // A hard link fails if the name is taken: create-if-absent, atomically.
        let linked = fs::hard_link(&temp, &path);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                sync_dir(path.parent().expect("parent")).map_err(|e| failed(name, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(failed(name, e)),
        }
    }

    fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError> {
        let mut file = fs::File::open(self.path(name)?).map_err(|e| failed(name, e))?;
        io::copy(&mut file, into).map_err(|e| failed(name, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut found = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| failed(dir.display(), e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let full = format!("{rel}{name}");
                let meta = entry.metadata().map_err(|e| failed(&full, e))?;
                if meta.is_dir() {
                    dirs.push((entry.path(), format!("{full}/")));
                } else if !name.ends_with(PARTIAL) && full.starts_with(prefix) {
                    found.push(Listed {
                        name: full,
                        size: meta.len(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(name, e)),
        }
    }
}
