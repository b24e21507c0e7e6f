//! Streaming preparation: compressed JSON lines and Parquet give the shards plain JSON lines give;
//! a buffer smaller than the corpus is deterministic for any thread count; parts prepared apart
//! and merged hold every document once; a dataset grows by new parts without touching old shards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use muninn_data::prepare::{merge, Part};
use muninn_data::{prepare, tokenizer, PrepareOptions, TokenDataset, TokenizerInfo};

/// GSM8K's test split as (question + answer) documents.
fn documents() -> Vec<String> {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gsm8k/test.jsonl"),
    )
    .unwrap();
    src.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}\n{}",
                v["question"].as_str().unwrap(),
                v["answer"].as_str().unwrap()
            )
        })
        .collect()
}

fn jsonl(docs: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in docs {
        writeln!(out, "{}", serde_json::json!({ "id": 1, "text": d })).unwrap();
    }
    out
}

fn write_parquet(path: &Path, docs: &[String]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = Arc::new(
        parse_message_type("message doc { required int64 id; optional binary text (UTF8); }")
            .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(300)) // several row groups
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in docs.chunks(300) {
        let mut rg = w.next_row_group().unwrap();
        // One null between documents: skipped, as an empty string would be.
        let mut values = Vec::new();
        let mut defs = Vec::new();
        for (i, d) in group.iter().enumerate() {
            values.push(ByteArray::from(d.as_str()));
            defs.push(1);
            if i == 3 {
                defs.push(0);
            }
        }
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..defs.len() as i64).collect();
        col.typed::<parquet::data_type::Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn tokenizer(docs: &[String]) -> TokenizerInfo {
    tokenizer::train(docs.iter().map(String::as_str), 600, false).unwrap()
}

fn opts(threads: usize) -> PrepareOptions {
    PrepareOptions {
        block_size: 32,
        val_fraction: 0.1,
        seed: 5,
        threads: Some(threads),
        shard_rows: 500,
        ..Default::default()
    }
}

/// Every file of a dataset directory (relative path → bytes), recursively.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().into(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = Default::default();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn compressed_json_lines_and_parquet_give_the_shards_of_plain_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let docs = documents();
    let tok = tokenizer(&docs);
    let plain = p.join("c.jsonl");
    std::fs::write(&plain, jsonl(&docs)).unwrap();
    let zst = p.join("c.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(&jsonl(&docs)[..], 3).unwrap()).unwrap();
    let gz = p.join("c.json.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&jsonl(&docs)).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let pq = p.join("c.parquet");
    write_parquet(&pq, &docs);

    prepare(&tok, &[plain], &p.join("plain"), &opts(2)).unwrap();
    let want = files(&p.join("plain"));
    assert!(want.len() > 4, "{:?}", want.keys());
    for (input, name) in [(zst, "zst"), (gz, "gz"), (pq, "parquet")] {
        let r = prepare(&tok, &[input], &p.join(name), &opts(2)).unwrap();
        assert_eq!(r.documents, docs.len(), "{name}");
        assert!(
            files(&p.join(name)) == want,
            "{name}: other bytes than the .jsonl"
        );
    }
    // A column that is not there is named, with the ones that are.
    let err = prepare(
        &tok,
        &[p.join("c.parquet")],
        &p.join("bad"),
        &PrepareOptions {
            text_field: "content".into(),
            ..opts(1)
        },
    )
    .unwrap_err();
    let e = format!("{err:#}");
    assert!(
        e.contains("no column `content`") && e.contains("text"),
        "{e}"
    );
    assert!(!p.join("bad").exists());
}

#[test]
fn a_small_buffer_streams_deterministically_and_keeps_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let docs = documents();
    let tok = tokenizer(&docs);
    let input = p.join("c.jsonl");
    std::fs::write(&input, jsonl(&docs)).unwrap();
    let small = |threads| PrepareOptions {
        buffer_bytes: 40_000, // about 1/10 of the corpus per buffer
        ..opts(threads)
    };
    let one = prepare(
        &tok,
        std::slice::from_ref(&input),
        &p.join("one"),
        &small(1),
    )
    .unwrap();
    prepare(
        &tok,
        std::slice::from_ref(&input),
        &p.join("two"),
        &small(2),
    )
    .unwrap();
    assert!(
        files(&p.join("one")) == files(&p.join("two")),
        "threads changed the bytes"
    );
    let whole = prepare(&tok, &[input], &p.join("whole"), &opts(2)).unwrap();
    assert_eq!((one.documents, one.tokens), (whole.documents, whole.tokens));
    // Each buffer sends at least one row to validation; the rest is the same concat stream.
    assert!(
        one.val_rows >= 10 && one.train_rows + one.val_rows == whole.train_rows + whole.val_rows
    );
    assert!(
        files(&p.join("one")) != files(&p.join("whole")),
        "the buffers shuffle apart"
    );
    let ds = TokenDataset::open(&p.join("one"), "train", Some(&tok)).unwrap();
    assert_eq!(ds.rows(), one.train_rows);
}

#[test]
fn parts_prepared_apart_merge_into_one_dataset_that_can_grow() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let docs = documents();
    let tok = tokenizer(&docs);
    let inputs: Vec<PathBuf> = docs
        .chunks(docs.len() / 4 + 1)
        .enumerate()
        .map(|(i, c)| {
            let f = p.join(format!("in/{i}.jsonl"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, jsonl(c)).unwrap();
            f
        })
        .collect();
    let out = p.join("ds");
    let part = |i| PrepareOptions {
        part: Some(Part { index: i, count: 2 }),
        ..opts(1)
    };
    prepare(&tok, &[p.join("in")], &out, &part(0)).unwrap();
    let err = format!("{:#}", merge(&out).unwrap_err());
    assert!(err.contains("parts [1] of 2 are missing"), "{err}");
    prepare(&tok, &[p.join("in")], &out, &part(1)).unwrap();
    let index = merge(&out).unwrap();
    let whole = prepare(&tok, &inputs, &p.join("whole"), &opts(1)).unwrap();
    assert_eq!(
        (index.documents, index.tokens),
        (whole.documents, whole.tokens as u64)
    );
    let train = TokenDataset::open(&out, "train", Some(&tok)).unwrap();
    let val = TokenDataset::open(&out, "val", Some(&tok)).unwrap();
    // Each part drops only its own last partial row.
    let rows = train.rows() + val.rows();
    let all = whole.train_rows + whole.val_rows;
    assert!(rows <= all && rows + 2 >= all, "{rows} vs {all}");
    // The same part again gives the same bytes (any machine, any time).
    prepare(&tok, &[p.join("in")], &p.join("again"), &part(1)).unwrap();
    assert!(files(&out.join("parts/1-of-2")) == files(&p.join("again/parts/1-of-2")));

    // Another corpus added later: a new part, merged; the old shards are untouched.
    let before = files(&out.join("parts"));
    prepare(
        &tok,
        &[inputs[0].clone()],
        &out,
        &PrepareOptions {
            part_name: Some("extra".into()),
            ..opts(1)
        },
    )
    .unwrap();
    let grown = merge(&out).unwrap();
    assert!(grown.documents > index.documents);
    let after = files(&out.join("parts"));
    assert!(before.iter().all(|(k, v)| after.get(k) == Some(v)));
    let train = TokenDataset::open(&out, "train", Some(&tok)).unwrap();
    assert!(
        train.rows() > 0
            && grown.splits["train"]
                .iter()
                .any(|s| s.starts_with("parts/extra/"))
    );
}

#[test]
fn a_mixture_draws_its_weights_deterministically_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let docs = documents();
    let tok = tokenizer(&docs);
    let (a, b) = docs.split_at(docs.len() / 2);
    for (name, part) in [("a", a), ("b", b)] {
        let f = p.join(format!("{name}.jsonl"));
        std::fs::write(&f, jsonl(part)).unwrap();
        prepare(&tok, &[f], &p.join(name), &opts(1)).unwrap();
    }
    std::fs::create_dir(p.join("mix")).unwrap();
    std::fs::write(
        p.join("mix/mixture.toml"),
        "[[source]]\ndir = \"../a\"\nweight = 3.0\n\n[[source]]\ndir = \"../b\"\nweight = 1.0\n",
    )
    .unwrap();
    let mix = TokenDataset::open(&p.join("mix"), "train", Some(&tok)).unwrap();
    let rows_a = TokenDataset::open(&p.join("a"), "train", Some(&tok))
        .unwrap()
        .rows();
    assert_eq!(
        mix.rows(),
        rows_a
            + TokenDataset::open(&p.join("b"), "train", Some(&tok))
                .unwrap()
                .rows()
    );
    // Two blocks of the schedule: each source exactly its slots (3072 and 1024 per 4096).
    let loader = muninn_data::Loader::new(&mix, 11);
    let from_a = (0..8192).filter(|&g| loader.row_of(g) < rows_a).count();
    assert_eq!(from_a, 2 * 3072);
    // Deterministic, and a resumed loader continues where the first was, on another world size.
    let mut first = muninn_data::Loader::new(&mix, 11);
    for _ in 0..5 {
        first.next_batch(0, 2, 4);
    }
    let mut resumed = muninn_data::Loader::new(&mix, 11);
    resumed.load_state(&first.state()).unwrap();
    let (x, y) = (first.next_batch(0, 1, 8), resumed.next_batch(0, 1, 8));
    assert_eq!(x, y);
    // Another seed draws other rows; the state refuses another mixture.
    assert_ne!(
        muninn_data::Loader::new(&mix, 12).next_batch(0, 1, 8),
        muninn_data::Loader::new(&mix, 11).next_batch(0, 1, 8)
    );
    let plain = TokenDataset::open(&p.join("a"), "train", Some(&tok)).unwrap();
    let mut other = muninn_data::Loader::new(&plain, 11);
    assert!(other.load_state(&first.state()).is_err());
    // Validation follows the schedule too: both sources appear among the first rows.
    let val = TokenDataset::open(&p.join("mix"), "val", Some(&tok)).unwrap();
    let rows_a_val = TokenDataset::open(&p.join("a"), "val", Some(&tok))
        .unwrap()
        .rows();
    let ids: Vec<u64> = muninn_data::loader::val_batches(&val, 4, 40, 0, 1)
        .iter()
        .flat_map(|b| b.row_ids.clone())
        .collect();
    assert!(ids.iter().any(|&r| r < rows_a_val) && ids.iter().any(|&r| r >= rows_a_val));
}
