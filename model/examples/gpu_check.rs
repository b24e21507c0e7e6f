//! The parity half of scripts/gpu-check.sh, on one CUDA (or ROCm) GPU: the micro shape's forward on
//! the GPU against the same weights on the CPU, fp32 logits and the bf16-mixed loss. Prints one JSON
//! line; exits 1 if a bound is broken, 2 if there is no GPU.

use muninn_model::{cross_entropy, Depth, Huginn, HuginnConfig, InitState, Precision};
use tch::{Device, Kind, Tensor};

fn model(device: Device, precision: Precision) -> Huginn {
    let m = Huginn::new(
        HuginnConfig::preset("micro").expect("micro"),
        device,
        precision,
    )
    .expect("model");
    m.init(11);
    m
}

fn main() {
    if !tch::Cuda::is_available() {
        eprintln!("gpu_check: libtorch sees no CUDA/ROCm GPU");
        std::process::exit(2);
    }
    let gpu = Device::Cuda(0);
    let ids = (Tensor::arange(2 * 33, (Kind::Int64, Device::Cpu)) * 37)
        .remainder(256)
        .view([2, 33]);
    let (x, y) = (ids.narrow(1, 0, 32), ids.narrow(1, 1, 32));
    let depth = Depth::eval(4);
    let run = |device: Device, precision: Precision| {
        let m = model(device, precision);
        tch::no_grad(|| {
            let out = m
                .forward(&x.to_device(device), depth, &InitState::Zero)
                .expect("forward");
            let loss = cross_entropy(&out.logits, &y.to_device(device))
                .expect("loss")
                .double_value(&[]);
            (out.logits.to_device(Device::Cpu), loss)
        })
    };
    let (cpu_logits, cpu_loss) = run(Device::Cpu, Precision::F32);
    let (gpu_logits, gpu_loss) = run(gpu, Precision::F32);
    let (_, bf16_loss) = run(gpu, Precision::Bf16Mixed);
    let logits_diff = (&gpu_logits - &cpu_logits).abs().max().double_value(&[]);
    let bf16_rel = (bf16_loss - cpu_loss).abs() / cpu_loss;
    let ok = logits_diff <= 1e-4 && bf16_rel <= 0.01;
    println!(
        "{{\"device\": \"{}\", \"fp32_logits_max_abs_diff\": {logits_diff:.3e}, \"cpu_loss\": {cpu_loss:.6}, \
         \"gpu_fp32_loss\": {gpu_loss:.6}, \"gpu_bf16_mixed_loss\": {bf16_loss:.6}, \
         \"bf16_rel_diff\": {bf16_rel:.3e}, \"ok\": {ok}}}",
        std::env::var("GPU_NAME").unwrap_or_else(|_| "cuda:0".into())
    );
    if !ok {
        std::process::exit(1);
    }
}
