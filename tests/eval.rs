//! Test-time scaling end to end on a micro checkpoint: `muninn eval`, `generate` and `latents`.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A micro model trained for 4 steps on the GSM8K fixture; returns its final checkpoint.
fn trained(p: &Path) -> PathBuf {
    prepare_gsm8k(p);
    let cfg = micro_config(p, "tts", 4, "");
    muninn_ok(&["train", &cfg], p);
    p.join("runs/tts/checkpoints/step-00000004")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn eval_reports_one_loss_per_depth_and_agrees_with_training_validation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ckpt = trained(p);
    let ckpt = ckpt.to_str().unwrap();
    // The training run validated its first 8 rows in batches of 4 at depths 1 and 4, at the end;
    // eval takes the rows, the batch size and the seed from the run.
    let stdout = muninn_ok(&["eval", ckpt, "--depths", "1,2,4,8"], p);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        4,
        "{stdout}"
    );
    let out = p.join("runs/tts/eval/step-00000004");
    let report = json(&std::fs::read_to_string(out.join("eval.json")).unwrap());
    let rows = report["depths"].as_array().unwrap();
    let depths: Vec<i64> = rows.iter().map(|r| r["depth"].as_i64().unwrap()).collect();
    assert_eq!(depths, [1, 2, 4, 8]);
    for r in rows {
        let (loss, ppl) = (r["loss"].as_f64().unwrap(), r["ppl"].as_f64().unwrap());
        assert!(loss.is_finite() && loss > 0.0, "{r}");
        assert!((ppl - loss.exp()).abs() < 1e-9 * ppl, "{r}");
    }
    assert_eq!(report["rows"], 8);
    let last = metrics(p, "tts").pop().unwrap();
    for (i, d) in [(0, "r1"), (2, "r4")] {
        let trained = last[format!("val_loss_{d}")].as_f64().unwrap();
        let evaluated = rows[i]["loss"].as_f64().unwrap();
        assert!(
            (trained - evaluated).abs() < 1e-5,
            "{d}: training validated {trained}, eval says {evaluated}"
        );
    }
    // One depth recomputed here from the parts: the checkpoint's weights, the validation split's
    // first 8 rows read straight from the shards in the run's batches of 4, each batch's s0 drawn
    // from the run's seed as training validation draws it, and a cross-entropy written out.
    tch::set_num_threads(1);
    let model = muninn_model::checkpoint::load(
        Path::new(ckpt),
        tch::Device::Cpu,
        muninn_model::Precision::F32,
    )
    .unwrap();
    let val = muninn_data::TokenDataset::open(&p.join("ds"), "val", None).unwrap();
    let block = val.block_size() as i64;
    let mut row = Vec::new();
    let mut nll = 0.0;
    for batch in 0..2u64 {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for i in batch * 4..batch * 4 + 4 {
            val.row(i, &mut row);
            inputs.extend(row[..block as usize].iter().map(|&t| t as i64));
            targets.extend(row[1..].iter().map(|&t| t as i64));
        }
        let inputs = tch::Tensor::from_slice(&inputs).view([4, block]);
        let targets = tch::Tensor::from_slice(&targets).view([4, block, 1]);
        muninn_trainer::eval::seed_torch(7, batch, 0xE7A1);
        let logits = tch::no_grad(|| {
            model.forward(
                &inputs,
                muninn_model::Depth::eval(4),
                &muninn_model::InitState::Config,
            )
        })
        .unwrap()
        .logits;
        let logp = logits
            .log_softmax(-1, tch::Kind::Double)
            .gather(-1, &targets, false);
        nll -= logp.sum(tch::Kind::Double).double_value(&[]);
    }
    let recomputed = nll / (8 * block) as f64;
    let trained = last["val_loss_r4"].as_f64().unwrap();
    assert!(
        (recomputed - trained).abs() < 1e-5,
        "depth 4: recomputed {recomputed}, training validated {trained}"
    );

    let png = out.join("eval.png");
    let (w, h) = decode_png(&png);
    assert_eq!((w, h), (900, 560));
    assert_series_drawn(&png, 1);

    // Elsewhere, with an explicit data directory and output.
    let copy = p.join("copied");
    std::fs::create_dir(&copy).unwrap();
    for f in ["model.safetensors", "config.toml"] {
        std::fs::copy(Path::new(ckpt).join(f), copy.join(f)).unwrap();
    }
    let err = muninn_err(&["eval", "copied", "--depths", "1"], p);
    assert!(err.contains("--data"), "{err}");
    muninn_ok(
        &[
            "eval", "copied", "--data", "ds", "--depths", "3", "--out", "rep",
        ],
        p,
    );
    assert_eq!(
        json(&std::fs::read_to_string(p.join("rep/eval.json")).unwrap())["depths"][0]["depth"],
        3
    );
    let err = muninn_err(&["eval", ckpt, "--depths", "0,4"], p);
    assert!(err.contains("--depths: 0"), "{err}");
    let err = muninn_err(&["eval", ckpt, "--data", "nowhere"], p);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn generate_with_the_cache_matches_recomputation_and_exits_adaptively() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ckpt = trained(p);
    let ckpt = ckpt.to_str().unwrap();
    let prompt = "Natalia sold clips to";
    let base = [
        "generate",
        ckpt,
        "--prompt",
        prompt,
        "--init-state",
        "zero",
        "--max-tokens",
        "16",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        json(&muninn_ok(&args, p))
    };
    let cached = run(&["--depth", "3"]);
    let uncached = run(&["--depth", "3", "--no-kv-cache"]);
    assert!(!cached["tokens"].as_array().unwrap().is_empty());
    assert_eq!(cached["tokens"], uncached["tokens"]);
    assert_eq!(cached["mean_iterations"], 3.0);

    // A threshold every iteration meets: each token stops exactly at --min-steps.
    let eager = run(&[
        "--depth",
        "12",
        "--exit",
        "latent-diff:10",
        "--min-steps",
        "2",
    ]);
    assert!(
        eager["iterations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v == 2),
        "{eager}"
    );
    assert_eq!(eager["mean_iterations"], 2.0);
    let adaptive = run(&[
        "--depth",
        "12",
        "--exit",
        "latent-diff:0.2",
        "--min-steps",
        "2",
    ]);
    let its: Vec<i64> = adaptive["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(its.len(), adaptive["tokens"].as_array().unwrap().len());
    assert!(its.iter().all(|&i| (2..=12).contains(&i)), "{its:?}");
    let mean = its.iter().sum::<i64>() as f64 / its.len() as f64;
    assert!((adaptive["mean_iterations"].as_f64().unwrap() - mean).abs() < 1e-12);

    for exit in ["kl", "entropy-diff:1e-2", "argmax:2"] {
        let g = run(&[
            "--depth",
            "6",
            "--exit",
            exit,
            "--continuous",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
        ]);
        assert!(
            g["iterations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| (1..=6).contains(&v.as_i64().unwrap())),
            "{exit}: {g}"
        );
    }
    // Plain text mode names the mean.
    let text = muninn_ok(
        &["generate", ckpt, "--prompt", prompt, "--max-tokens", "4"],
        p,
    );
    assert!(text.contains("mean"), "{text}");

    let out = muninn(
        &["generate", ckpt, "--prompt", prompt, "--exit", "cosine"],
        p,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown exit criterion"));
    let err = muninn_err(
        &[
            "generate",
            ckpt,
            "--prompt",
            prompt,
            "--depth",
            "2",
            "--min-steps",
            "5",
        ],
        p,
    );
    assert!(err.contains("--min-steps"), "{err}");
    let err = muninn_err(
        &[
            "generate",
            ckpt,
            "--prompt",
            prompt,
            "--exit",
            "kl",
            "--no-kv-cache",
        ],
        p,
    );
    assert!(err.contains("--no-kv-cache"), "{err}");
    let err = muninn_err(&["generate", ckpt, "--prompt", prompt, "--no-kv-cache"], p);
    assert!(err.contains("--init-state zero"), "{err}");
    for (bad, want) in [
        (&["--top-p", "0"][..], "--top-p"),
        (&["--temperature=-1"][..], "--temperature"),
        (&["--min-steps", "2"][..], "only applies with --exit"),
    ] {
        let mut args = vec!["generate", ckpt, "--prompt", prompt];
        args.extend_from_slice(bad);
        let err = muninn_err(&args, p);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn latents_draws_a_convergence_heatmap_and_pca_trajectories() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ckpt = trained(p);
    let ckpt = ckpt.to_str().unwrap();
    let prompt = "Weng earns 12 an hour for babysitting";
    let stdout = muninn_ok(
        &[
            "latents",
            ckpt,
            "--prompt",
            prompt,
            "--depth",
            "6",
            "--init-state",
            "zero",
            "--out",
            "lat",
        ],
        p,
    );
    assert!(stdout.contains("convergence.png"), "{stdout}");
    let report = json(&std::fs::read_to_string(p.join("lat/latents.json")).unwrap());
    let t = report["tokens"].as_array().unwrap().len();
    let conv: Vec<Vec<f64>> = report["convergence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(conv.len(), t);
    for row in &conv {
        assert_eq!(row.len(), 6);
        assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
    // The rows against s_1..s_6 from `muninn forward` at each depth (same tokens, s_0 = 0):
    // convergence[t][i−1] = ‖s_i − s_{i−1}‖/‖s_i‖, so the first column is exactly 1.
    let tokens: Vec<String> = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap().to_string())
        .collect();
    let tokens = tokens.join(",");
    let mut states = vec![tch::Tensor::zeros([t as i64, 64], tch::kind::FLOAT_CPU)];
    for depth in 1..=6 {
        let out = format!("s{depth}.safetensors");
        let d = depth.to_string();
        muninn_ok(
            &[
                "forward",
                ckpt,
                "--tokens",
                &tokens,
                "--depth",
                &d,
                "--init-state",
                "zero",
                "--out",
                &out,
            ],
            p,
        );
        let s = muninn_model::st::StFile::open(&p.join(&out))
            .unwrap()
            .get("state")
            .unwrap();
        states.push(s.get(0));
    }
    for (pos, row) in conv.iter().enumerate() {
        for (i, &got) in row.iter().enumerate() {
            let (s, prev) = (states[i + 1].get(pos as i64), states[i].get(pos as i64));
            let want = (&s - &prev).norm().double_value(&[]) / s.norm().double_value(&[]);
            assert!(
                (got - want).abs() <= 1e-4 * want.max(1e-3),
                "token {pos}, iteration {}: latents says {got}, the states give {want}",
                i + 1
            );
        }
    }
    assert_heatmap_cells(&p.join("lat/convergence.png"), &conv);
    let traj = report["pca"]["trajectories"].as_array().unwrap();
    assert!((1..=4).contains(&traj.len()));
    assert!(traj
        .iter()
        .all(|tr| tr["points"].as_array().unwrap().len() == 6));
    let ratio: Vec<f64> = report["pca"]["explained_variance_ratio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        ratio[0] >= ratio[1] && ratio[0] + ratio[1] <= 1.0 + 1e-9,
        "{ratio:?}"
    );
    for png in ["convergence.png", "pca.png"] {
        let (w, h) = decode_png(&p.join("lat").join(png));
        assert!(w >= 360 && h >= 360, "{png}: {w}x{h}");
    }
    assert_series_drawn(&p.join("lat/pca.png"), traj.len());
    let err = muninn_err(
        &[
            "latents",
            ckpt,
            "--prompt",
            prompt,
            "--depth",
            "2",
            "--pca-tokens",
            "99",
            "--out",
            "x",
        ],
        p,
    );
    assert!(err.contains("--pca-tokens"), "{err}");
    // One state has no principal components: refused before anything is written.
    let err = muninn_err(
        &[
            "latents", ckpt, "--prompt", "", "--depth", "1", "--out", "one",
        ],
        p,
    );
    assert!(err.contains("at least two states"), "{err}");
    assert!(!p.join("one").exists());
}
