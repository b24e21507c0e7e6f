//! Tokenizer, shards and loader on real text: GSM8K's test split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use muninn_data::shard::Shard;
use muninn_data::{
    loader, prepare, tokenizer, Loader, Packing, PrepareOptions, TokenDataset, TokenizerInfo,
};

/// GSM8K's test split, shipped with the repository (tests/fixtures/gsm8k, MIT).
fn gsm8k() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gsm8k/test.jsonl")
}

/// GSM8K test questions and answers as a .jsonl with a `text` field (real English, 1319 documents).
fn corpus(dir: &Path) -> PathBuf {
    let src = std::fs::read_to_string(gsm8k()).unwrap();
    let mut out = String::new();
    for line in src.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = format!(
            "{}\n{}",
            v["question"].as_str().unwrap(),
            v["answer"].as_str().unwrap()
        );
        out.push_str(&serde_json::json!({ "text": text }).to_string());
        out.push('\n');
    }
    let path = dir.join("gsm8k.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

fn trained(dir: &Path) -> TokenizerInfo {
    let docs = muninn_data::corpus::read_documents(&[corpus(dir)], "text").unwrap();
    tokenizer::train(docs.iter().map(|d| d.text.as_str()), 600, false).unwrap()
}

/// Trains a tokenizer and prepares `dir/ds` with `block`-token rows; returns the tokenizer.
fn prepared(dir: &Path, block: usize) -> TokenizerInfo {
    let tok = trained(dir);
    prepare(&tok, &[corpus(dir)], &dir.join("ds"), &opts(block, 2)).unwrap();
    tok
}

fn opts(block: usize, threads: usize) -> PrepareOptions {
    PrepareOptions {
        block_size: block,
        val_fraction: 0.1,
        seed: 5,
        threads: Some(threads),
        ..Default::default()
    }
}

#[test]
fn trained_tokenizer_puts_huginns_specials_at_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let tok = trained(dir.path());
    assert_eq!(tok.vocab_size, 600);
    assert_eq!(
        tok.specials.bos,
        600 - 32,
        "bos opens the 32 specials at the top"
    );
    assert_eq!(tok.specials.eos, 600 - 31);
    assert_eq!(tok.specials.pad, 600 - 27);
    let ids = tok.encode("Janet sells 16 eggs.").unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|&i| i < 600 - 32));
    let decoded = tok.tokenizer.decode(&ids, false).unwrap();
    assert_eq!(decoded, "Janet sells 16 eggs.");
    // Saved and reloaded, it is the same tokenizer (same hash).
    tok.save(&dir.path().join("t.json")).unwrap();
    assert_eq!(
        TokenizerInfo::load(&dir.path().join("t.json"))
            .unwrap()
            .sha256,
        tok.sha256
    );
}

#[test]
fn a_tokenizer_without_the_special_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = trained(dir.path());
    let path = dir.path().join("t.json");
    tok.save(&path).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("<|pad|>", "<|padding|>");
    std::fs::write(&path, text).unwrap();
    let err = TokenizerInfo::load(&path).err().expect("must be refused");
    assert!(format!("{err:#}").contains("no `<|pad|>` token"), "{err:#}");
}

