//! What a producer waits for before a record counts as delivered: one type for the client,
//! the server and the `spool` command. The wire's `v1::Acks` adds `ACKS_UNSPECIFIED`, which
//! the server resolves at the edge (to `All`, or `Leader` on an fsync `never` topic).

/// How much durability the producer waits for before a record counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Nothing is waited for: the server answers only failures (the Rust client counts them
    /// in its producer's stats).
    None,
    /// Answered once appended to the partition log (survives the server process crashing,
    /// not a power loss before the sync).
    Leader,
    /// Answered once synced to disk under the topic's fsync policy. The default.
    #[default]
    All,
}

impl std::str::FromStr for Acks {
    type Err = String;

    /// `none`, `leader` or `all`, as the `spool` command and the docs spell them.
    fn from_str(text: &str) -> Result<Acks, String> {
        match text {
            "none" => Ok(Acks::None),
            "leader" => Ok(Acks::Leader),
            "all" => Ok(Acks::All),
            other => Err(format!("{other:?} is not an acks level: use none, leader or all")),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::All => "all",
        })
    }
}

impl Acks {
    /// The level as the wire carries it.
    pub fn wire(self) -> crate::v1::Acks {
        match self {
            Acks::None => crate::v1::Acks::None,
            Acks::Leader => crate::v1::Acks::Leader,
            Acks::All => crate::v1::Acks::All,
        }
    }
}
