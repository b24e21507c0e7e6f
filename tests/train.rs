//! `muninn train` end to end on real text (GSM8K fixtures): exact resume after an exit interval and
//! after SIGTERM, config errors, non-finite handling, and a loss that falls.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn final_weights(dir: &Path, run: &str, step: u64) -> Vec<u8> {
    std::fs::read(dir.join(format!(
        "runs/{run}/checkpoints/step-{step:08}/model.safetensors"
    )))
    .unwrap()
}

#[test]
fn resume_after_exit_interval_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let straight = micro_config(p, "straight", 8, "");
    muninn_ok(&["train", &straight], p);
    let cut = micro_config(p, "cut", 8, "");
    let out = muninn_ok(&["train", &cut, "--set", "train.exit_interval=4"], p);
    assert!(out.contains("step 4 (ExitInterval)"), "{out}");
    let out = muninn_ok(&["train", &cut, "--resume", "auto"], p);
    assert!(out.contains("step 8 (Finished)"), "{out}");
    assert_eq!(
        losses(p, "straight"),
        losses(p, "cut"),
        "losses differ after resume"
    );
    assert!(
        final_weights(p, "straight", 8) == final_weights(p, "cut", 8),
        "weights differ after resume"
    );
    // A fresh start on a run directory with checkpoints is refused.
    let e = muninn_err(&["train", &cut], p);
    assert!(e.contains("--resume auto"), "{e}");
}

#[test]
fn sigterm_saves_and_exits_zero_and_the_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "signal", 10_000, "");
    let child = Command::new(env!("CARGO_BIN_EXE_muninn"))
        .args(["train", &cfg])
        .current_dir(p)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = p.join("runs/signal/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGTERM must end the run cleanly (exit 0)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(Signal)"), "{stdout}");
    let stopped: u64 = losses(p, "signal").last().unwrap().0;
    assert!(p
        .join(format!(
            "runs/signal/checkpoints/step-{stopped:08}/trainer_state.json"
        ))
        .exists());

    // Resume to stopped + 2 and compare with a run that never stopped.
    let target = stopped + 2;
    muninn_ok(
        &[
            "train",
            &cfg,
            "--resume",
            "auto",
            "--set",
            &format!("train.max_steps={target}"),
        ],
        p,
    );
    let straight = micro_config(p, "straight", target, "");
    muninn_ok(&["train", &straight], p);
    assert_eq!(losses(p, "signal"), losses(p, "straight"));
    assert!(final_weights(p, "signal", target) == final_weights(p, "straight", target));
}

