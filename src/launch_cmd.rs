//! `muninn launch`, `muninn sweep` and `muninn compare`: run configs are checked here (the launch
//! crate never loads libtorch), then handed to the launch crate to render, record and submit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use muninn_launch::compare::{self, RunSummary};
use muninn_launch::provenance::{self, Provenance};
use muninn_launch::sweep::{self, Axis};
use muninn_launch::{Cluster, Job, Plan, Point, Request, Scheduler};
use muninn_trainer::config::RunConfig;
use serde_json::json;

use crate::plot::{self, Panel, Series};

#[derive(Args)]
pub struct JobArgs {
    /// A cluster profile: frontier, slurm-cuda, local, or a TOML file (configs/clusters/*.toml).
    #[arg(long)]
    cluster: String,
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Walltime of each segment [default: the cluster's limit for this node count].
    #[arg(long)]
    hours: Option<f64>,
    /// Total walltime; longer than --hours becomes a chain of segments that resume one another.
    #[arg(long)]
    budget_hours: Option<f64>,
    /// Ranks per node [default: the profile's, one per GPU].
    #[arg(long)]
    ranks_per_node: Option<u32>,
    /// SLURM account [default: the profile's].
    #[arg(long)]
    account: Option<String>,
    /// Requeue a segment stopped by its time limit (for pre-emptible partitions).
    #[arg(long)]
    requeue: bool,
    /// Override a config key, e.g. --set train.max_steps=100 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Write the scripts and records but do not submit or run them.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct LaunchArgs {
    config: PathBuf,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum SeedPolicy {
    /// Every point trains with the config's seed: the points differ only in the swept keys.
    Same,
    /// Point i trains with seed + i.
    PerPoint,
}

#[derive(Args)]
pub struct SweepArgs {
    config: PathBuf,
    /// An axis of the grid, e.g. recurrence.mean_backprop_depth=1,2,4,8,16 (repeatable: the product).
    #[arg(long, required = true)]
    grid: Vec<Axis>,
    #[arg(long, value_enum, default_value = "same")]
    seeds: SeedPolicy,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Args)]
pub struct LaunchDataArgs {
    /// A cluster profile: frontier, slurm-cuda, local, or a TOML file (configs/clusters/*.toml).
    #[arg(long)]
    cluster: String,
    /// Parts: processes (SLURM array tasks), each preparing every N-th input file.
    #[arg(long)]
    parts: u32,
    /// Walltime of each part on SLURM.
    #[arg(long, default_value_t = 2.0)]
    hours: f64,
    /// SLURM account [default: the profile's].
    #[arg(long)]
    account: Option<String>,
    /// Write the scripts but do not submit or run them.
    #[arg(long)]
    dry_run: bool,
    /// The arguments of `muninn data prepare` (with --out; without --part), after `--`.
    #[arg(last = true, required = true)]
    prepare: Vec<String>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Run directories (runs/<name>).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The plot: validation loss against k, and against test-time depth.
    #[arg(long, default_value = "compare.png")]
    plot: PathBuf,
    /// Also write the summaries as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct CurveArgs {
    /// A run directory (runs/<name>).
    run: PathBuf,
    /// Metrics to draw (keys of metrics.jsonl), one series each.
    #[arg(long, value_delimiter = ',', default_value = "loss")]
    metrics: Vec<String>,
    #[arg(long, default_value = "curve.png")]
    out: PathBuf,
}

/// `muninn curve`: the run's metrics by step and by wall time, two panels, one PNG.
pub fn curve(a: CurveArgs) -> Result<()> {
    let path = a.run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let series = |x_key: &str| -> Result<Vec<plot::Series>> {
        a.metrics
            .iter()
            .map(|m| {
                let points: Vec<(f64, f64)> = records
                    .iter()
                    .filter_map(|r| Some((r.get(x_key)?.as_f64()?, r.get(m)?.as_f64()?)))
                    .collect();
                anyhow::ensure!(
                    !points.is_empty(),
                    "{}: no record has both `{x_key}` and `{m}`",
                    path.display()
                );
                Ok(plot::Series {
                    label: m.clone(),
                    points,
                })
            })
            .collect()
    };
    let y_label = a.metrics.join(", ");
    let panels = [
        plot::Panel {
            title: "by step".into(),
            x_label: "step".into(),
            y_label: y_label.clone(),
            log2_x: false,
            series: series("step")?,
        },
        plot::Panel {
            title: "by wall time".into(),
            x_label: "seconds since the process started training".into(),
            y_label,
            log2_x: false,
            series: series("elapsed_s")?,
        },
    ];
    plot::line_panels(&a.out, &panels, 560, 420)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The cluster and the checked request; refuses before anything is written.
fn plan(args: &JobArgs) -> Result<(Cluster, Plan)> {
    let cluster = Cluster::find(&args.cluster)?;
    let plan = Job::plan(
        &cluster,
        &Request {
            nodes: args.nodes,
            ranks_per_node: args.ranks_per_node,
            hours: args.hours,
            budget_hours: args.budget_hours,
            requeue: args.requeue,
            account: args.account.clone(),
        },
    )?;
    check_sbatch(&cluster, args.dry_run)?;
    Ok((cluster, plan))
}

/// Loads and checks a run config; the cluster's peak FLOP/s fills an unset log.peak_flops.
fn load_config(path: &Path, overrides: &[String], cluster: &Cluster) -> Result<RunConfig> {
    let mut cfg = RunConfig::load(path, overrides)?;
    if cfg.raw.log.peak_flops == 0.0 {
        cfg.raw.log.peak_flops = cluster.profile.peak_flops;
    }
    Ok(cfg)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}

/// A run a job trains: its directory, its resolved config and the step it trains to.
struct RunPlan {
    dir: PathBuf,
    toml: String,
    max_steps: u64,
}

impl RunPlan {
    fn of(cfg: &RunConfig) -> Self {
        RunPlan {
            dir: cfg.run_dir(),
            toml: cfg.to_toml(),
            max_steps: cfg.raw.train.max_steps,
        }
    }
}

/// Refuses runs that would share a directory, and handles runs that already finished: the job
/// script skips a run with a `FINISHED` marker, so a run whose `train.max_steps` was raised since
/// has its marker removed here (the trainer would remove it too, but never gets to start), and one
/// that would have nothing to do is refused.
fn check_runs(runs: &[RunPlan], dry_run: bool) -> Result<()> {
    for (i, a) in runs.iter().enumerate() {
        if let Some(j) = runs[..i].iter().position(|b| b.dir == a.dir) {
            bail!(
                "sweep points {j} and {i} would share the run directory {}: give the swept keys distinct values",
                a.dir.display()
            );
        }
        let marker = a.dir.join(muninn_trainer::train::FINISHED);
        let Ok(text) = std::fs::read_to_string(&marker) else {
            continue;
        };
        let step = text
            .trim()
            .strip_prefix("step ")
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("{}: expected `step N`, found {text:?}", marker.display()))?;
        ensure!(
            step < a.max_steps,
            "{} already finished at step {step} (train.max_steps = {}): raise train.max_steps \
             (--set train.max_steps=N) to train it further",
            a.dir.display(),
            a.max_steps
        );
        if dry_run {
            println!(
                "{} finished at step {step}; submitting would continue it to step {}",
                a.dir.display(),
                a.max_steps
            );
        } else {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
        }
    }
    Ok(())
}

/// Renders, records and (unless --dry-run) submits or runs the job.
fn launch_job(
    cluster: Cluster,
    plan: Plan,
    args: &JobArgs,
    name: String,
    base: &Path,
    points: Vec<RunPlan>,
    extra: Vec<(String, String)>,
) -> Result<()> {
    Job::check_queue(&cluster, &plan, points.len())?;
    check_runs(&points, args.dry_run)?;
    let dir = absolute(&muninn_launch::next_launch_dir(base)?)?;
    let binary = std::env::current_exe().context("finding the muninn binary")?;
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let job_points: Vec<Point> = points
        .iter()
        .enumerate()
        .map(|(i, run)| Point {
            config: dir.join(config_name(i, points.len())),
            run_dir: run.dir.clone(),
        })
        .collect();
    let job = Job::new(
        cluster,
        plan,
        name,
        dir.clone(),
        workdir.clone(),
        binary.clone(),
        job_points,
    );
    let record = Provenance {
        muninn_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("MUNINN_GIT_COMMIT").into(),
        binary: binary.display().to_string(),
        binary_sha256: provenance::sha256_file(&binary)?,
        command: std::env::args().collect(),
        workdir: workdir.display().to_string(),
        cluster: job.cluster.name.clone(),
        cluster_profile: job
            .cluster
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built in".into()),
        nodes: job.nodes,
        ranks: job.ranks(),
        hours_per_segment: job.hours,
        segments: job.segments,
        launched_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        env: provenance::env_snapshot(),
    };
    let mut files: Vec<(String, String)> = job
        .files()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    for (i, run) in points.iter().enumerate() {
        files.push((config_name(i, points.len()), run.toml.clone()));
    }
    files.push(("cluster.toml".into(), job.cluster.text.clone()));
    files.push((
        "provenance.json".into(),
        serde_json::to_string_pretty(&record)? + "\n",
    ));
    files.extend(extra);
    muninn_launch::write_dir(&dir, &files)?;
    println!("wrote {}/", dir.display());
    for (name, _) in job.files() {
        println!("  {name}");
    }
    submit(&dir, args.dry_run)
}

fn config_name(i: usize, n: usize) -> String {
    match n {
        1 => "config.toml".into(),
        _ => format!("points/{i}.toml"),
    }
}

pub fn launch(a: LaunchArgs) -> Result<()> {
    let (cluster, plan) = plan(&a.job)?;
    let cfg = load_config(&a.config, &a.job.set, &cluster)?;
    let name = format!("muninn-{}", cfg.raw.run.name);
    launch_job(
        cluster,
        plan,
        &a.job,
        name,
        &cfg.run_dir(),
        vec![RunPlan::of(&cfg)],
        vec![],
    )
}

pub fn sweep(a: SweepArgs) -> Result<()> {
    let (cluster, plan) = plan(&a.job)?;
    let points = sweep::grid(&a.grid)?;
    let base = load_config(&a.config, &a.job.set, &cluster)?;
    let mut runs = Vec::new();
    let mut listing = Vec::new();
    for point in &points {
        let mut overrides = a.job.set.clone();
        overrides.extend(point.overrides());
        let mut cfg = load_config(&a.config, &overrides, &cluster).with_context(|| {
            format!(
                "sweep point {} ({})",
                point.index,
                point.overrides().join(" ")
            )
        })?;
        cfg.raw.run.name = point.run_name(&base.raw.run.name);
        let seeded = point.assignments.iter().any(|(k, _)| k == "train.seed");
        if let (SeedPolicy::PerPoint, false) = (a.seeds, seeded) {
            cfg.raw.train.seed = base.raw.train.seed + point.index as u64;
        }
        listing.push(json!({
            "index": point.index,
            "set": point.overrides(),
            "run_dir": cfg.run_dir(),
            "seed": cfg.raw.train.seed,
        }));
        runs.push(RunPlan::of(&cfg));
    }
    let sweep_name = format!("{}-sweep", base.raw.run.name);
    let record = json!({
        "grid": a.grid.iter().map(|g| json!({"key": g.key, "values": g.values})).collect::<Vec<_>>(),
        "seeds": match a.seeds { SeedPolicy::Same => "same", SeedPolicy::PerPoint => "per-point" },
        "points": listing,
    });
    launch_job(
        cluster,
        plan,
        &a.job,
        format!("muninn-{sweep_name}"),
        &base.raw.run.dir.join(&sweep_name),
        runs,
        vec![(
            "sweep.json".into(),
            serde_json::to_string_pretty(&record)? + "\n",
        )],
    )
}

pub fn compare(a: CompareArgs) -> Result<()> {
    let mut runs: Vec<RunSummary> = a
        .runs
        .iter()
        .map(|d| compare::summarize(d))
        .collect::<Result<_>>()?;
    runs.sort_by(|x, y| (x.k, &x.name).cmp(&(y.k, &y.name)));
    if runs.iter().all(|r| !r.has_validation()) {
        bail!("none of the runs has a validation loss yet (eval.interval, or the end of training)");
    }
    print!("{}", compare::table(&runs));
    let deep: Vec<&RunSummary> = runs.iter().filter(|r| r.k.is_some()).collect();
    let at_headline = |get: fn(&RunSummary) -> &std::collections::BTreeMap<i64, f64>| {
        deep.iter()
            .filter_map(|r| Some((r.k? as f64, *get(r).get(&r.headline_depth()?)?)))
            .collect::<Vec<_>>()
    };
    // A run without depth (a GPT baseline) is a level line across each panel's x range.
    let span = |xs: Vec<f64>| {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // One x value: a line an octave either side, so that it shows.
        (lo.is_finite() && hi.is_finite()).then_some(match hi > lo {
            true => (lo, hi),
            false => (lo / 2.0, hi * 2.0),
        })
    };
    let baselines = |range: Option<(f64, f64)>| -> Vec<Series> {
        runs.iter()
            .filter(|r| r.k.is_none())
            .filter_map(|r| {
                let (lo, hi) = range.unwrap_or((1.0, 1.0));
                Some(Series {
                    label: format!("{} ({})", r.name, r.family),
                    points: vec![(lo, r.final_loss?), (hi, r.final_loss?)],
                })
            })
            .collect()
    };
    let k_range = span(deep.iter().filter_map(|r| r.k.map(|k| k as f64)).collect());
    let r_range = span(
        deep.iter()
            .flat_map(|r| r.final_val.keys().map(|&d| d as f64))
            .collect(),
    );
    let mut by_k = vec![
        Series {
            label: "final".into(),
            points: at_headline(|r| &r.final_val),
        },
        Series {
            label: "best".into(),
            points: at_headline(|r| &r.best_val),
        },
    ];
    by_k.extend(baselines(k_range));
    let mut by_depth: Vec<Series> = deep
        .iter()
        .map(|r| Series {
            label: format!("k={} ({})", r.k.unwrap_or_default(), r.name),
            points: r.final_val.iter().map(|(&d, &v)| (d as f64, v)).collect(),
        })
        .collect();
    by_depth.extend(baselines(r_range));
    let panels = [
        Panel {
            title: "validation loss against truncation depth k".into(),
            x_label: "k (recurrence.mean_backprop_depth)".into(),
            y_label: "validation loss at the training mean depth".into(),
            log2_x: true,
            series: by_k,
        },
        Panel {
            title: "final validation loss against test-time depth".into(),
            x_label: "test-time depth r".into(),
            y_label: "validation loss".into(),
            log2_x: true,
            series: by_depth,
        },
    ];
    plot::line_panels(&a.plot, &panels, 640, 480)?;
    println!("wrote {}", a.plot.display());
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `muninn launch-data`: a corpus prepared in parts by a job array, then merged.
pub fn launch_data(a: LaunchDataArgs) -> Result<()> {
    use muninn_launch::data_job::DataJob;
    ensure!(a.parts >= 1, "--parts must be at least 1");
    ensure!(a.hours > 0.0, "--hours must be positive");
    ensure!(
        !a.prepare
            .iter()
            .any(|x| x == "--part" || x.starts_with("--part=") || x == "--part-name"),
        "launch-data sets --part itself: drop it from the prepare arguments"
    );
    let out = a
        .prepare
        .iter()
        .position(|x| x == "--out")
        .and_then(|i| a.prepare.get(i + 1))
        .map(PathBuf::from)
        .context("the prepare arguments need --out DIR (the dataset the parts are merged into)")?;
    let cluster = Cluster::find(&a.cluster)?;
    let account = a
        .account
        .clone()
        .unwrap_or_else(|| cluster.profile.account.clone());
    cluster.profile.check_account(&cluster.name, &account)?;
    // The prepare array's tasks and the merge job.
    cluster.profile.check_queued(
        &cluster.name,
        u64::from(a.parts) + 1,
        &format!("{} parts and the merge", a.parts),
    )?;
    check_sbatch(&cluster, a.dry_run)?;
    let out = absolute(&out)?;
    let dir = absolute(&muninn_launch::next_launch_dir(&out)?)?;
    let job = DataJob {
        account,
        name: format!(
            "muninn-data-{}",
            out.file_name()
                .map_or("corpus".into(), |n| n.to_string_lossy().into_owned())
        ),
        cluster,
        dir: dir.clone(),
        workdir: std::env::current_dir().context("reading the current directory")?,
        binary: std::env::current_exe().context("finding the muninn binary")?,
        parts: a.parts,
        hours: a.hours,
        prepare: a.prepare.clone(),
        out,
    };
    let files: Vec<(String, String)> = job
        .files()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    muninn_launch::write_dir(&dir, &files)?;
    println!("wrote {}/", dir.display());
    for (name, _) in &files {
        println!("  {name}");
    }
    submit(&dir, a.dry_run)
}

/// A SLURM job is submitted with sbatch: refuse early, before anything is written, where there is none.
fn check_sbatch(cluster: &Cluster, dry_run: bool) -> Result<()> {
    if cluster.profile.scheduler == Scheduler::Slurm && !dry_run {
        let found = Command::new("sbatch").arg("--version").output();
        ensure!(
            matches!(found, Ok(o) if o.status.success()),
            "sbatch not found: submit from a login node of the cluster, or pass --dry-run to only write the scripts"
        );
    }
    Ok(())
}

/// Runs `dir/submit.sh` (which submits to SLURM or runs the job here), unless `dry_run`.
fn submit(dir: &Path, dry_run: bool) -> Result<()> {
    let submit = dir.join("submit.sh");
    if dry_run {
        println!(
            "dry run: nothing submitted; run {} to submit",
            submit.display()
        );
        return Ok(());
    }
    let status = Command::new("bash")
        .arg(&submit)
        .status()
        .with_context(|| format!("running {}", submit.display()))?;
    ensure!(status.success(), "{} failed ({status})", submit.display());
    Ok(())
}
