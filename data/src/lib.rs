//! Tokenizer training, shard preparation and the memory-mapped loader. Deliberately free of libtorch:
//! it hands out token rows, and the trainer turns them into tensors.

pub mod arc;
pub mod atomic;
pub mod coconut;
pub mod corpus;
pub mod grid;
pub mod loader;
pub mod maze;
pub mod mixture;
pub mod perm;
pub mod prepare;
pub mod prosqa;
pub mod puzzles;
pub mod qa;
pub mod shard;
pub mod sudoku;
pub mod tokenizer;

pub use loader::{Batch, Loader, LoaderState, TokenDataset};
pub use prepare::{prepare, Packing, PrepareOptions, PrepareReport};
pub use tokenizer::TokenizerInfo;
