//! The parameter/gradient layout: a backward costs O(the parameters it reaches), never a temporary
//! the size of the whole flat buffer per parameter tensor (which a `narrow` view of one flat leaf
//! costs: a zero-filled full-size gradient per view per backward call).
//!
//! Its own test binary (process): it counts libtorch's CPU allocations through the shim's counting
//! allocator, and no other test may allocate meanwhile.

use muninn_model::shim::{cpu_alloc_reset, cpu_alloc_stats};
use muninn_model::{Depth, GradStage, Huginn, HuginnConfig, InitState, Precision};
use tch::{Device, Tensor};

#[test]
fn a_backward_allocates_no_temporary_the_size_of_the_flat_buffer() {
    tch::set_num_threads(1);
    // ~4.5 M parameters in 41 tensors (18 MB flat); the largest single tensor is 2 MB.
    let cfg = HuginnConfig::from_toml_str(
        "[model]\npreset = \"tiny\"\nn_embd = 256\nintermediate_size = 1024\nvocab_size = 512\n",
    )
    .unwrap();
    let m = Huginn::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(3);
    let flat_bytes = (m.params().numel() * 4) as u64;
    let ids = Tensor::arange(64, (tch::Kind::Int64, Device::Cpu))
        .remainder(512)
        .view([2, 32]);
    let targets = (&ids + 1).remainder(512);
    for checkpointing in [false, true] {
        let mut stages = 0;
        let micro_step = |on_grads: &mut dyn FnMut(GradStage)| {
            let depth = Depth::new(1, 3);
            let _ = m
                .loss_backward(
                    &ids,
                    &targets,
                    depth,
                    &InitState::Zero,
                    checkpointing,
                    on_grads,
                )
                .unwrap();
        };
        // The first backward allocates the flat gradient buffer itself; count from the second.
        micro_step(&mut |_| {});
        cpu_alloc_reset(flat_bytes / 2);
        micro_step(&mut |s| stages += (s != GradStage::CoreIteration) as usize);
        let stats = cpu_alloc_stats();
        assert_eq!(stages, 3);
        assert_eq!(
            stats.large, 0,
            "checkpointing {checkpointing}: {} allocations of at least half the flat buffer ({} bytes)",
            stats.large, flat_bytes / 2
        );
        eprintln!(
            "checkpointing {checkpointing}: peak {} bytes above the end, flat buffer {flat_bytes}",
            stats.peak.saturating_sub(stats.current)
        );
    }
    // The gradients did accumulate into the flat buffer: two micro-steps' worth, each non-zero.
    let g = m.params().flat().grad();
    assert!(g.defined() && g.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
    for (name, grad) in m.params().named_grads() {
        assert!(
            grad.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0,
            "{name} got no gradient"
        );
    }
}