#[test]
fn prepare_is_identical_with_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let tok = trained(dir.path());
    let input = vec![corpus(dir.path())];
    let o = |t| PrepareOptions {
        shard_rows: 100,
        ..opts(64, t)
    };
    let r1 = prepare(&tok, &input, &dir.path().join("t1"), &o(1)).unwrap();
    let r2 = prepare(&tok, &input, &dir.path().join("t2"), &o(2)).unwrap();
    assert_eq!((r1.train_rows, r1.val_rows), (r2.train_rows, r2.val_rows));
    assert!(r1.train_rows > 300, "{r1:?}");
    let mut names: Vec<_> = std::fs::read_dir(dir.path().join("t1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() > 4, "several shards expected: {names:?}");
    for name in names {
        let a = std::fs::read(dir.path().join("t1").join(&name)).unwrap();
        let b = std::fs::read(dir.path().join("t2").join(&name)).unwrap();
        assert!(a == b, "{name:?} differs between 1 and 2 threads");
    }
    // Another seed gives another order.
    prepare(
        &tok,
        &input,
        &dir.path().join("t3"),
        &PrepareOptions { seed: 6, ..o(1) },
    )
    .unwrap();
    assert_ne!(
        std::fs::read(dir.path().join("t1/train-00000.bin")).unwrap(),
        std::fs::read(dir.path().join("t3/train-00000.bin")).unwrap()
    );
}

#[test]
fn rows_are_documents_wrapped_in_bos_eos_and_targets_are_shifted_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let tok = prepared(dir.path(), 32);
    let ds = TokenDataset::open(&dir.path().join("ds"), "train", Some(&tok)).unwrap();
    let (bos_id, eos_id) = (tok.specials.bos, tok.specials.eos);
    let (mut bos, mut eos) = (0, 0);
    let mut row = Vec::new();
    for i in 0..ds.rows() {
        ds.row(i, &mut row);
        assert_eq!(row.len(), 33);
        bos += row.iter().filter(|&&t| t == bos_id).count();
        eos += row.iter().filter(|&&t| t == eos_id).count();
        // Packed documents: every bos inside a row closes the previous document with an eos.
        for p in 1..row.len() {
            if row[p] == bos_id {
                assert_eq!(
                    row[p - 1],
                    eos_id,
                    "row {i}: bos at {p} without an eos before it"
                );
            }
            if row[p - 1] == eos_id {
                assert_eq!(
                    row[p],
                    bos_id,
                    "row {i}: eos at {} not followed by a bos",
                    p - 1
                );
            }
        }
    }
    assert!(bos > 500, "documents must be wrapped in bos: {bos}");
    // Rows overlap by one token and shuffled rows cut documents anywhere, so the counts agree
    // only roughly; an eos missing from every document would leave none.
    assert!(
        eos * 10 > bos * 9,
        "documents must end in eos: {eos} eos, {bos} bos"
    );
    let mut l = Loader::new(&ds, 1);
    let b = l.next_batch(0, 1, 3);
    ds.row(b.row_ids[1], &mut row);
    assert_eq!(
        &b.inputs[32..64],
        &row[..32].iter().map(|&t| t as i64).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        &b.targets[32..64],
        &row[1..].iter().map(|&t| t as i64).collect::<Vec<_>>()[..]
    );
}

#[test]
fn every_row_is_read_exactly_once_per_epoch_across_ranks() {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path(), 64);
    let ds = TokenDataset::open(&dir.path().join("ds"), "train", None).unwrap();
    let n = ds.rows();
    let (world, mb) = (3usize, 2usize);
    let mut loaders: Vec<Loader> = (0..world).map(|_| Loader::new(&ds, 9)).collect();
    let mut epoch0 = Vec::new();
    let steps = n as usize / (world * mb);
    for _ in 0..steps {
        for (rank, l) in loaders.iter_mut().enumerate() {
            epoch0.extend(l.next_batch(rank, world, mb).row_ids);
        }
    }
    let distinct: HashSet<u64> = epoch0.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        epoch0.len(),
        "a row was read twice within the epoch"
    );
    assert_eq!(epoch0.len(), steps * world * mb);
    assert!(n as usize - epoch0.len() < world * mb, "rows skipped");
    // Running past the end starts epoch 1 with a new order of the same rows.
    let l = &loaders[0];
    let e1: Vec<u64> = (n..2 * n).map(|g| l.row_of(g)).collect();
    assert_eq!(e1.iter().copied().collect::<HashSet<_>>().len(), n as usize);
    let e0: Vec<u64> = (0..n).map(|g| l.row_of(g)).collect();
    assert_ne!(e0, e1);
}