#[test]
fn tiny_config_loss_falls_on_real_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    // The shipped tiny config, pointed at the GSM8K shards (the default corpus needs a download).
    let tiny = repo_root().join("configs/tiny.toml");
    muninn_ok(
        &[
            "train",
            tiny.to_str().unwrap(),
            "--set",
            "run.name=learn",
            "--set",
            "data.dir=ds",
            "--set",
            "data.tokenizer=tok.json",
            "--set",
            "model.vocab_size=512",
            "--set",
            "train.max_steps=40",
            "--set",
            "log.interval=1",
            "--set",
            "log.peak_flops=1e11",
            "--set",
            "eval.interval=40",
        ],
        p,
    );
    let l = losses(p, "learn");
    let first = l[..3].iter().map(|x| x.1).sum::<f64>() / 3.0;
    let last = l[l.len() - 3..].iter().map(|x| x.1).sum::<f64>() / 3.0;
    assert!(
        first > 5.5,
        "initial loss {first} should be near ln(512) = 6.24"
    );
    assert!(
        last < first - 1.0,
        "loss fell only from {first:.3} to {last:.3}"
    );
    // Every record carries these as finite numbers (JSON null is not a number); mfu/hfu are
    // there because log.peak_flops is set, and validation and telemetry at the last step.
    let records = metrics(p, "learn");
    let number = |rec: &serde_json::Value, key: &str| {
        let v = rec.get(key).and_then(serde_json::Value::as_f64);
        assert!(
            v.is_some_and(f64::is_finite),
            "metrics.jsonl: `{key}` is not a finite number: {rec}"
        );
        v.unwrap()
    };
    for rec in &records {
        for key in [
            "loss",
            "lr",
            "grad_norm",
            "n",
            "k",
            "tokens_per_s",
            "elapsed_s",
            "tokens_seen",
            "nonfinite_total",
            "flops_per_token",
            "peak_mem_gib",
            "mfu",
            "hfu",
            "recurrent_state_norm",
            "recurrent_state_token_corr",
            "rel_residual",
        ] {
            number(rec, key);
        }
        let (mfu, hfu) = (number(rec, "mfu"), number(rec, "hfu"));
        assert!(mfu > 0.0 && hfu >= mfu, "mfu {mfu}, hfu {hfu}: {rec}");
    }
    let last = records.last().unwrap();
    for depth in [1, 2, 4, 8] {
        let v = number(last, &format!("val_loss_r{depth}"));
        assert!(v > 0.0, "val_loss_r{depth} = {v}");
    }
    assert!(p.join("runs/learn/config.toml").exists());
    let tb: Vec<_> = std::fs::read_dir(p.join("runs/learn/tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        tb.len() == 1 && tb[0].to_string_lossy().contains("tfevents"),
        "{tb:?}"
    );
    assert!(
        std::fs::metadata(&tb[0]).unwrap().len() > 1000,
        "TensorBoard file nearly empty"
    );
    // The real TensorBoard reads the same losses that metrics.jsonl holds.
    if let Some(py) = reference_python("tensorboard") {
        let script = "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
                      ea = EventAccumulator(sys.argv[1]); ea.Reload()\n\
                      print(' '.join(f'{e.step}:{e.value}' for e in ea.Scalars('loss')))";
        let out = Command::new(py)
            .args(["-c", script, "runs/learn/tb"])
            .current_dir(p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Vec<(u64, f64)> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once(':').unwrap();
                (k.parse().unwrap(), v.parse().unwrap())
            })
            .collect();
        assert_eq!(
            read.len(),
            l.len(),
            "TensorBoard sees {} loss points, metrics.jsonl {}",
            read.len(),
            l.len()
        );
        for ((s1, v1), (s2, v2)) in read.iter().zip(&l) {
            assert_eq!(s1, s2);
            assert!((v1 - v2).abs() < 1e-5 * v2.abs(), "step {s1}: {v1} vs {v2}");
        }
    }
}

#[test]
fn bad_configs_are_refused_by_key_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "bad", 4, "");
    for (set, expect) in [
        ("train.max_stepz=3", "max_stepz"),
        ("train.micro_batch_size=0", "train.micro_batch_size = 0"),
        ("train.max_steps=\"many\"", "max_steps"),
        (
            "recurrence.mean_backprop_depth=9",
            "recurrence.mean_backprop_depth = 9 exceeds recurrence.mean_recurrence = 4",
        ),
        ("data.dir=nowhere", "data.dir = nowhere"),
        ("optimizer.kind=sgd", "sgd"),
        // Enums name the key and what it may be.
        (
            "optimizer.kind=sgd",
            "expected one of `ellis-adam`, `adamw`, `adam-atan2`, `muon`\nin `optimizer.kind`",
        ),
        ("optimizer.schedule=linear", "in `optimizer.schedule`"),
        (
            "recurrence.scheme=random",
            "`poisson-lognormal-filling`, `fixed`",
        ),
        ("train.precision=fp16", "in `train.precision`"),
        (
            "train.device=tpu",
            "unknown device `tpu` (expected auto, cpu, cuda or cuda:N)\nin `train.device`",
        ),
        (
            "train.nonfinite=ignore",
            "expected `skip` or `abort`\nin `train.nonfinite`",
        ),
    ] {
        let e = muninn_err(&["train", &cfg, "--set", set], p);
        assert!(e.contains(expect), "--set {set}: {e}");
        assert!(
            !p.join("runs/bad").exists(),
            "--set {set}: work started before the config was checked"
        );
    }
}

#[test]
fn a_checkpoint_of_another_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let cfg = micro_config(p, "shape", 2, "");
    muninn_ok(&["train", &cfg], p);
    let e = muninn_err(
        &[
            "train",
            &cfg,
            "--resume",
            "auto",
            "--set",
            "model.n_layers_in_coda=2",
            "--set",
            "train.max_steps=4",
        ],
        p,
    );
    assert!(e.contains("different model shape"), "{e}");

    // The family is recorded; a checkpoint from before it was (no `family`) is Huginn's and resumes.
    let state = p.join("runs/shape/checkpoints/step-00000002/trainer_state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("\"family\": \"huginn\""), "{text}");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("family");
    std::fs::write(&state, v.to_string()).unwrap();
    muninn_ok(
        &[
            "train",
            &cfg,
            "--resume",
            "auto",
            "--set",
            "train.max_steps=3",
        ],
        p,
    );
    let losses = losses(p, "shape");
    assert_eq!(
        losses.last().map(|l| l.0),
        Some(3),
        "resumed to step 3: {losses:?}"
    );
    assert!(p.join("runs/shape/checkpoints/step-00000003").is_dir());
    // One of a family this build does not know is refused, naming the file.
    let state = p.join("runs/shape/checkpoints/step-00000003/trainer_state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"huginn\"", "\"tidar\"")).unwrap();
    let e = muninn_err(
        &[
            "train",
            &cfg,
            "--resume",
            "auto",
            "--set",
            "train.max_steps=4",
        ],
        p,
    );
    assert!(
        e.contains("trainer_state.json") && e.contains("tidar"),
        "{e}"
    );
}

