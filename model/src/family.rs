//! What every model family shares with the trainer.

/// What a family's backward tells the trainer as it proceeds, so that gradient messages start while
/// the rest of backward still runs (`hpc-and-ecosystem.md` §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradEvent {
    /// Region i of the family's gradient regions (ranges of the flat gradient, in the order
    /// backward completes them) is final: nothing later in this backward writes it. The last region
    /// being final means the whole gradient is.
    Final(usize),
    /// Nothing new is final; a chance to drive outstanding messages (e.g. between Huginn's
    /// recomputed iterations).
    Progress,
}
