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
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of {{question, steps, answer}} objects",
            path.display()
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v).with_context(|| {
                format!(
                    "{} entry {i}: expected question (string), steps (list of strings), answer (string)",
                    path.display()
                )
            })
        })
        .collect()
}

/// Writes a JSON list of examples, all at once.
pub fn write_json(path: &Path, examples: &[QaExample]) -> Result<()> {
    let bytes = serde_json::to_vec(examples)?;
    crate::atomic::write_file(path, &bytes)
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
