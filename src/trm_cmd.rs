//! TRM's parity tooling: `import-trm` and `export --format trm-reference` (the reference's state dict
//! and config dict), and `forward --batch` (supervision steps in eval mode, and the first training
//! step's loss and gradients), so anyone can check Muninn against the reference code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use muninn_model::checkpoint::{self, TensorFiles};
use muninn_model::trm::{loss, Carry, Trm};
use muninn_model::trm_reference::ReferenceArch;
use muninn_model::Precision;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// `muninn import-trm WEIGHTS --arch ARCH.json --out CKPT`.
pub fn import(weights: &Path, arch: &Path, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(arch).with_context(|| format!("reading {}", arch.display()))?;
    let a: ReferenceArch = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a TinyRecursiveReasoningModel_ACTV1Config dict",
            arch.display()
        )
    })?;
    let cfg = a
        .to_config("trm-imported")
        .with_context(|| format!("in {}", arch.display()))?;
    let m = Trm::new(cfg, Device::Cpu, Precision::F32)?;
    let files = TensorFiles::open(&[weights.to_path_buf()])?;
    // Trainer checkpoints prefix the keys (`_orig_mod.model.`, or `model.` without compile).
    let prefix = ["_orig_mod.model.", "model.", ""]
        .into_iter()
        .find(|p| {
            files
                .names()
                .contains(format!("{p}{}", muninn_model::trm::EMBED).as_str())
        })
        .with_context(|| {
            format!(
                "{}: no `{}` under any of the reference's prefixes",
                weights.display(),
                muninn_model::trm::EMBED
            )
        })?;
    checkpoint::load_weights(&m, &files, |n| format!("{prefix}{n}"), &[])
        .with_context(|| format!("importing {}", weights.display()))?;
    checkpoint::save_new(&m, out)?;
    println!(
        "wrote {} (trm, {} parameters, {} variant)",
        out.display(),
        m.params().numel(),
        if m.config().mlp_t {
            "mlp-t"
        } else {
            "attention"
        }
    );
    Ok(())
}

/// `muninn export CKPT --format trm-reference --out DIR`: DIR/weights.safetensors (the reference's
/// keys; the EMA weights where the checkpoint has them) and DIR/arch.json.
pub fn export(m: &Trm, out: &Path, batch_size: i64) -> Result<()> {
    checkpoint::write_new_dir(out, |dir| {
        let mut tensors = m.params().named_detached();
        tensors.extend(
            m.buffers()
                .into_iter()
                .map(|(n, t)| (n.to_string(), t.detach())),
        );
        muninn_model::st::write(&dir.join("weights.safetensors"), &tensors, None)?;
        let arch = ReferenceArch::of(m.config(), batch_size);
        std::fs::write(dir.join("arch.json"), serde_json::to_string_pretty(&arch)?)?;
        Ok(())
    })
}

/// BATCH.json: `inputs` [B][L], optional `labels` [B][L] and `puzzle_identifiers` [B].
struct BatchFile {
    inputs: Vec<Vec<i64>>,
    labels: Option<Vec<Vec<i64>>>,
    puzzle_identifiers: Option<Vec<i64>>,
}

impl BatchFile {
    fn parse(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)?;
        let ints = |v: &Value, what: &str| -> Result<Vec<i64>> {
            v.as_array()
                .with_context(|| format!("`{what}` must be a list"))?
                .iter()
                .map(|x| {
                    x.as_i64()
                        .with_context(|| format!("`{what}` holds {x}, not an integer"))
                })
                .collect()
        };
        let grid = |key: &str| -> Result<Option<Vec<Vec<i64>>>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(g) => g
                    .as_array()
                    .with_context(|| format!("`{key}` must be a list of rows"))?
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ints(r, &format!("{key}[{i}]")))
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
            }
        };
        Ok(BatchFile {
            inputs: grid("inputs")?.context("no `inputs`")?,
            labels: grid("labels")?,
            puzzle_identifiers: match v.get("puzzle_identifiers") {
                None | Some(Value::Null) => None,
                Some(x) => Some(ints(x, "puzzle_identifiers")?),
            },
        })
    }
}

