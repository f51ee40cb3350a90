//! The per-epoch record of `frostgrad train`: one printed line, and the
//! `--log-json` file `{"epochs": [{...}, ...]}` that `frostgrad plot` reads.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training images per second (the training pass only).
    pub images_per_s: f64,
    /// Whether the epoch trained from the feature cache.
    pub cached: bool,
    pub lr: f64,
    /// Images skipped as unreadable (`--skip-bad`).
    pub skipped: usize,
}

impl std::fmt::Display for EpochLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {:>3}: train loss {:.4} acc {:6.2}%",
            self.epoch,
            self.train_loss,
            100.0 * self.train_acc
        )?;
        if let (Some(l), Some(a)) = (self.val_loss, self.val_acc) {
            write!(f, " | val loss {l:.4} acc {:6.2}%", 100.0 * a)?;
        }
        write!(
            f,
            " | {:.1} s, {:.1} images/s{}",
            self.seconds,
            self.images_per_s,
            if self.cached { " (cached)" } else { "" }
        )?;
        if self.skipped > 0 {
            write!(f, ", {} images skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// A JSON number, or `null` for a value JSON cannot hold (NaN, infinity).
fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

impl EpochLog {
    pub fn to_json(&self) -> Value {
        json!({
            "epoch": self.epoch,
            "train_loss": num(self.train_loss),
            "train_acc": num(self.train_acc),
            "val_loss": self.val_loss.map_or(Value::Null, num),
            "val_acc": self.val_acc.map_or(Value::Null, num),
            "seconds": num(self.seconds),
            "images_per_s": num(self.images_per_s),
            "cached": self.cached,
            "lr": num(self.lr),
            "skipped": self.skipped,
        })
    }

    fn from_json(v: &Value) -> Option<EpochLog> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Some(EpochLog {
            epoch: v.get("epoch")?.as_u64()? as usize,
            train_loss: f("train_loss").unwrap_or(f64::NAN),
            train_acc: f("train_acc")?,
            val_loss: f("val_loss"),
            val_acc: f("val_acc"),
            seconds: f("seconds")?,
            images_per_s: f("images_per_s").unwrap_or(0.0),
            cached: v.get("cached").and_then(Value::as_bool).unwrap_or(false),
            lr: f("lr").unwrap_or(f64::NAN),
            skipped: v.get("skipped").and_then(Value::as_u64).unwrap_or(0) as usize,
        })
    }
}

/// The `--log-json` document.
pub fn to_json(epochs: &[EpochLog]) -> String {
    let doc = json!({ "epochs": epochs.iter().map(EpochLog::to_json).collect::<Vec<_>>() });
    // Serialising a `Value` cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// Reads a `--log-json` file.
pub fn read_json(path: &Path) -> Result<Vec<EpochLog>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |msg: String| Error::invalid("training log", format!("{}: {msg}", path.display()));
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let epochs = doc
        .get("epochs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `epochs` list".into()))?;
    epochs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            EpochLog::from_json(e)
                .ok_or_else(|| bad(format!("entry {i} lacks epoch, train_acc or seconds")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_missing_validation_as_null() {
        let logs = vec![EpochLog {
            epoch: 1,
            train_loss: 0.5,
            train_acc: 0.75,
            val_loss: None,
            val_acc: None,
            seconds: 2.5,
            images_per_s: 40.0,
            cached: true,
            lr: 0.01,
            skipped: 0,
        }];
        let text = to_json(&logs);
        assert!(text.contains("\"val_acc\": null"));
        let dir = std::env::temp_dir().join(format!("frostgrad-log-{}.json", std::process::id()));
        std::fs::write(&dir, &text).unwrap();
        let back = read_json(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(back, logs);
    }
}