/// Every tensor of a checkpoint's model, by name.
fn model_tensors(ckpt: &Path) -> Vec<(String, tch::Tensor)> {
    let f = muninn_model::st::StFile::open(&ckpt.join("model.safetensors")).unwrap();
    f.shapes()
        .into_iter()
        .map(|(name, _)| {
            let t = f.get(&name).unwrap();
            (name, t)
        })
        .collect()
}

#[test]
fn non_finite_steps_are_skipped_counted_and_abort_without_saving_bad_weights() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    // An absurd learning rate: step 1 is finite and its update makes the weights ~1e30, so every
    // later step overflows. With a limit of 3, steps 2 and 3 are skipped (and still saved: a
    // skipped step leaves the weights as they were) and step 4 aborts before any save.
    let cfg = micro_config(p, "nan", 50, "");
    let e = muninn_err(
        &[
            "train",
            &cfg,
            "--set",
            "optimizer.kind=adamw",
            "--set",
            "optimizer.lr=1e30",
            "--set",
            "optimizer.warmup_steps=0",
            "--set",
            "train.max_consecutive_nonfinite=3",
            "--set",
            "checkpoint.interval=1",
            "--set",
            "checkpoint.keep=50",
        ],
        p,
    );
    let skipped: Vec<u64> = e
        .lines()
        .filter(|l| l.ends_with("update skipped"))
        .map(|l| {
            l.strip_prefix("step ")
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(skipped, [2, 3, 4], "{e}");
    assert!(
        e.contains("3 non-finite steps in a row (train.max_consecutive_nonfinite)"),
        "{e}"
    );
    // The metrics count them: 0 at the good step, then 1, 2; step 4 never got logged.
    let counted: Vec<(u64, u64)> = metrics(p, "nan")
        .iter()
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["nonfinite_total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counted, [(1, 0), (2, 1), (3, 2)]);
    let ckpts = muninn_trainer::ckpt::list(&p.join("runs/nan")).unwrap();
    assert_eq!(
        ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3],
        "the aborting step saves nothing"
    );
    for (step, path) in &ckpts {
        for (name, t) in model_tensors(path) {
            assert!(
                t.isfinite().all().int64_value(&[]) == 1,
                "checkpoint {step} holds non-finite `{name}`"
            );
        }
    }
    // The newest checkpoint holds the last good step's weights, and its counters.
    let good = model_tensors(&ckpts[0].1);
    let newest = model_tensors(&ckpts[2].1);
    assert_eq!(good.len(), newest.len());
    for ((n1, a), (n2, b)) in good.iter().zip(&newest) {
        assert!(
            n1 == n2 && a.equal(b),
            "`{n1}` changed after the last good step"
        );
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ckpts[2].1.join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&state["nonfinite_total"], &state["consecutive_nonfinite"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{state}"
    );
}

#[test]
fn shipped_configs_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    prepare_gsm8k(p);
    let data = [
        format!("data.dir={}", p.join("ds").display()),
        format!("data.tokenizer={}", p.join("tok.json").display()),
    ];
    for name in ["tiny", "demo", "huginn-3.5b-frontier"] {
        let path = repo_root().join(format!("configs/{name}.toml"));
        let cfg = muninn_trainer::config::RunConfig::load(&path, &data)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        if name == "huginn-3.5b-frontier" {
            assert_eq!(cfg.model.name(), "nebel-raven-3.5b");
            assert_eq!(
                (cfg.sampler.mean_recurrence, cfg.sampler.mean_backprop_depth),
                (32, 8)
            );
            assert_eq!(cfg.precision, muninn_model::Precision::Bf16Mixed);
            assert_eq!(cfg.schedule.at(47_360), 4e-5);
        }
    }
}