/// `muninn forward CKPT --batch BATCH.json --steps K --out OUT [--grads GRADS]` on a TRM checkpoint.
pub fn forward(
    m: &Trm,
    batch: &Path,
    steps: i64,
    out: &Path,
    grads: Option<&PathBuf>,
) -> Result<()> {
    let c = m.config();
    let text =
        std::fs::read_to_string(batch).with_context(|| format!("reading {}", batch.display()))?;
    let b = BatchFile::parse(&text).with_context(|| format!("parsing {}", batch.display()))?;
    let rows = b.inputs.len() as i64;
    ensure!(rows >= 1, "{}: `inputs` is empty", batch.display());
    let grid = |name: &str, g: &[Vec<i64>], lo: i64| -> Result<Tensor> {
        for (i, r) in g.iter().enumerate() {
            ensure!(
                r.len() as i64 == c.seq_len,
                "{}: {name}[{i}] has {} cells, the model's seq_len is {}",
                batch.display(),
                r.len(),
                c.seq_len
            );
            if let Some(bad) = r
                .iter()
                .find(|&&v| v != -100 && !(lo..c.vocab_size).contains(&v))
            {
                bail!(
                    "{}: {name}[{i}] holds {bad}, outside [0, {})",
                    batch.display(),
                    c.vocab_size
                );
            }
        }
        let flat: Vec<i64> = g.iter().flatten().copied().collect();
        Ok(Tensor::from_slice(&flat).view([g.len() as i64, c.seq_len]))
    };
    let inputs = grid("inputs", &b.inputs, 0)?;
    let ids = match &b.puzzle_identifiers {
        Some(v) => {
            ensure!(
                v.len() as i64 == rows,
                "{}: {} puzzle_identifiers for {rows} rows",
                batch.display(),
                v.len()
            );
            if let Some(bad) = v
                .iter()
                .find(|&&i| !(0..c.num_puzzle_identifiers).contains(&i))
            {
                bail!(
                    "{}: puzzle identifier {bad} outside [0, {})",
                    batch.display(),
                    c.num_puzzle_identifiers
                );
            }
            Tensor::from_slice(v)
        }
        None => Tensor::zeros([rows], (Kind::Int64, Device::Cpu)),
    };
    let labels = match &b.labels {
        Some(l) => {
            ensure!(
                l.len() as i64 == rows,
                "{}: {} label rows for {rows} inputs",
                batch.display(),
                l.len()
            );
            Some(grid("labels", l, 0)?) // −100 is the reference's ignore label, and ours
        }
        None => None,
    };
    ensure!(steps >= 1, "--steps must be at least 1");
    let mut per_step: HashMap<&str, Vec<Tensor>> = HashMap::new();
    let mut carry = m.initial_carry(rows);
    for _ in 0..steps {
        let s = tch::no_grad(|| m.step(&carry, &inputs, &ids))?;
        for (k, t) in [
            ("logits", &s.logits),
            ("q_halt_logits", &s.q_halt),
            ("q_continue_logits", &s.q_continue),
            ("z_H", &s.carry.y),
            ("z_L", &s.carry.z),
        ] {
            per_step.entry(k).or_default().push(t.to_kind(Kind::Float));
        }
        carry = Carry {
            y: s.carry.y.shallow_clone(),
            z: s.carry.z.shallow_clone(),
        };
    }
    let tensors: Vec<(String, Tensor)> = per_step
        .into_iter()
        .map(|(k, v)| (k.to_string(), Tensor::stack(&v, 0)))
        .collect();
    muninn_model::st::write(out, &tensors, None)?;
    println!(
        "wrote {} ({steps} supervision steps of {rows} rows)",
        out.display()
    );
    if let Some(path) = grads {
        let labels = labels.context("--grads needs `labels` in the batch file")?;
        // Training mode from the reset carry; the loss divided by the batch as the reference trainer.
        let rows_leaf = m
            .puzzle_table
            .index_select(0, &ids)
            .detach()
            .set_requires_grad(true);
        let s = m.step_with_rows(&m.initial_carry(rows), &inputs, &rows_leaf)?;
        let l = loss(&s, &labels)?;
        (&l.total / rows as f64).backward();
        let one = |t: &Tensor| t.detach().to_kind(Kind::Double).reshape([1]);
        let mut out = vec![
            ("loss".to_string(), one(&l.total)),
            ("lm_loss".to_string(), one(&l.lm)),
            ("q_halt_loss".to_string(), one(&l.q_halt)),
        ];
        for (name, g) in m.params().named_grads() {
            out.push((format!("grad.{name}"), g.to_kind(Kind::Float)));
        }
        let table = m
            .puzzle_table
            .zeros_like()
            .index_add(0, &ids, &rows_leaf.grad());
        out.push((format!("grad.{}", muninn_model::trm::PUZZLE_EMB), table));
        muninn_model::st::write(path, &out, None)?;
        println!(
            "wrote {} (the first training step's loss and gradients)",
            path.display()
        );
    }
    Ok(())
}
