//! Metric sinks: `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files under
//! `tb/`. Rank 0 only, once data parallelism arrives.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use tensorboard_rs::summary_writer::SummaryWriter;

pub struct Metrics {
    jsonl: File,
    path: PathBuf,
    tb: Option<SummaryWriter>,
}

impl Metrics {
    pub fn open(run_dir: &Path, tensorboard: bool) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let tb = tensorboard.then(|| SummaryWriter::new(run_dir.join("tb")));
        Ok(Metrics { jsonl, path, tb })
    }

    /// Writes `record` (which has a `step`) as a JSON line, and each numeric field as a scalar.
    pub fn log(&mut self, record: &Value) -> Result<()> {
        writeln!(self.jsonl, "{record}")
            .with_context(|| format!("writing {}", self.path.display()))?;
        if let (Some(tb), Some(obj), Some(step)) =
            (&mut self.tb, record.as_object(), record["step"].as_u64())
        {
            for (key, value) in obj {
                if let (false, Some(v)) = (key == "step", value.as_f64()) {
                    tb.add_scalar(key, v as f32, step as usize);
                }
            }
            tb.flush();
        }
        Ok(())
    }
}
