//! Muninn's model checkpoint: a directory with `model.safetensors` (Muninn's parameter names) and
//! `config.toml` (the `[model]` shape). The trainer adds optimizer and trainer state beside them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Tensor};

use crate::any::{Model, ModelConfig};
use crate::huginn::{Huginn, Precision};
use crate::params::FlatParams;
use crate::st::{self, StFile};

/// What a checkpoint holds of a model, of any family: its flat parameters and its shape.
pub trait Stored {
    fn params(&self) -> &FlatParams;
    /// `[model]` as TOML, written as `config.toml`.
    fn config_toml(&self) -> String;
    /// The shape's name, for messages.
    fn shape_name(&self) -> &str;
    /// Tensors stored beside the parameters under these names (TRM's init states and puzzle
    /// table): written with the weights, and loaded in place (the tensors share storage).
    fn buffers(&self) -> Vec<(&'static str, tch::Tensor)> {
        Vec::new()
    }
}

impl Stored for Huginn {
    fn params(&self) -> &FlatParams {
        Huginn::params(self)
    }
    fn config_toml(&self) -> String {
        self.config().to_toml()
    }
    fn shape_name(&self) -> &str {
        &self.config().name
    }
}

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.toml";
/// The moving average of the weights (`optimizer.ema_decay`), laid out as `model.safetensors`:
/// where a checkpoint has it, evaluation and exports read it instead.
pub const EMA_FILE: &str = "ema.safetensors";

/// A checkpoint's weight files: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` names (a large model saved by several ranks, as HF shards).
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::hf::weight_files(dir)
}

/// Tensors spread over one or more safetensors files (an HF directory may shard them).
pub struct TensorFiles {
    files: Vec<StFile>,
    /// name → (file, shape), read once from the headers.
    index: HashMap<String, (usize, Vec<i64>)>,
}

