//! Reasoning examples as COCONUT reads them: a JSON list of `{question, steps, answer}`
//! (`coconut-reference.md` §4; other fields, such as ProsQA's `edges`, are ignored), the GSM8K
//! splits rebuilt from the openai JSONL, and the answer rule of the reference's evaluation.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// One question, its reasoning steps and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaExample {
    pub question: String,
    pub steps: Vec<String>,
    pub answer: String,
}

/// Reads a JSON list of examples; a malformed entry is named by its index and field.
pub fn read_json(path: &Path) -> Result<Vec<QaExample>> {
    read_list(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| example(v, path, i))
        .collect()
}

/// The entries of a JSON list file, unparsed, so that a rewrite can keep their other fields.
pub fn read_list(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of {{question, steps, answer}} objects",
            path.display()
        )
    })
}

/// Entry `i` of the list in `path` as an example, or an error naming the entry and its fields.
pub fn example(v: &serde_json::Value, path: &Path, i: usize) -> Result<QaExample> {
    QaExample::deserialize(v).with_context(|| {
        format!(
            "{} entry {i}: expected question (string), steps (list of strings), answer (string)",
            path.display()
        )
    })
}

/// Writes a JSON list of examples, all at once.
pub fn write_json(path: &Path, examples: &[QaExample]) -> Result<()> {
    let bytes = serde_json::to_vec(examples)?;
    crate::atomic::write_file(path, &bytes)
}

/// `qa.json`: what a QA dataset directory holds (`train.json`, `test.json`, optionally
/// `valid.json`, and for generated data its `tokenizer.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaInfo {
    pub format: String,
    pub version: u32,
    /// Where the examples came from, e.g. "gsm8k (openai train.jsonl, test.jsonl)".
    pub source: String,
    pub splits: Vec<(String, usize)>,
    #[serde(default)]
    pub generated: Option<ProsQaGenerate>,
}

pub const INFO_FILE: &str = "qa.json";
pub const FORMAT: &str = "muninn-qa";

/// `[data] prosqa = { ... }` (or `muninn data prosqa`): generated ProsQA-style graphs and a
/// byte-level BPE trained on their training split, with COCONUT's tokens. The same spec always
/// writes the same files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProsQaGenerate {
    pub train: usize,
    pub test: usize,
    #[serde(default)]
    pub seed: u64,
    /// The tokenizer's size, its 32 specials included (COCONUT's 3 come on top).
    pub vocab_size: usize,
    #[serde(default)]
    pub graph: crate::prosqa::ProsQaSpec,
    /// How questions, steps and answers are written: the upstream `"sentences"` or `"graph"` tokens.
    #[serde(default)]
    pub encoding: crate::prosqa::Encoding,
}

/// A QA dataset directory.
pub struct QaData {
    pub dir: std::path::PathBuf,
    pub info: QaInfo,
}

impl QaData {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: is {} a QA dataset (`muninn data gsm8k` or `muninn data prosqa`)?",
                path.display(),
                dir.display()
            )
        })?;
        let info: QaInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            info.format == FORMAT && info.version == 1,
            "{}: format {} version {}, expected {FORMAT} version 1",
            path.display(),
            info.format,
            info.version
        );
        Ok(QaData {
            dir: dir.to_path_buf(),
            info,
        })
    }

    /// The examples of one split (`train`, `valid`, `test`).
    pub fn split(&self, name: &str) -> Result<Vec<QaExample>> {
        read_json(&self.dir.join(format!("{name}.json")))
    }

    /// The generated dataset `spec` describes, at `dir`: written when missing (and said so), or
    /// checked to be exactly that. An existing directory is never overwritten.
    pub fn ensure(dir: &Path, spec: &ProsQaGenerate) -> Result<Self> {
        if !dir.exists() {
            let start = std::time::Instant::now();
            write_prosqa(dir, spec)?;
            eprintln!(
                "generated {} ({} training and {} test graphs, seed {}) in {:.1} s",
                dir.display(),
                spec.train,
                spec.test,
                spec.seed,
                start.elapsed().as_secs_f64()
            );
        }
        let data = Self::open(dir)?;
        ensure!(
            data.info.generated.as_ref() == Some(spec),
            "{} exists but was not generated by this config's data.prosqa ({INFO_FILE}: {:?}); move it away or point data.dir elsewhere",
            dir.display(),
            data.info.generated
        );
        Ok(data)
    }
}

