//! Tokenizer training, shard preparation and the memory-mapped loader. Deliberately free of libtorch:
//! it hands out token rows, and the trainer turns them into tensors.
//!
//! The data issue fills this crate; the boundary exists from the first commit.
