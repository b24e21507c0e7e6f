//! `muninn compare`: one summary per run directory (its resolved `config.toml` and `metrics.jsonl`),
//! so that runs differing in truncation depth k can be set side by side, and beside a family without
//! depth (a GPT baseline), whose runs have one validation loss and no k, r̄ or depth columns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    /// `model.family` of the run.
    pub family: String,
    /// Truncation depth k̄ (recurrence.mean_backprop_depth); none for a family without depth.
    pub k: Option<i64>,
    /// Training mean depth r̄; none for a family without depth.
    pub mean_recurrence: Option<i64>,
    pub steps: u64,
    pub tokens_seen: u64,
    /// Validation loss at each evaluated test-time depth, at the last evaluation.
    pub final_val: BTreeMap<i64, f64>,
    /// The lowest validation loss seen at each depth.
    pub best_val: BTreeMap<i64, f64>,
    /// A family without depth: its `val_loss` at the last evaluation, and the lowest seen.
    pub final_loss: Option<f64>,
    pub best_loss: Option<f64>,
    /// Median over the logged windows after the first (start-up is not throughput).
    pub tokens_per_s: Option<f64>,
    pub mfu: Option<f64>,
    /// Largest peak host memory (RSS) logged, GiB.
    pub peak_mem_gib: Option<f64>,
    /// Largest peak GPU memory reserved by libtorch's caching allocator, GiB (GPU runs only).
    pub gpu_peak_gib: Option<f64>,
    /// Mean model FLOPs per token over the run (6N-style, recurrence included).
    pub flops_per_token: Option<f64>,
}

impl RunSummary {
    /// The validation depth the table reports: the training mean depth if it was evaluated, else the
    /// deepest evaluated.
    pub fn headline_depth(&self) -> Option<i64> {
        match self.mean_recurrence {
            Some(r) if self.final_val.contains_key(&r) => Some(r),
            _ => self.final_val.keys().next_back().copied(),
        }
    }

    /// (final, best) validation loss the table reports: at the headline depth, or the plain one.
    pub fn headline(&self) -> (Option<f64>, Option<f64>) {
        match self.headline_depth() {
            Some(d) => (
                self.final_val.get(&d).copied(),
                self.best_val.get(&d).copied(),
            ),
            None => (self.final_loss, self.best_loss),
        }
    }

    pub fn has_validation(&self) -> bool {
        !self.final_val.is_empty() || self.final_loss.is_some()
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

pub fn summarize(dir: &Path) -> Result<RunSummary> {
    let config_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "reading {}: is {} a run directory?",
            config_path.display(),
            dir.display()
        )
    })?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
    let family = config
        .get("model")
        .and_then(|m| m.get("family"))
        .and_then(toml::Value::as_str)
        .unwrap_or("huginn")
        .to_string();
    let rec = |key: &str| -> Result<Option<i64>> {
        if family == "gpt" {
            return Ok(None);
        }
        config
            .get("recurrence")
            .and_then(|r| r.get(key))
            .and_then(toml::Value::as_integer)
            .map(Some)
            .with_context(|| format!("{}: no recurrence.{key}", config_path.display()))
    };
    let (k, mean_recurrence) = (rec("mean_backprop_depth")?, rec("mean_recurrence")?);
    let metrics_path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path)
        .with_context(|| format!("reading {}", metrics_path.display()))?;
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", metrics_path.display(), i + 1))?;
        records.push(v);
    }
    let Some(last) = records.last() else {
        bail!("{} has no records yet", metrics_path.display());
    };
    let (mut final_val, mut best_val) = (BTreeMap::new(), BTreeMap::<i64, f64>::new());
    let (mut final_loss, mut best_loss) = (None, None::<f64>);
    for r in &records {
        if let Some(v) = r.get("val_loss").and_then(Value::as_f64) {
            final_loss = Some(v);
            best_loss = Some(best_loss.map_or(v, |b| b.min(v)));
        }
        let vals: Vec<(i64, f64)> = r
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, v)| {
                let depth = key.strip_prefix("val_loss_r")?.parse().ok()?;
                Some((depth, v.as_f64()?))
            })
            .collect();
        if !vals.is_empty() {
            final_val = vals.iter().copied().collect();
        }
        for (d, v) in vals {
            let best = best_val.entry(d).or_insert(v);
            *best = best.min(v);
        }
    }
    let series = |key: &str| -> Vec<f64> {
        records
            .iter()
            .skip(usize::from(records.len() > 1))
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    let flops = series("flops_per_token");
    Ok(RunSummary {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dir: dir.to_path_buf(),
        family,
        k,
        mean_recurrence,
        steps: last["step"].as_u64().unwrap_or(0),
        tokens_seen: last["tokens_seen"].as_u64().unwrap_or(0),
        final_val,
        best_val,
        final_loss,
        best_loss,
        tokens_per_s: median(series("tokens_per_s")),
        mfu: median(series("mfu")),
        peak_mem_gib: records
            .iter()
            .filter_map(|r| r["peak_mem_gib"].as_f64())
            .reduce(f64::max),
        gpu_peak_gib: records
            .iter()
            .filter_map(|r| r["gpu_peak_reserved_gib"].as_f64())
            .reduce(f64::max),
        flops_per_token: (!flops.is_empty())
            .then(|| flops.iter().sum::<f64>() / flops.len() as f64),
    })
}

