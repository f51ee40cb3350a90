//! Reading inputs and writing outputs safely: every command that touches
//! files goes through here.
//!
//! Three promises, and the API that keeps them:
//!
//! 1. **An input is never an output.** [`Outputs::check`] takes every input
//!    and output path of a command and refuses (before any work) an output
//!    that is an input, by canonical path *and* by device + inode, so
//!    `./in.pth`, `../dir/in.pth`, an absolute path, a symlink and a hard
//!    link are all caught; two outputs naming one file are refused too.
//! 2. **Every output is writable before the work starts.** The same check
//!    creates (and removes) a file in each output's folder and refuses a
//!    folder, a read-only file or a missing folder, so a long run cannot end
//!    in "cannot write" with its results lost.
//! 3. **Writes are atomic.** [`Outputs::write_all`] (and [`write_atomic`]
//!    for a single file outside a command) writes each file to a temporary
//!    in the same folder, flushes and fsyncs it, and only when *every*
//!    output has been written renames them into place. On any failure (disk
//!    full, a file-size limit, a permission) the old files are untouched and
//!    no temporary is left behind. An output that is a symlink has its
//!    target replaced, as `cp` would.
//!
//! Errors name the file's [`Role`] (`weights file w.pth (--weights): ...`).
//! A new command uses it like this:
//!
//! ```no_run
//! # use std::path::Path;
//! # use frostgrad::io::files::{self, Outputs, Role};
//! # fn main() -> frostgrad::Result<()> {
//! const CURVE: Role = Role::new("curve file", Some("--curve"));
//! let (weights, out) = (Path::new("w.safetensors"), Path::new("curve.json"));
//! let outputs = Outputs::check(&[(Role::WEIGHTS, weights)], &[(CURVE, out)])?;
//! let bytes = files::read(weights, Role::WEIGHTS)?;
//! // ... the work ...
//! outputs.write_all(&[(out, b"{}\n".as_slice())])?;
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

pub use crate::core_types::Role;

/// The whole file, or an error naming its role.
pub fn read(path: &Path, role: Role) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| role.error(path, format!("cannot read: {e}")))
}

/// How a file is recognised as the same as another.
#[derive(Clone, Debug)]
struct Identity {
    canonical: PathBuf,
    /// (device, inode), where the platform has them and the file exists.
    inode: Option<(u64, u64)>,
}

impl Identity {
    fn same_as(&self, other: &Identity) -> bool {
        self.canonical == other.canonical || (self.inode.is_some() && self.inode == other.inode)
    }
}

