//! A large corpus for scripts/bench-data.sh: the paragraphs of the `.txt` files under SRC, repeated
//! until about MB megabytes of text, written as OUT.jsonl.zst or OUT.parquet (a `text` column).
//!
//!   cargo run --release -p muninn-data --example make_corpus -- SRC MB OUT.{jsonl.zst,parquet}

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: make_corpus SRC MB OUT.{{jsonl.zst,parquet}}"
    );
    let (src, mb, out) = (
        Path::new(&args[1]),
        args[2].parse::<f64>()?,
        Path::new(&args[3]),
    );
    let files = muninn_data::corpus::input_files(&[src.to_path_buf()])?;
    let mut paragraphs = Vec::new();
    for d in muninn_data::corpus::read_documents(&files, "text")? {
        // Documents of a few kB, as web text is.
        let mut cur = String::new();
        for p in d.text.split("\n\n") {
            cur.push_str(p);
            cur.push_str("\n\n");
            if cur.len() > 4000 {
                paragraphs.push(std::mem::take(&mut cur));
            }
        }
        if !cur.trim().is_empty() {
            paragraphs.push(cur);
        }
    }
    let target = (mb * 1e6) as usize;
    let docs = paragraphs.iter().cycle().scan(0usize, |n, p| {
        *n += p.len();
        (*n <= target).then_some(p.as_str())
    });
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".jsonl.zst") {
        let mut w = zstd::Encoder::new(std::fs::File::create(out)?, 3)?.auto_finish();
        for d in docs {
            writeln!(w, "{}", serde_json::json!({ "text": d }))?;
        }
    } else if name.ends_with(".parquet") {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        let schema = Arc::new(parquet::schema::parser::parse_message_type(
            "message doc { required binary text (UTF8); }",
        )?);
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let mut w = SerializedFileWriter::new(std::fs::File::create(out)?, schema, props)?;
        let docs: Vec<&str> = docs.collect();
        for group in docs.chunks(20_000) {
            let mut rg = w.next_row_group()?;
            let mut col = rg.next_column()?.expect("one column");
            let values: Vec<ByteArray> = group.iter().map(|d| ByteArray::from(*d)).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)?;
            col.close()?;
            rg.close()?;
        }
        w.close()?;
    } else {
        anyhow::bail!("{}: write .jsonl.zst or .parquet", out.display());
    }
    Ok(())
}
