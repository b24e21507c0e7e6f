use muninn_model::*;
use tch::{Device, Kind, Tensor};
fn main() {
    let ms: Vec<Huginn> = [Precision::F32, Precision::Bf16Mixed].into_iter().map(|p| { let m = Huginn::new(HuginnConfig::preset("tiny").unwrap(), Device::Cpu, p).unwrap(); m.init(7); m }).collect();
    tch::manual_seed(5);
    let ids = Tensor::randint(512, [1, 32], (Kind::Int64, Device::Cpu));
    for r in [0, 1, 2, 4] {
        let o: Vec<_> = ms.iter().map(|m| tch::no_grad(|| m.forward(&ids, Depth::eval(r), &{ tch::manual_seed(99); InitState::Given(Tensor::randn([1, 32, 128], (Kind::Float, Device::Cpu)) * 0.6) })).unwrap()).collect();
        let rel = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / a.norm().double_value(&[]);
        println!("r={r} logits rel {} state rel {} state kinds {:?} {:?} norms {} {}", rel(&o[0].logits, &o[1].logits), rel(&o[0].state, &o[1].state), o[0].state.kind(), o[1].state.kind(), o[0].logits.norm().double_value(&[]), o[1].logits.norm().double_value(&[]));
    }
}
