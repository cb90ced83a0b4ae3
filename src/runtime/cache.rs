//! The artifact cache: compiled components on disk, content-addressed, so a restart or a reload
//! loads precompiled code (milliseconds) instead of compiling again (up to seconds).
//!
//! An entry's key is the sha256 of everything that determines it: what kind of entry it is (a
//! component's own code, or a snapshot), the component's bytes, for a snapshot the `config` given
//! to `init` (the snapshot holds `init`'s state), and the engine's version and compilation
//! settings, so one sluice never loads what another compiled differently. Files are written to a
//! temporary name and renamed, so a reader (another sluice sharing the directory too) never sees
//! half a file.
//!
//! Loading an artifact runs its machine code: the cache directory must be as trusted as the
//! sluice binary itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::Registration;

/// A directory of `KEY.cwasm` (a compiled component: a snapshot, or a component's own code) and,
/// for a snapshot, `KEY.json` (what its `init` registered).
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    registration: Registration,
}

impl ArtifactCache {
    /// A cache in `dir`, created if missing.
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ArtifactCache { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compiled component and registration stored under `key`, if any. A corrupt or
    /// incompatible entry counts as missing (and will be overwritten).
    pub fn get(&self, engine: &Engine, key: &str) -> Option<(Component, Registration)> {
        let meta = std::fs::read(self.dir.join(format!("{key}.json"))).ok()?;
        let entry: Entry = serde_json::from_slice(&meta).ok()?;
        Some((self.get_code(engine, key)?, entry.registration))
    }

    /// The compiled component stored under `key`, if any; corrupt or incompatible counts as missing.
    pub fn get_code(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.dir.join(format!("{key}.cwasm"));
        // SAFETY: the file was written by `put` from `Component::serialize` for an engine with the
        // same compilation settings (they are part of the key), and the cache directory is
        // trusted like the binary (module docs). wasmtime still checks the header and version.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize_file(engine, &path) }.ok()
    }

    /// Stores a compiled component under `key`, with its registration if it is a snapshot.
    pub fn put(&self, key: &str, compiled: &[u8], registration: Option<&Registration>) -> std::io::Result<()> {
        self.write_atomically(&format!("{key}.cwasm"), compiled)?;
        match registration {
            None => Ok(()),
            Some(registration) => {
                let meta = serde_json::to_vec(&Entry {
                    registration: registration.clone(),
                })?;
                self.write_atomically(&format!("{key}.json"), &meta)
            }
        }
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        crate::files::write_atomically(&self.dir.join(name), bytes)
    }
}