#[test]
fn resume_is_exact_and_works_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path(), 64);
    let ds = TokenDataset::open(&dir.path().join("ds"), "train", None).unwrap();
    // Reference: one rank, micro-batch 4, 10 steps.
    let mut single = Loader::new(&ds, 3);
    let reference: Vec<u64> = (0..10)
        .flat_map(|_| single.next_batch(0, 1, 4).row_ids)
        .collect();

    // 2 ranks × 2 for 3 steps, save, then continue on 1 rank × 4 from the saved state.
    let mut ranks = [Loader::new(&ds, 3), Loader::new(&ds, 3)];
    let mut seen = Vec::new();
    for _ in 0..3 {
        for (r, l) in ranks.iter_mut().enumerate() {
            seen.extend(l.next_batch(r, 2, 2).row_ids);
        }
    }
    let state = ranks[0].state();
    assert_eq!(state, ranks[1].state(), "ranks agree on the loader state");
    let json = serde_json::to_string(&state).unwrap();
    let mut resumed = Loader::new(&ds, 3);
    resumed
        .load_state(&serde_json::from_str(&json).unwrap())
        .unwrap();
    for _ in 3..10 {
        seen.extend(resumed.next_batch(0, 1, 4).row_ids);
    }
    assert_eq!(
        seen, reference,
        "the 2→1 rank resume must continue the same global sequence"
    );

    // A state from other data or another seed is refused.
    let mut other = Loader::new(&ds, 4);
    assert!(format!("{:#}", other.load_state(&state).unwrap_err()).contains("seed"));
    let bad = loader::LoaderState {
        data_digest: "0123".into(),
        ..state
    };
    assert!(format!("{:#}", resumed.load_state(&bad).unwrap_err()).contains("data"));
}

#[test]
fn validation_batches_are_the_same_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let tok = prepared(dir.path(), 64);
    let val = TokenDataset::open(&dir.path().join("ds"), "val", Some(&tok)).unwrap();
    // Training itself (a loader that has drawn batches) does not move the validation rows.
    let before = loader::val_batches(&val, 4, 20, 0, 1);
    let train = TokenDataset::open(&dir.path().join("ds"), "train", Some(&tok)).unwrap();
    let mut l = Loader::new(&train, 3);
    for _ in 0..5 {
        l.next_batch(0, 1, 4);
    }
    let a = loader::val_batches(&val, 4, 20, 0, 1);
    assert_eq!(a, before);
    // They are the split's first rows in order, read here straight from the val shard's bytes.
    let header: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ds/val-00000.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(header["dtype"], "u16", "{header}");
    let bytes = std::fs::read(dir.path().join("ds/val-00000.bin")).unwrap();
    let tokens: Vec<i64> = bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
        .collect();
    let width = 65;
    assert_eq!(a.len(), 5);
    for (j, b) in a.iter().enumerate() {
        assert_eq!(b.rows, 4);
        assert_eq!(
            b.row_ids,
            (4 * j as u64..4 * j as u64 + 4).collect::<Vec<_>>()
        );
        for r in 0..4 {
            let row = &tokens[(4 * j + r) * width..(4 * j + r + 1) * width];
            assert_eq!(
                &b.inputs[r * 64..(r + 1) * 64],
                &row[..64],
                "batch {j} row {r}"
            );
            assert_eq!(
                &b.targets[r * 64..(r + 1) * 64],
                &row[1..],
                "batch {j} row {r}"
            );
        }
    }
    let halves: Vec<u64> = (0..2)
        .flat_map(|r| loader::val_batches(&val, 4, 20, r, 2))
        .flat_map(|b| b.row_ids)
        .collect();
    assert_eq!(
        halves.iter().copied().collect::<HashSet<_>>().len(),
        20.min(val.rows() as usize)
    );
}

#[test]
fn incinerate_packing_starts_every_row_at_a_document() {
    let dir = tempfile::tempdir().unwrap();
    let tok = trained(dir.path());
    let o = PrepareOptions {
        packing: Packing::Incinerate,
        ..opts(64, 2)
    };
    let r = prepare(&tok, &[corpus(dir.path())], &dir.path().join("ds"), &o).unwrap();
    assert!(r.dropped_tokens > 0);
    let ds = TokenDataset::open(&dir.path().join("ds"), "train", None).unwrap();
    let mut row = Vec::new();
    for i in 0..ds.rows() {
        ds.row(i, &mut row);
        assert_eq!(
            row[0], tok.specials.bos,
            "row {i} does not start at a document"
        );
    }
}