/// One split as written: its name, its examples (any layout with question, steps and answer).
pub struct Split<'a, T: Serialize> {
    pub name: &'a str,
    pub examples: &'a [T],
}

/// Writes a new QA dataset directory from its splits (every one of the same layout).
pub fn write_dir<T: Serialize>(
    out: &Path,
    source: &str,
    splits: &[Split<T>],
    generated: Option<ProsQaGenerate>,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<QaInfo> {
    let info = QaInfo {
        format: FORMAT.into(),
        version: 1,
        source: source.into(),
        splits: splits
            .iter()
            .map(|s| (s.name.to_string(), s.examples.len()))
            .collect(),
        generated,
    };
    crate::atomic::write_new_dir(out, |tmp| {
        for s in splits {
            let bytes = serde_json::to_vec(s.examples)?;
            crate::atomic::write_file(&tmp.join(format!("{}.json", s.name)), &bytes)?;
        }
        extra(tmp)?;
        crate::atomic::write_file(&tmp.join(INFO_FILE), &serde_json::to_vec_pretty(&info)?)
    })?;
    Ok(info)
}

/// Generates ProsQA graphs (training from stream `seed`, test from its own stream, so the test set
/// never depends on the training count) and trains the tokenizer on the training split.
pub fn write_prosqa(out: &Path, spec: &ProsQaGenerate) -> Result<QaInfo> {
    ensure!(
        spec.train >= 1 && spec.test >= 1,
        "prosqa train and test: at least one graph each"
    );
    let encoded = |seed: u64, count: usize| {
        crate::prosqa::generate(&spec.graph, seed, count)?
            .into_iter()
            .map(|e| e.encoded(spec.encoding))
            .collect::<Result<Vec<_>>>()
    };
    let train = encoded(spec.seed.wrapping_mul(2), spec.train)?;
    let test = encoded(spec.seed.wrapping_mul(2) + 1, spec.test)?;
    let full: Vec<String> = train
        .iter()
        .map(|e| format!("{}\n{}\n### {}", e.question, e.steps.join("\n"), e.answer))
        .collect();
    let tok = crate::tokenizer::train(full.iter().map(String::as_str), spec.vocab_size, false)?;
    let (tok, _) = crate::coconut::add_tokens(tok)?;
    write_dir(
        out,
        "prosqa generator (coconut-reference.md §4), upstream layout",
        &[
            Split {
                name: "train",
                examples: &train,
            },
            Split {
                name: "test",
                examples: &test,
            },
        ],
        Some(spec.clone()),
        |tmp| tok.save(&tmp.join("tokenizer.json")),
    )
}

/// What an evaluation compares: the text after the last `#`, commas dropped, trimmed (the
/// reference's `run.py` rule, applied to generated text and gold answers alike).
pub fn answer_of(text: &str) -> String {
    let tail = text.rsplit('#').next().unwrap_or(text);
    tail.replace(',', "").trim().to_string()
}

/// GSM8K in COCONUT's layout, rebuilt from the openai files (`coconut-reference.md` §4, checked
/// row for row against the iCoT files): steps = the `<<…>>` calculator annotations in order (one
/// empty step where a solution has none, as the reference's split on spaces gives), answer = the
/// text after `####`.
pub mod gsm8k {
    use super::*;

    /// Rows of openai `train.jsonl` (0-based, in the iCoT file's order) that make iCoT's
    /// validation split (da03/Internalize_CoT_Step_by_Step@e06a32e `data/gsm8k/valid.txt`, each
    /// row matched by question, steps and answer).
    const VALID_ROWS: &str = include_str!("gsm8k_valid_rows.txt");

    /// The three splits: openai train less the validation rows (6,973), those 500, openai test (1,319).
    pub struct Splits {
        pub train: Vec<QaExample>,
        pub valid: Vec<QaExample>,
        pub test: Vec<QaExample>,
    }

    #[derive(Deserialize)]
    struct Row {
        question: String,
        answer: String,
    }

    /// One openai row: `answer` is the worked solution ending in `#### FINAL`.
    pub fn example(question: &str, solution: &str) -> Result<QaExample> {
        let Some((work, answer)) = solution.rsplit_once("####") else {
            bail!("the solution has no `####` before its final answer");
        };
        let mut steps = Vec::new();
        let mut rest = work;
        while let Some(start) = rest.find("<<") {
            let Some(len) = rest[start..].find(">>") else {
                bail!("a `<<` annotation is not closed by `>>`");
            };
            steps.push(rest[start..start + len + 2].to_string());
            rest = &rest[start + len + 2..];
        }
        if steps.is_empty() {
            steps.push(String::new());
        }
        Ok(QaExample {
            question: question.to_string(),
            steps,
            answer: answer.trim().to_string(),
        })
    }

    /// Every row of an openai JSONL file.
    pub fn read_jsonl(path: &Path) -> Result<Vec<QaExample>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let row: Row = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{} line {}: expected {{\"question\": …, \"answer\": …}}",
                        path.display(),
                        i + 1
                    )
                })?;
                example(&row.question, &row.answer)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))
            })
            .collect()
    }

    /// The splits from a directory holding openai's `train.jsonl` and `test.jsonl`.
    pub fn from_openai(dir: &Path) -> Result<Splits> {
        let train = read_jsonl(&dir.join("train.jsonl"))?;
        let test = read_jsonl(&dir.join("test.jsonl"))?;
        let valid_rows: Vec<usize> = VALID_ROWS
            .lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .expect("gsm8k_valid_rows.txt holds row numbers")
            })
            .collect();
        ensure!(
            valid_rows.iter().all(|&r| r < train.len()),
            "{}/train.jsonl has {} rows; the validation split needs row {}: is it openai's file?",
            dir.display(),
            train.len(),
            valid_rows.iter().max().copied().unwrap_or(0)
        );
        let held: std::collections::HashSet<usize> = valid_rows.iter().copied().collect();
        let valid = valid_rows.iter().map(|&r| train[r].clone()).collect();
        let train = train
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !held.contains(i))
            .map(|(_, e)| e)
            .collect();
        Ok(Splits { train, valid, test })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_rule_takes_the_text_after_the_last_hash() {
        assert_eq!(answer_of("x <<2*3=6>>\n### 1,200 "), "1200");
        assert_eq!(answer_of("Tom is a lempus."), "Tom is a lempus.");
        assert_eq!(answer_of("## a # b"), "b");
    }

    #[test]
    fn a_solution_becomes_its_annotations_and_answer() {
        let e = gsm8k::example(
            "q?",
            "Half is 48/2 = <<48/2=24>>24.\nSum 48+24 = <<48+24=72>>72.\n#### 72",
        )
        .unwrap();
        assert_eq!(e.steps, ["<<48/2=24>>", "<<48+24=72>>"]);
        assert_eq!(e.answer, "72");
        // No annotation: one empty step, as the reference's split of an empty string gives.
        assert_eq!(gsm8k::example("q", "It is 5.\n#### 5").unwrap().steps, [""]);
        assert!(gsm8k::example("q", "no final answer").is_err());
        assert!(gsm8k::example("q", "<<1+1=2 #### 2").is_err());
    }
}
