//! A checker of what clients saw against what a partition holds, after Jepsen's Kafka
//! workload: no acknowledged write lost, no value stored twice, no value at an offset other
//! than the one acknowledged, no write stored that was refused, offsets contiguous.
//!
//! The tests record every send and its outcome in a [`History`], read the whole partition
//! back at the end, and [`check`] the two.

use std::collections::BTreeMap;
use std::fmt;

/// How a send ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged, with the offset of its first record.
    Acknowledged { offset: u64 },
    /// Refused before anything was appended (not the leader): must not be stored.
    Refused,
    /// No answer (a timeout, a connection lost): may or may not be stored, once at most.
    Unknown,
}

/// Every value a test sent, each unique, with its outcome.
#[derive(Debug, Default, Clone)]
pub struct History {
    sends: Vec<(String, Outcome)>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn record(&mut self, value: String, outcome: Outcome) {
        self.sends.push((value, outcome));
    }

    pub fn acknowledged(&self) -> usize {
        self.sends.iter().filter(|(_, o)| matches!(o, Outcome::Acknowledged { .. })).count()
    }

    pub fn len(&self) -> usize {
        self.sends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }
}

/// What a final read of the partition returned: every offset from the log's start to its
/// end, with the record's value, or `None` for an offset a control batch takes.
pub type Observed = Vec<(u64, Option<String>)>;

/// Something the partition holds that no correct history allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// Acknowledged, and not in the partition.
    Lost { value: String, offset: u64 },
    /// Stored at more than one offset.
    Duplicated { value: String, offsets: Vec<u64> },
    /// Acknowledged at one offset, stored at another (two values at one offset).
    Moved { value: String, acknowledged: u64, stored: u64 },
    /// Refused, and stored anyway.
    Refused { value: String, offset: u64 },
    /// Stored, and never sent.
    Unsent { value: String, offset: u64 },
    /// The offsets skip or repeat.
    Gap { after: Option<u64>, next: u64 },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::Lost { value, offset } => {
                write!(f, "{value:?} was acknowledged at offset {offset} and is gone")
            }
            Anomaly::Duplicated { value, offsets } => {
                write!(f, "{value:?} is stored at offsets {offsets:?}")
            }
            Anomaly::Moved { value, acknowledged, stored } => write!(
                f,
                "{value:?} was acknowledged at offset {acknowledged} and is stored at {stored}"
            ),
            Anomaly::Refused { value, offset } => {
                write!(f, "{value:?} was refused and is stored at offset {offset}")
            }
            Anomaly::Unsent { value, offset } => {
                write!(f, "{value:?} at offset {offset} was never sent")
            }
            Anomaly::Gap { after, next } => match after {
                Some(after) => write!(f, "offset {after} is followed by {next}"),
                None => write!(f, "the first offset read is {next}, not 0"),
            },
        }
    }
}

/// Every anomaly of `observed` against `history`; empty when the run was correct.
pub fn check(history: &History, observed: &Observed) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut stored: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut previous: Option<u64> = None;
    for (offset, value) in observed {
        let expected = previous.map_or(0, |p| p + 1);
        if *offset != expected {
            anomalies.push(Anomaly::Gap { after: previous, next: *offset });
        }
        previous = Some(*offset);
        if let Some(value) = value {
            stored.entry(value).or_default().push(*offset);
        }
    }
    let sent: BTreeMap<&str, Outcome> =
        history.sends.iter().map(|(v, o)| (v.as_str(), *o)).collect();
    for (value, offsets) in &stored {
        if offsets.len() > 1 {
            anomalies
                .push(Anomaly::Duplicated { value: (*value).to_owned(), offsets: offsets.clone() });
        }
        match sent.get(value) {
            None => {
                anomalies.push(Anomaly::Unsent { value: (*value).to_owned(), offset: offsets[0] })
            }
            Some(Outcome::Refused) => {
                anomalies.push(Anomaly::Refused { value: (*value).to_owned(), offset: offsets[0] })
            }
            _ => {}
        }
    }
    for (value, outcome) in &history.sends {
        if let Outcome::Acknowledged { offset } = outcome {
            match stored.get(value.as_str()) {
                None => anomalies.push(Anomaly::Lost { value: value.clone(), offset: *offset }),
                Some(offsets) if !offsets.contains(offset) => anomalies.push(Anomaly::Moved {
                    value: value.clone(),
                    acknowledged: *offset,
                    stored: offsets[0],
                }),
                Some(_) => {}
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(values: &[(u64, Option<&str>)]) -> Observed {
        values.iter().map(|(o, v)| (*o, v.map(str::to_owned))).collect()
    }

    #[test]
    fn a_correct_run_has_no_anomaly() {
        let mut history = History::new();
        history.record("a".into(), Outcome::Acknowledged { offset: 1 });
        history.record("b".into(), Outcome::Unknown);
        history.record("c".into(), Outcome::Unknown);
        history.record("d".into(), Outcome::Refused);
        let read = observed(&[(0, None), (1, Some("a")), (2, Some("b"))]);
        assert_eq!(check(&history, &read), []);
    }

    #[test]
    fn each_anomaly_is_found() {
        let mut history = History::new();
        history.record("lost".into(), Outcome::Acknowledged { offset: 0 });
        history.record("moved".into(), Outcome::Acknowledged { offset: 1 });
        history.record("twice".into(), Outcome::Unknown);
        history.record("refused".into(), Outcome::Refused);
        let read = observed(&[
            (0, Some("twice")),
            (2, Some("moved")),
            (3, Some("twice")),
            (4, Some("refused")),
            (5, Some("ghost")),
        ]);
        let found = check(&history, &read);
        let expected = [
            Anomaly::Gap { after: Some(0), next: 2 },
            Anomaly::Unsent { value: "ghost".into(), offset: 5 },
            Anomaly::Refused { value: "refused".into(), offset: 4 },
            Anomaly::Duplicated { value: "twice".into(), offsets: vec![0, 3] },
            Anomaly::Lost { value: "lost".into(), offset: 0 },
            Anomaly::Moved { value: "moved".into(), acknowledged: 1, stored: 2 },
        ];
        for anomaly in &expected {
            assert!(found.contains(anomaly), "{anomaly} not found in {found:?}");
        }
        assert_eq!(found.len(), expected.len(), "{found:?}");
    }
}
