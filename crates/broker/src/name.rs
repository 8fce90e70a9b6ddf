//! Topic names. A name becomes a directory under the data directory, so the rule below is also
//! what keeps every path a client can name inside it.

use std::fmt;

use thiserror::Error;

use crate::limits::TOPIC_NAME_BYTES_MAX;

/// A valid topic name: 1 to 249 characters from `[a-zA-Z0-9._-]`, and not `.` or `..`
/// (Kafka's rule). Such a name is always a single, ordinary path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicNameError {
    #[error("a topic name must not be empty")]
    Empty,
    #[error("topic name is {bytes} characters long; the limit is {bytes_max}")]
    TooLong { bytes: usize, bytes_max: usize },
    #[error("topic name {name:?} is reserved")]
    Reserved { name: String },
    #[error(
        "topic name contains {found:?} at position {position}; names use only a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    BadCharacter { found: char, position: usize },
}

impl TopicName {
    pub fn parse(name: &str) -> Result<TopicName, TopicNameError> {
        if name.is_empty() {
            return Err(TopicNameError::Empty);
        }
        if let Some((position, found)) = name
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TopicNameError::BadCharacter { found, position });
        }
        if name.len() > TOPIC_NAME_BYTES_MAX {
            return Err(TopicNameError::TooLong {
                bytes: name.len(),
                bytes_max: TOPIC_NAME_BYTES_MAX,
            });
        }
        if name == "." || name == ".." {
            return Err(TopicNameError::Reserved { name: name.to_owned() });
        }
        Ok(TopicName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: Result<(), TopicNameError>) {
        assert_eq!(TopicName::parse(name).map(|_| ()), expect, "{name:?}");
    }

    #[test]
    fn kafka_rule() {
        check("orders", Ok(()));
        check("a.b_c-D9", Ok(()));
        check("...", Ok(()));
        check(&"x".repeat(249), Ok(()));
        check("", Err(TopicNameError::Empty));
        check(".", Err(TopicNameError::Reserved { name: ".".into() }));
        check("..", Err(TopicNameError::Reserved { name: "..".into() }));
        check(&"x".repeat(250), Err(TopicNameError::TooLong { bytes: 250, bytes_max: 249 }));
        check("a/b", Err(TopicNameError::BadCharacter { found: '/', position: 1 }));
        check("../etc", Err(TopicNameError::BadCharacter { found: '/', position: 2 }));
        check("é", Err(TopicNameError::BadCharacter { found: 'é', position: 0 }));
        check("a\0", Err(TopicNameError::BadCharacter { found: '\0', position: 1 }));
    }
}
