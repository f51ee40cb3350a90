//! torchvision's `ImageFolder` convention: `ROOT/<class>/<image>`, class
//! index = position of the folder name in sorted order, samples ordered by
//! class and then by file name (what `ImageFolder.samples` lists).

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// The file extensions read (case-insensitive); others are ignored, as
/// torchvision's `IMG_EXTENSIONS` filter does.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One image and its class index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// A labelled set of image files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFolder {
    /// Class names (folder names), sorted; the label is the index.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::invalid(
        "image folder",
        format!("{}: {}", path.display(), msg.into()),
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        entries.push(entry.map_err(|e| io_err(dir, e))?.path());
    }
    entries.sort();
    Ok(entries)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Image files under `dir`, recursively (torchvision walks sub-folders of
/// a class folder too), sorted by path.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            images_under(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Reads `root/<class>/...`. A folder with no class folder, or a class
    /// folder with no image, is an error (torchvision's too).
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(bad(root, "not a folder"));
        }
        let classes: Vec<PathBuf> = sorted_entries(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if classes.is_empty() {
            return Err(bad(
                root,
                "no class folders (expected ROOT/<class>/<image>.png|jpg)",
            ));
        }
        let mut folder = ImageFolder::default();
        for (label, class_dir) in classes.iter().enumerate() {
            let name = class_dir
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| bad(class_dir, "class folder name is not UTF-8"))?
                .to_string();
            let mut files = Vec::new();
            images_under(class_dir, &mut files)?;
            if files.is_empty() {
                return Err(bad(
                    class_dir,
                    format!(
                        "class `{name}` has no image ({})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            folder
                .samples
                .extend(files.into_iter().map(|path| Sample { path, label }));
            folder.classes.push(name);
        }
        Ok(folder)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Splits off `fraction` of every class (rounded, chosen by `seed`) as
    /// a validation set: `(train, val)`.
    pub fn split(self, fraction: f64, seed: u64) -> Result<(ImageFolder, ImageFolder)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::invalid(
                "--val-fraction",
                format!("must be strictly between 0 and 1, got {fraction}"),
            ));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut train = ImageFolder {
            classes: self.classes.clone(),
            samples: Vec::new(),
        };
        let mut val = train.clone();
        for label in 0..self.classes.len() {
            let mut of_class: Vec<&Sample> =
                self.samples.iter().filter(|s| s.label == label).collect();
            of_class.shuffle(&mut rng);
            let n_val = (of_class.len() as f64 * fraction).round() as usize;
            let (v, t) = of_class.split_at(n_val.min(of_class.len()));
            val.samples.extend(v.iter().map(|s| (*s).clone()));
            train.samples.extend(t.iter().map(|s| (*s).clone()));
        }
        // Keep ImageFolder's order (class, then path) inside each split.
        train
            .samples
            .sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
        val.samples
            .sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
        if train.is_empty() {
            return Err(Error::invalid(
                "--val-fraction",
                format!("{fraction} leaves no training image"),
            ));
        }
        Ok((train, val))
    }
}

/// The training and validation sets of `root`: `root/train` and `root/val`
/// when `root/train` exists (a missing `val` means no validation unless
/// `val_fraction` is given), otherwise `root` itself split by `val_fraction`.
/// The two sets must have the same classes.
pub fn open_splits(
    root: &Path,
    val_fraction: Option<f64>,
    seed: u64,
) -> Result<(ImageFolder, Option<ImageFolder>)> {
    let train_dir = root.join("train");
    let (train, val) = if train_dir.is_dir() {
        let train = ImageFolder::open(&train_dir)?;
        let val_dir = root.join("val");
        if val_dir.is_dir() {
            if val_fraction.is_some() {
                return Err(bad(
                    root,
                    "has a val/ folder, so --val-fraction would be ignored: drop one of them",
                ));
            }
            (train, Some(ImageFolder::open(&val_dir)?))
        } else if let Some(f) = val_fraction {
            let (t, v) = train.split(f, seed)?;
            (t, Some(v))
        } else {
            (train, None)
        }
    } else if let Some(f) = val_fraction {
        let (t, v) = ImageFolder::open(root)?.split(f, seed)?;
        (t, Some(v))
    } else {
        return Err(bad(
            root,
            "has no train/ folder: expected ROOT/train/<class>/... (and ROOT/val/<class>/...), \
             or pass --val-fraction to split ROOT/<class>/...",
        ));
    };
    if let Some(val) = &val {
        if val.classes != train.classes {
            return Err(bad(
                root,
                format!(
                    "train and val have different classes: {:?} vs {:?} (the label is the index in the sorted list, so they must match)",
                    train.classes, val.classes
                ),
            ));
        }
    }
    Ok((train, val))
}