/// The comparison table: one row per run, sorted by k.
pub fn table(runs: &[RunSummary]) -> String {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    let mut rows = vec![vec![
        "run".to_string(),
        "k".into(),
        "r̄".into(),
        "steps".into(),
        "val depth".into(),
        "final val".into(),
        "best val".into(),
        "tok/s".into(),
        "MFU".into(),
        "host GiB".into(),
        "GPU GiB".into(),
        "GFLOP/tok".into(),
        "family".into(),
    ]];
    for r in runs {
        let d = r.headline_depth();
        let (final_loss, best_loss) = r.headline();
        let int = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        rows.push(vec![
            r.name.clone(),
            int(r.k),
            int(r.mean_recurrence),
            r.steps.to_string(),
            int(d),
            opt(final_loss, &|v| format!("{v:.4}")),
            opt(best_loss, &|v| format!("{v:.4}")),
            opt(r.tokens_per_s, &|v| format!("{v:.0}")),
            opt(r.mfu, &|v| format!("{:.1}%", v * 100.0)),
            opt(r.peak_mem_gib, &|v| format!("{v:.2}")),
            opt(r.gpu_peak_gib, &|v| format!("{v:.2}")),
            opt(r.flops_per_token, &|v| format!("{:.3}", v / 1e9)),
            r.family.clone(),
        ]);
    }
    let mut out = render(&rows);
    // Loss at every evaluated test-time depth, when any run evaluated more than one.
    let depths: std::collections::BTreeSet<i64> = runs
        .iter()
        .flat_map(|r| r.final_val.keys().copied())
        .collect();
    if depths.len() > 1 {
        let mut rows = vec![std::iter::once("final val loss at depth r".to_string())
            .chain(depths.iter().map(|d| format!("r={d}")))
            .collect::<Vec<_>>()];
        for r in runs.iter().filter(|r| r.k.is_some()) {
            rows.push(
                std::iter::once(format!("{} (k={})", r.name, r.k.unwrap_or_default()))
                    .chain(
                        depths
                            .iter()
                            .map(|d| opt(r.final_val.get(d).copied(), &|v| format!("{v:.4}"))),
                    )
                    .collect(),
            );
        }
        out.push('\n');
        out.push_str(&render(&rows));
    }
    out
}

/// Left-aligned first column, right-aligned numbers.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| match c {
                0 => format!("{cell:<w$}", w = width[c]),
                _ => format!("{cell:>w$}", w = width[c]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