impl TensorFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = StFile::open(p)?;
            for (name, shape) in f.shapes() {
                if let Some((prev, _)) = index.insert(name.clone(), (i, shape)) {
                    bail!(
                        "tensor `{name}` appears in both {} and {}",
                        paths[prev].display(),
                        p.display()
                    );
                }
            }
            files.push(f);
        }
        Ok(TensorFiles { files, index })
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.index.get(name).map(|(_, shape)| shape.clone())
    }

    pub fn get(&self, name: &str) -> Result<tch::Tensor> {
        let (i, _) = self
            .index
            .get(name)
            .with_context(|| format!("no tensor named `{name}`"))?;
        self.files[*i].get(name)
    }

    pub fn describe(&self) -> String {
        self.files
            .iter()
            .map(|f| f.path().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Fills `model` from `files`, where parameter `p` is stored under `key(p)`. Every parameter must be
/// present with its exact shape; keys that are neither parameters nor in `ignored` are refused.
pub fn load_weights(
    model: &impl Stored,
    files: &TensorFiles,
    key: impl Fn(&str) -> String,
    ignored: &[&str],
) -> Result<()> {
    let specs = model.params().specs();
    let buffers = model.buffers();
    let mut expected: BTreeSet<String> = specs.iter().map(|s| key(&s.name)).collect();
    expected.extend(buffers.iter().map(|(n, _)| key(n)));
    let unexpected: Vec<&str> = files
        .names()
        .into_iter()
        .filter(|n| !expected.contains(*n) && !ignored.contains(n))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "{}: unexpected tensor `{}` (not a parameter of the `{}` shape{})",
        files.describe(),
        unexpected[0],
        model.shape_name(),
        if unexpected.len() > 1 {
            format!("; {} more", unexpected.len() - 1)
        } else {
            String::new()
        }
    );
    for spec in specs {
        let k = key(&spec.name);
        check_shape(files, &k, &spec.shape)?;
        model.params().set(&spec.name, &files.get(&k)?)?;
    }
    for (name, t) in buffers {
        let k = key(name);
        check_shape(files, &k, &t.size())?;
        let v = files.get(&k)?.to_kind(t.kind()).to_device(t.device());
        tch::no_grad(|| t.shallow_clone().copy_(&v));
    }
    Ok(())
}

/// The shape `files` stores tensor `k` with, or an error naming the missing tensor.
fn stored_shape(files: &TensorFiles, k: &str) -> Result<Vec<i64>> {
    files
        .shape(k)
        .with_context(|| format!("{}: missing tensor `{k}`", files.describe()))
}

/// Refuses a tensor `k` that is missing or not of the shape the model expects.
fn check_shape(files: &TensorFiles, k: &str, want: &[i64]) -> Result<()> {
    let shape = stored_shape(files, k)?;
    ensure!(
        shape == want,
        "{}: tensor `{k}` has shape {:?}, the model config expects {:?}",
        files.describe(),
        shape,
        want
    );
    Ok(())
}

/// Fills `model` from another checkpoint's `files` (a warm start), whose vocabulary may be smaller:
/// the embedding and head rows it has are copied, and each missing row (tokens added since, such
/// as COCONUT's three) copies row `init_row` of the source. Every other parameter must match exactly.
/// Returns how many rows were added.
pub fn load_weights_grown(
    model: &impl Stored,
    files: &TensorFiles,
    init_row: Option<i64>,
) -> Result<i64> {
    let mut added = 0;
    for spec in model.params().specs() {
        let k = &spec.name;
        let shape = stored_shape(files, k)?;
        let vocab = matches!(
            spec.part,
            crate::params::Part::Embedding | crate::params::Part::Head
        );
        let grown =
            vocab && shape.len() == 2 && shape[1] == spec.shape[1] && shape[0] < spec.shape[0];
        if !grown {
            check_shape(files, k, &spec.shape)?;
            model.params().set(k, &files.get(k)?)?;
            continue;
        }
        let Some(row) = init_row.filter(|r| (0..shape[0]).contains(r)) else {
            bail!(
                "{}: `{k}` has {} rows, the model {}: new rows need an init token inside the source's vocabulary",
                files.describe(),
                shape[0],
                spec.shape[0]
            );
        };
        let src = files.get(k)?;
        let extra = spec.shape[0] - shape[0];
        let fill = src.get(row).unsqueeze(0).repeat([extra, 1]);
        model.params().set(k, &Tensor::cat(&[&src, &fill], 0))?;
        added = added.max(extra);
    }
    Ok(added)
}

/// Reads a Huginn checkpoint directory into a model on `device`; a checkpoint of another family is
/// refused by name.
pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Huginn> {
    match load_any(dir, device, precision)? {
        Model::Huginn(m) => Ok(m),
        other => bail!(
            "checkpoint {} holds a {} model; this needs a huginn one",
            dir.display(),
            other.family().name()
        ),
    }
}

/// Reads a checkpoint directory of any family into a model on `device`.
pub fn load_any(dir: &Path, device: Device, precision: Precision) -> Result<Model> {
    ensure!(
        dir.is_dir(),
        "checkpoint {} is not a directory",
        dir.display()
    );
    let cfg = ModelConfig::from_toml_file(&dir.join(CONFIG_FILE))?;
    let model = Model::new(cfg, device, precision)?;
    let ema = dir.join(EMA_FILE);
    let files = match ema.is_file() {
        true => TensorFiles::open(&[ema])?,
        false => TensorFiles::open(&model_files(dir)?)?,
    };
    load_weights(&model, &files, str::to_string, &[])
        .with_context(|| format!("loading checkpoint {}", dir.display()))?;
    Ok(model)
}

/// Writes `model.safetensors` and `config.toml` into the existing directory `dir`.
pub fn write_model_files(model: &impl Stored, dir: &Path) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "muninn".to_string())]);
    let mut tensors = model.params().named_detached();
    tensors.extend(
        model
            .buffers()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.detach())),
    );
    st::write(&dir.join(MODEL_FILE), &tensors, Some(meta))?;
    let cfg_path = dir.join(CONFIG_FILE);
    std::fs::write(&cfg_path, model.config_toml())
        .with_context(|| format!("writing {}", cfg_path.display()))
}

/// Writes [`EMA_FILE`]: the parameters from `ema` (laid out like the flat buffer), the buffers as
/// they are.
pub fn write_ema_file(
    params: &FlatParams,
    buffers: Vec<(&'static str, tch::Tensor)>,
    ema: &tch::Tensor,
    dir: &Path,
) -> Result<()> {
    let mut tensors = params.named_of(ema);
    tensors.extend(
        buffers
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.detach())),
    );
    let meta = HashMap::from([("format".to_string(), "muninn".to_string())]);
    st::write(&dir.join(EMA_FILE), &tensors, Some(meta))
}

/// Writes a new checkpoint directory `out` atomically: everything goes into a temporary sibling that
/// is renamed into place once complete. An existing `out` is never touched.
pub fn save_new(model: &impl Stored, out: &Path) -> Result<()> {
    write_new_dir(out, |tmp| write_model_files(model, tmp))
}

pub use muninn_data::atomic::write_new_dir;
