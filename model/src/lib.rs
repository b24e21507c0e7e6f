//! Muninn's models: Huginn, the recurrent-depth transformer (prelude → r × core → coda), and GPT,
//! the plain Llama-style baseline. [`any`] handles either alike; [`family`] is the trainer's seam.
//!
//! Everything shape-related comes from [`HuginnConfig`]; the parameter list in [`params`] is the one
//! source of truth for names, shapes, init, counting and the checkpoint layouts.

pub mod any;
pub mod block;
pub mod checkpoint;
pub mod coconut;
pub mod config;
pub mod decode;
pub mod exit;
pub mod family;
pub mod flops;
pub mod gpt;
pub mod gpt_family;
pub mod hf;
pub mod huginn;
pub mod huginn_family;
pub mod latents;
pub mod llama;
pub mod llama_hf;
pub mod loss;
pub mod params;
pub mod retrofit;
pub mod sampler;
pub mod shim;
pub mod st;
pub mod tidar;
pub mod trm;
pub mod trm_family;
pub mod trm_reference;

pub use any::{FamilyKind, Model, ModelConfig};
pub use block::{Attend, Mask, Positions};
pub use config::{HuginnConfig, StateInit};
pub use exit::ExitCriterion;
pub use family::{Family, GradEvent, LossMean, MicroBatch, Padding};
pub use gpt::{Gpt, GptConfig};
pub use huginn::{
    Depth, Forward, GradStage, Huginn, InitState, Input, Objective, Precision, Telemetry,
};
pub use loss::{cross_entropy, cross_entropy_sum, IGNORE};
pub use params::{ParamCounts, Part};