#[cfg(unix)]
fn inode_of(meta: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn inode_of(_: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// An existing input, or an error in its role.
fn identify_input(role: Role, path: &Path) -> Result<Identity> {
    let meta = fs::metadata(path).map_err(|e| role.error(path, format!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(role.error(path, "is a folder, not a file"));
    }
    let canonical =
        fs::canonicalize(path).map_err(|e| role.error(path, format!("cannot read: {e}")))?;
    Ok(Identity {
        canonical,
        inode: inode_of(&meta),
    })
}

/// The folder an output is created in ("." for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An output path, existing or not, checked to be a writable file path.
/// Also returns the path the data will really be renamed onto (a symlink's
/// target).
fn identify_output(role: Role, path: &Path) -> Result<(Identity, PathBuf)> {
    let Some(name) = path.file_name() else {
        return Err(role.error(path, "is a folder, not a file name"));
    };
    match fs::metadata(path) {
        Ok(meta) => {
            if meta.is_dir() {
                return Err(role.error(path, "is a folder, not a file"));
            }
            if meta.permissions().readonly() {
                return Err(role.error(
                    path,
                    "exists and is read-only; frostgrad will not replace it",
                ));
            }
            let canonical = fs::canonicalize(path)
                .map_err(|e| role.error(path, format!("cannot resolve: {e}")))?;
            check_folder_writable(role, path, folder_of(&canonical))?;
            Ok((
                Identity {
                    canonical: canonical.clone(),
                    inode: inode_of(&meta),
                },
                canonical,
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(role.error(path, "is a symlink to a file that does not exist"));
            }
            let folder = folder_of(path);
            let canonical_folder = fs::canonicalize(folder).map_err(|e| {
                role.error(
                    path,
                    format!("its folder {} cannot be used: {e}", folder.display()),
                )
            })?;
            if !canonical_folder.is_dir() {
                return Err(role.error(path, format!("{} is not a folder", folder.display())));
            }
            check_folder_writable(role, path, &canonical_folder)?;
            Ok((
                Identity {
                    canonical: canonical_folder.join(name),
                    inode: None,
                },
                path.to_path_buf(),
            ))
        }
        Err(e) => Err(role.error(path, format!("cannot be used: {e}"))),
    }
}

/// Creates and removes a temporary file in `folder`: the one sure test that
/// the rename at the end will be possible.
fn check_folder_writable(role: Role, path: &Path, folder: &Path) -> Result<()> {
    let probe = Temporary::create(folder, path)
        .map_err(|e| role.error(path, format!("cannot write in {}: {e}", folder.display())))?;
    drop(probe);
    Ok(())
}

/// A temporary file next to its destination, removed on drop unless it was
/// renamed into place.
struct Temporary {
    path: PathBuf,
    file: Option<File>,
}

impl Temporary {
    fn create(folder: &Path, destination: &Path) -> std::io::Result<Temporary> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = folder.join(format!(".{name}.frostgrad-tmp-{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Temporary {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("temporary already closed"))?;
        file.write_all(bytes)?;
        file.flush()?;
        file.sync_all()
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        self.file.take();
        // Nothing to report to: the error that dropped us is already on its way.
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes several files so that either all are replaced or none is: each is
/// written and synced to a temporary first, then all are renamed.
fn write_files(files: &[(Role, &Path, &Path, &[u8])]) -> Result<()> {
    let mut staged = Vec::with_capacity(files.len());
    for &(role, shown, target, bytes) in files {
        let mut temp = Temporary::create(folder_of(target), target).map_err(|e| {
            role.error(
                shown,
                format!("cannot write in {}: {e}", folder_of(target).display()),
            )
        })?;
        if let Ok(meta) = fs::metadata(target) {
            // Keep the mode of the file being replaced.
            let _ = fs::set_permissions(&temp.path, meta.permissions());
        }
        temp.write_and_sync(bytes).map_err(|e| {
            role.error(
                shown,
                format!("cannot write ({e}); the previous file, if any, is unchanged"),
            )
        })?;
        staged.push((role, shown, target, temp));
    }
    for (role, shown, target, mut temp) in staged {
        temp.file.take();
        fs::rename(&temp.path, target)
            .map_err(|e| role.error(shown, format!("cannot replace: {e}")))?;
        // Renamed: nothing left to remove.
        temp.path = PathBuf::new();
        sync_folder(folder_of(target));
    }
    Ok(())
}

/// Makes the rename durable. Best effort: some file systems refuse to sync
/// a folder, and the data itself is already synced.
fn sync_folder(folder: &Path) {
    if let Ok(dir) = File::open(folder) {
        let _ = dir.sync_all();
    }
}

/// Writes one file atomically (see the module doc); for library callers that
/// have no inputs to guard.
pub fn write_atomic(path: &Path, role: Role, bytes: &[u8]) -> Result<()> {
    let (_, target) = identify_output(role, path)?;
    write_files(&[(role, path, &target, bytes)])
}

struct Checked {
    role: Role,
    path: PathBuf,
    identity: Identity,
    target: PathBuf,
}

/// The outputs of one command, checked against its inputs and each other.
pub struct Outputs {
    inputs: Vec<Checked>,
    outputs: Vec<Checked>,
}

impl Outputs {
    /// Refuses, before any work: an input that cannot be read, an output
    /// that is an input or another output, and an output that cannot be
    /// written.
    pub fn check(inputs: &[(Role, &Path)], outputs: &[(Role, &Path)]) -> Result<Outputs> {
        let mut checked_inputs = Vec::with_capacity(inputs.len());
        for &(role, path) in inputs {
            let identity = identify_input(role, path)?;
            checked_inputs.push(Checked {
                role,
                path: path.to_path_buf(),
                target: identity.canonical.clone(),
                identity,
            });
        }
        let mut checked_outputs: Vec<Checked> = Vec::with_capacity(outputs.len());
        for &(role, path) in outputs {
            let (identity, target) = identify_output(role, path)?;
            if let Some(input) = checked_inputs
                .iter()
                .find(|i| i.identity.same_as(&identity))
            {
                return Err(role.error(
                    path,
                    format!(
                        "is the same file as the {} {}{}: refusing to overwrite an input",
                        input.role,
                        input.path.display(),
                        input.role.suffix()
                    ),
                ));
            }
            if let Some(other) = checked_outputs
                .iter()
                .find(|o| o.identity.same_as(&identity))
            {
                return Err(role.error(
                    path,
                    format!(
                        "is the same file as the {} {}{}: give each output its own path",
                        other.role,
                        other.path.display(),
                        other.role.suffix()
                    ),
                ));
            }
            checked_outputs.push(Checked {
                role,
                path: path.to_path_buf(),
                identity,
                target,
            });
        }
        Ok(Outputs {
            inputs: checked_inputs,
            outputs: checked_outputs,
        })
    }

    /// Writes the given outputs (each must have been passed to
    /// [`Outputs::check`]) all or nothing. The check is repeated first, so
    /// an input swapped in for an output during the work is still refused.
    pub fn write_all(&self, contents: &[(&Path, &[u8])]) -> Result<()> {
        let inputs: Vec<(Role, &Path)> = self
            .inputs
            .iter()
            .map(|c| (c.role, c.path.as_path()))
            .collect();
        let mut wanted = Vec::with_capacity(contents.len());
        for &(path, bytes) in contents {
            let checked = self
                .outputs
                .iter()
                .find(|c| c.path == path)
                .ok_or_else(|| {
                    Error::invalid(
                        "Outputs::write_all",
                        format!("{} was not checked as an output", path.display()),
                    )
                })?;
            wanted.push((checked.role, path, bytes));
        }
        let recheck: Vec<(Role, &Path)> = wanted.iter().map(|&(r, p, _)| (r, p)).collect();
        let fresh = Outputs::check(&inputs, &recheck)?;
        let files: Vec<(Role, &Path, &Path, &[u8])> = wanted
            .iter()
            .zip(&fresh.outputs)
            .map(|(&(role, path, bytes), checked)| (role, path, checked.target.as_path(), bytes))
            .collect();
        write_files(&files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("frostgrad-files-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_however_it_is_named() {
        let dir = scratch("same");
        let input = dir.join("in.pth");
        fs::write(&input, b"data").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::hard_link(&input, dir.join("hard.pth")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&input, dir.join("link.pth")).unwrap();
        let mut names = vec![
            dir.join("./in.pth"),
            dir.join("sub/../in.pth"),
            dir.join("hard.pth"),
        ];
        if cfg!(unix) {
            names.push(dir.join("link.pth"));
        }
        for out in names {
            let err = Outputs::check(&[(Role::WEIGHTS, &input)], &[(Role::OUTPUT, &out)])
                .err()
                .unwrap_or_else(|| panic!("{} accepted", out.display()))
                .to_string();
            assert!(
                err.contains("refusing to overwrite an input") && err.contains("--weights"),
                "{err}"
            );
        }
        assert_eq!(fs::read(&input).unwrap(), b"data");
    }

    #[test]
    fn two_outputs_naming_one_file_are_refused() {
        let dir = scratch("two");
        let a = dir.join("a.out");
        let err = Outputs::check(
            &[],
            &[(Role::OUTPUT, &a), (Role::STATS, &dir.join("./a.out"))],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("stats file") && err.contains("its own path"),
            "{err}"
        );
    }

    #[test]
    fn unwritable_outputs_are_refused_before_any_work() {
        let dir = scratch("unwritable");
        for (path, why) in [
            (dir.clone(), "folder"),
            (dir.join("missing/x.safetensors"), "cannot be used"),
        ] {
            let err = Outputs::check(&[], &[(Role::JSON, &path)])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why) && err.contains("--json"), "{err}");
        }
        let ro = dir.join("ro.json");
        fs::write(&ro, b"keep").unwrap();
        let mut perms = fs::metadata(&ro).unwrap().permissions();
        perms.set_readonly(true);
        fs::set_permissions(&ro, perms).unwrap();
        let err = Outputs::check(&[], &[(Role::SVG, &ro)]).err().unwrap();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(entries(&dir), ["ro.json"]);
    }

    #[test]
    fn write_all_replaces_every_file_and_leaves_no_temporary() {
        let dir = scratch("write");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::write(&a, b"old a").unwrap();
        let outputs = Outputs::check(&[], &[(Role::OUTPUT, &a), (Role::STATS, &b)]).unwrap();
        outputs
            .write_all(&[(&a, b"new a".as_slice()), (&b, b"new b".as_slice())])
            .unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(fs::read(&b).unwrap(), b"new b");
        assert_eq!(entries(&dir), ["a", "b"]);
    }

    #[test]
    fn when_a_later_output_fails_no_earlier_one_is_replaced() {
        let dir = scratch("all-or-nothing");
        fs::create_dir(dir.join("sub")).unwrap();
        let (a, b) = (dir.join("a"), dir.join("sub/b"));
        fs::write(&a, b"old a").unwrap();
        let outputs = Outputs::check(&[], &[(Role::OUTPUT, &a), (Role::STATS, &b)]).unwrap();
        // The second output's folder disappears during the work.
        fs::remove_dir(dir.join("sub")).unwrap();
        let err = outputs
            .write_all(&[(&a, b"new a".as_slice()), (&b, b"new b".as_slice())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stats file"), "{err}");
        assert_eq!(fs::read(&a).unwrap(), b"old a");
        assert_eq!(entries(&dir), ["a"]);
    }

    #[cfg(unix)]
    #[test]
    fn writing_through_a_symlink_replaces_its_target() {
        let dir = scratch("symlink");
        let target = dir.join("target");
        fs::write(&target, b"old").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, Role::OUTPUT, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn an_unchecked_path_is_not_written() {
        let dir = scratch("unchecked");
        let outputs = Outputs::check(&[], &[]).unwrap();
        assert!(outputs
            .write_all(&[(&dir.join("x"), b"x".as_slice())])
            .is_err());
        assert!(entries(&dir).is_empty());
    }
}