// ---- bad input -------------------------------------------------------------------------------

fn prepare_err(tok: &TokenizerInfo, inputs: &[PathBuf], out: &Path, o: &PrepareOptions) -> String {
    let err = prepare(tok, inputs, out, o).expect_err("prepare must fail");
    assert!(!out.exists(), "a failed prepare must leave no output");
    format!("{err:#}")
}

#[test]
fn bad_inputs_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = trained(d);
    let out = d.join("out");
    let e = prepare_err(&tok, &[d.join("nope.txt")], &out, &opts(64, 1));
    assert!(
        e.contains("nope.txt") && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(d.join("empty.txt"), "  \n").unwrap();
    let e = prepare_err(&tok, &[d.join("empty.txt")], &out, &opts(64, 1));
    assert!(e.contains("empty.txt is empty"), "{e}");
    std::fs::write(d.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let e = prepare_err(&tok, &[d.join("latin1.txt")], &out, &opts(64, 1));
    assert!(e.contains("latin1.txt is not valid UTF-8"), "{e}");
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"text\": \"ok\"}\n{\"txt\": \"x\"}\n",
    )
    .unwrap();
    let e = prepare_err(&tok, &[d.join("bad.jsonl")], &out, &opts(64, 1));
    assert!(e.contains("bad.jsonl:2") && e.contains("`text`"), "{e}");
    std::fs::write(d.join("short.txt"), "Only a few words here.").unwrap();
    let e = prepare_err(&tok, &[d.join("short.txt")], &out, &opts(4096, 1));
    assert!(e.contains("no complete row") && e.contains("4097"), "{e}");
}

#[test]
fn corrupted_or_foreign_shards_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = trained(d);
    prepare(&tok, &[corpus(d)], &d.join("ds"), &opts(64, 2)).unwrap();

    // A tokenizer other than the one the shards were made with.
    let docs = muninn_data::corpus::read_documents(&[corpus(d)], "text").unwrap();
    let other = tokenizer::train(docs.iter().map(|x| x.text.as_str()), 700, false).unwrap();
    let e = format!(
        "{:#}",
        TokenDataset::open(&d.join("ds"), "train", Some(&other))
            .err()
            .unwrap()
    );
    assert!(e.contains("another tokenizer"), "{e}");

    // One flipped token byte: the checksum catches it.
    let bin = d.join("ds/val-00000.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&bin, &bytes).unwrap();
    let e = format!(
        "{:#}",
        TokenDataset::open(&d.join("ds"), "val", None)
            .err()
            .unwrap()
    );
    assert!(e.contains("val-00000.bin") && e.contains("checksum"), "{e}");

    // A header whose row count disagrees with the file.
    let json = d.join("ds/train-00000.json");
    let text = std::fs::read_to_string(&json).unwrap();
    let mut h: serde_json::Value = serde_json::from_str(&text).unwrap();
    h["rows"] = serde_json::json!(h["rows"].as_u64().unwrap() + 1);
    std::fs::write(&json, h.to_string()).unwrap();
    let e = format!(
        "{:#}",
        Shard::open(&d.join("ds"), "train-00000").err().unwrap()
    );
    assert!(e.contains("train-00000.bin") && e.contains("header"), "{e}");

    // A vocabulary larger than the dtype can hold.
    h["rows"] = serde_json::json!(h["rows"].as_u64().unwrap() - 1);
    h["vocab_size"] = serde_json::json!(70_000);
    std::fs::write(&json, h.to_string()).unwrap();
    let e = format!(
        "{:#}",
        Shard::open(&d.join("ds"), "train-00000").err().unwrap()
    );
    assert!(
        e.contains("train-00000.json") && e.contains("does not fit"),
        "{e}"
    );
}
