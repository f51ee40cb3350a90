//! What one backward pass did: nodes run, and per `op.input` how many
//! gradients were computed and how many were skipped because nothing
//! trainable needed them. This is how frostgrad makes freezing measurable.

use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    /// [`BackwardStats::count`]'s key buffer.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackwardStats {
    /// Backward nodes executed.
    pub nodes: usize,
    /// Gradients computed, keyed `"op.input"` (e.g. `"conv2d.weight"`).
    pub computed: BTreeMap<String, usize>,
    /// Gradients not computed because no trainable parameter needed them.
    pub skipped: BTreeMap<String, usize>,
}

impl BackwardStats {
    /// How many `key` gradients (`"conv2d.weight"`, ...) were computed.
    pub fn computed(&self, key: &str) -> usize {
        self.computed.get(key).copied().unwrap_or(0)
    }

    /// How many `key` gradients were skipped.
    pub fn skipped(&self, key: &str) -> usize {
        self.skipped.get(key).copied().unwrap_or(0)
    }

    pub fn total_computed(&self) -> usize {
        self.computed.values().sum()
    }

    pub fn total_skipped(&self) -> usize {
        self.skipped.values().sum()
    }

    pub(crate) fn count(&mut self, op: &str, input: &str, computed: bool) {
        let map = if computed {
            &mut self.computed
        } else {
            &mut self.skipped
        };
        // The key is composed in a reused buffer and allocated only when
        // new to this pass: every node's every input used to allocate one
        // (~150 short-lived strings a ResNet-18 step on the main thread's
        // heap, issue 9 item 25).
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            key.push_str(op);
            key.push('.');
            key.push_str(input);
            match map.get_mut(key.as_str()) {
                Some(n) => *n += 1,
                None => {
                    map.insert(key.clone(), 1);
                }
            }
        });
    }

    /// Adds another pass's counts to these.
    pub fn merge(&mut self, other: &BackwardStats) {
        self.nodes += other.nodes;
        for (k, v) in &other.computed {
            *self.computed.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.skipped {
            *self.skipped.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// `{"nodes": N, "computed": {...}, "skipped": {...}}`, the format of
    /// `frostgrad step --stats-json`.
    pub fn to_json(&self) -> String {
        fn map(m: &BTreeMap<String, usize>) -> String {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", items.join(", "))
        }
        format!(
            "{{\"nodes\": {}, \"computed\": {}, \"skipped\": {}}}",
            self.nodes,
            map(&self.computed),
            map(&self.skipped)
        )
    }
}

impl std::fmt::Display for BackwardStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backward nodes run: {}", self.nodes)?;
        let mut keys: Vec<&String> = self.computed.keys().chain(self.skipped.keys()).collect();
        keys.sort();
        keys.dedup();
        let width = keys
            .iter()
            .map(|k| k.len())
            .max()
            .unwrap_or(0)
            .max("gradient".len());
        writeln!(
            f,
            "{:<width$} {:>9} {:>8}",
            "gradient", "computed", "skipped"
        )?;
        for k in keys {
            writeln!(
                f,
                "{:<width$} {:>9} {:>8}",
                k,
                self.computed(k),
                self.skipped(k)
            )?;
        }
        Ok(())
    }
}
