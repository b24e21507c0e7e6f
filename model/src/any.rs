//! A shape or model of any family, for what handles every family alike: run configs, checkpoints
//! and the command line. `[model] family` picks the family (default `huginn`, so every config and
//! checkpoint from before families keeps working); each family reads its own keys.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::checkpoint::Stored;
use crate::config::{HuginnConfig, RawHuginnConfig};
use crate::gpt::{Gpt, GptConfig};
use crate::huginn::{Huginn, Precision};
use crate::params::FlatParams;
use crate::trm::{Trm, TrmConfig};

/// Which model family (`[model] family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FamilyKind {
    /// The recurrent-depth transformer; its recipe's `[recurrence]` section draws (n, k).
    #[default]
    Huginn,
    /// A plain Llama-style decoder: the non-recurrent baseline.
    Gpt,
    /// The Tiny Recursive Model on puzzles: deep supervision over persistent slots.
    Trm,
}

impl FamilyKind {
    pub fn name(self) -> &'static str {
        match self {
            FamilyKind::Huginn => "huginn",
            FamilyKind::Gpt => "gpt",
            FamilyKind::Trm => "trm",
        }
    }
}

/// A resolved shape of one family.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Huginn(HuginnConfig),
    Gpt(GptConfig),
    Trm(TrmConfig),
}

impl ModelConfig {
    pub fn family(&self) -> FamilyKind {
        match self {
            ModelConfig::Huginn(_) => FamilyKind::Huginn,
            ModelConfig::Gpt(_) => FamilyKind::Gpt,
            ModelConfig::Trm(_) => FamilyKind::Trm,
        }
    }

    /// A `[model]` table: `family` (default huginn), then that family's keys.
    pub fn from_table(mut table: toml::Table) -> Result<Self> {
        let family: FamilyKind = match table.remove("family") {
            Some(v) => v
                .try_into()
                .context("reading model.family (expected \"huginn\", \"gpt\" or \"trm\")")?,
            None => FamilyKind::default(),
        };
        Ok(match family {
            FamilyKind::Huginn => {
                let raw: RawHuginnConfig = toml::Value::Table(table)
                    .try_into()
                    .context("reading [model]")?;
                ModelConfig::Huginn(raw.resolve()?)
            }
            FamilyKind::Gpt => ModelConfig::Gpt(GptConfig::from_table(table)?),
            FamilyKind::Trm => ModelConfig::Trm(TrmConfig::from_table(table)?),
        })
    }

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).context("parsing TOML")?;
        let model = doc
            .remove("model")
            .context("no [model] table: a model shape needs one")?;
        let table = match model {
            toml::Value::Table(t) => t,
            _ => bail!("`model` must be a table ([model])"),
        };
        Self::from_table(table)
    }

    /// Reads the `[model]` table of a TOML file (a run config or a checkpoint's `config.toml`).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// `NAME` of a preset of any family, or a TOML file with a `[model]` table.
    pub fn from_name_or_file(spec: &str) -> Result<Self> {
        if let Some(cfg) = HuginnConfig::preset(spec) {
            return Ok(ModelConfig::Huginn(cfg));
        }
        if let Some(cfg) = GptConfig::preset(spec) {
            return Ok(ModelConfig::Gpt(cfg));
        }
        if let Some(cfg) = TrmConfig::preset(spec) {
            return Ok(ModelConfig::Trm(cfg));
        }
        let path = Path::new(spec);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            return Self::from_toml_file(path);
        }
        bail!(
            "`{spec}` is neither a named shape ({}, {}, {}) nor an existing TOML file",
            HuginnConfig::PRESETS.join(", "),
            GptConfig::PRESETS.join(", "),
            TrmConfig::PRESETS.join(", ")
        )
    }

    /// `[model]` with every field spelled out (Huginn's without `family`, as before families).
    pub fn to_toml(&self) -> String {
        match self {
            ModelConfig::Huginn(c) => c.to_toml(),
            ModelConfig::Gpt(c) => c.to_toml(),
            ModelConfig::Trm(c) => c.to_toml(),
        }
    }

    /// The `[model]` table of [`ModelConfig::to_toml`], with `family` in both families.
    pub fn to_table(&self) -> toml::Table {
        let mut doc: toml::Table = toml::from_str(&self.to_toml()).expect("our own TOML");
        let mut model = match doc.remove("model") {
            Some(toml::Value::Table(t)) => t,
            _ => unreachable!("to_toml writes [model]"),
        };
        model.insert("family".into(), self.family().name().into());
        model
    }

    pub fn name(&self) -> &str {
        match self {
            ModelConfig::Huginn(c) => &c.name,
            ModelConfig::Gpt(c) => &c.name,
            ModelConfig::Trm(c) => &c.name,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Huginn(c) => c.vocab_size,
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Trm(c) => c.vocab_size,
        }
    }

    pub fn block_size(&self) -> i64 {
        match self {
            ModelConfig::Huginn(c) => c.block_size,
            ModelConfig::Gpt(c) => c.block_size,
            ModelConfig::Trm(c) => c.seq_len,
        }
    }
}

