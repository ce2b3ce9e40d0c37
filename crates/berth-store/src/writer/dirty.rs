//! Dirty-key tracking for an online compaction: the keys every commit touched since tracking was
//! switched on, which the compaction copies again from a later snapshot.

use std::collections::BTreeSet;

/// Keys written since tracking was switched on: what an online compaction must copy again.
/// Recording an extra key is harmless (the copy re-reads it from a later snapshot); missing one
/// would lose a write, so every insert and remove in the writer records its key.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub enabled: bool,
    pub machines: BTreeSet<String>,
    pub events: BTreeSet<u64>,
    pub operations: BTreeSet<u64>,
    pub history: BTreeSet<(String, u64)>,
    pub config_versions: BTreeSet<(String, u64)>,
}

impl Dirty {
    /// The tables whose keys are tracked (one set each above); every other table of
    /// [`crate::schema::TABLES`] must be small enough for compaction to copy whole at each
    /// catch-up, as it does `meta`.
    #[cfg(test)]
    pub const TRACKED_TABLES: [&'static str; 5] = [
        "machines",
        "events",
        "operations",
        "history",
        "config_versions",
    ];
    /// The tables compaction copies whole at each catch-up.
    pub const COPIED_WHOLE: [&'static str; 1] = ["meta"];

    pub fn len(&self) -> usize {
        self.machines.len()
            + self.events.len()
            + self.operations.len()
            + self.history.len()
            + self.config_versions.len()
    }

    /// Hands over what was recorded; tracking stays as it was.
    pub fn take(&mut self) -> Dirty {
        let enabled = self.enabled;
        let out = std::mem::take(self);
        self.enabled = enabled;
        out
    }

    pub fn machine(&mut self, id: &str) {
        if self.enabled {
            self.machines.insert(id.to_owned());
        }
    }
    pub fn event(&mut self, seq: u64) {
        if self.enabled {
            self.events.insert(seq);
        }
    }
    pub fn operation(&mut self, id: u64) {
        if self.enabled {
            self.operations.insert(id);
        }
    }
    pub fn history(&mut self, id: &str, version: u64) {
        if self.enabled {
            self.history.insert((id.to_owned(), version));
        }
    }
    pub fn config_version(&mut self, id: &str, version: u64) {
        if self.enabled {
            self.config_versions.insert((id.to_owned(), version));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Dirty;
    use crate::schema::TABLE_NAMES;

    /// A table added to the schema but not to compaction's catch-up would lose the writes made
    /// to it while a compaction copies the file.
    #[test]
    fn compaction_catches_up_every_table() {
        let caught_up: BTreeSet<&str> = Dirty::TRACKED_TABLES
            .into_iter()
            .chain(Dirty::COPIED_WHOLE)
            .collect();
        let all: BTreeSet<&str> = TABLE_NAMES.into_iter().collect();
        assert_eq!(caught_up, all);
    }
}