/// A model of one family.
pub enum Model {
    Huginn(Huginn),
    Gpt(Gpt),
    Trm(Trm),
}

impl Model {
    /// Zero weights: call [`Model::init`] or load a checkpoint.
    pub fn new(cfg: ModelConfig, device: Device, precision: Precision) -> Result<Self> {
        Ok(match cfg {
            ModelConfig::Huginn(c) => Model::Huginn(Huginn::new(c, device, precision)?),
            ModelConfig::Gpt(c) => Model::Gpt(Gpt::new(c, device, precision)?),
            ModelConfig::Trm(c) => Model::Trm(Trm::new(c, device, precision)?),
        })
    }

    pub fn init(&self, seed: u64) {
        match self {
            Model::Trm(m) => m.init(seed),
            _ => self.params().init(seed),
        }
    }

    pub fn family(&self) -> FamilyKind {
        match self {
            Model::Huginn(_) => FamilyKind::Huginn,
            Model::Gpt(_) => FamilyKind::Gpt,
            Model::Trm(_) => FamilyKind::Trm,
        }
    }

    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Huginn(m) => ModelConfig::Huginn(m.config().clone()),
            Model::Gpt(m) => ModelConfig::Gpt(m.config().clone()),
            Model::Trm(m) => ModelConfig::Trm(m.config().clone()),
        }
    }

    pub fn device(&self) -> Device {
        self.params().device()
    }
}

impl Stored for Model {
    fn params(&self) -> &FlatParams {
        match self {
            Model::Huginn(m) => m.params(),
            Model::Gpt(m) => m.params(),
            Model::Trm(m) => m.params(),
        }
    }
    fn config_toml(&self) -> String {
        self.config().to_toml()
    }
    fn shape_name(&self) -> &str {
        match self {
            Model::Huginn(m) => &m.config().name,
            Model::Gpt(m) => &m.config().name,
            Model::Trm(m) => &m.config().name,
        }
    }
    fn buffers(&self) -> Vec<(&'static str, tch::Tensor)> {
        match self {
            Model::Trm(m) => m.buffers(),
            _ => Vec::new(),
        }
    }
}

impl Stored for Trm {
    fn params(&self) -> &FlatParams {
        Trm::params(self)
    }
    fn config_toml(&self) -> String {
        self.config().to_toml()
    }
    fn shape_name(&self) -> &str {
        &self.config().name
    }
    fn buffers(&self) -> Vec<(&'static str, tch::Tensor)> {
        Trm::buffers(self)
    }
}

impl Stored for Gpt {
    fn params(&self) -> &FlatParams {
        Gpt::params(self)
    }
    fn config_toml(&self) -> String {
        self.config().to_toml()
    }
    fn shape_name(&self) -> &str {
        &self.config().name
    }
}

/// A `[model]` table of a family with named shapes: `preset = NAME` (if given), then every key over
/// it; `name` defaults to "custom". Unknown keys are refused by name, missing ones named.
pub(crate) fn over_preset<C: serde::Serialize + serde::de::DeserializeOwned>(
    mut table: toml::Table,
    family: &str,
    preset: impl Fn(&str) -> Option<C>,
    presets: &[&str],
) -> Result<C> {
    let mut base = match table.remove("preset") {
        Some(p) => {
            let p = p.as_str().context("model.preset must be a string")?;
            let cfg = preset(p).with_context(|| {
                format!(
                    "model.preset = \"{p}\" is not one of {} (family {family})",
                    presets.join(", ")
                )
            })?;
            toml::Table::try_from(&cfg).expect("a preset serialises")
        }
        None => toml::Table::new(),
    };
    base.entry("name").or_insert_with(|| "custom".into());
    base.extend(table);
    toml::Value::Table(base)
        .try_into()
        .with_context(|| format!("reading [model] (family {family})"))
}

/// `[model]` with the family and every field, as checkpoints store it.
pub(crate) fn family_toml<C: serde::Serialize>(cfg: &C, family: &str) -> String {
    let mut model = toml::Table::try_from(cfg).expect("a resolved config serialises");
    model.insert("family".into(), family.into());
    let mut doc = toml::Table::new();
    doc.insert("model".into(), model.into());
    toml::to_string(&doc).expect("a table serialises")
}
