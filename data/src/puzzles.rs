//! Grid-puzzle datasets for TRM (`trm-reference.md` §4): Sudoku and Maze share one directory
//! layout (`puzzles.json`, `train.csv`, `test.csv`, each CSV a `question,answer,rating` table as the
//! Sudoku-Extreme and Maze-Hard files are), one loader and one validation split. What differs by
//! kind (how a row reads, its tokens, its augmentation) is [`PuzzleKind`]'s.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::loader::{Batch, LoaderState};
use crate::sudoku::{Boxes, Pair};
use crate::{maze, sudoku};

/// What a dataset's grids are. Written `{ sudoku = "2x3" }` or `{ maze = 11 }` (the side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PuzzleKind {
    Sudoku(Boxes),
    Maze(usize),
}

impl PuzzleKind {
    /// The grid's side N (N×N cells).
    pub fn side(self) -> usize {
        match self {
            PuzzleKind::Sudoku(b) => b.n(),
            PuzzleKind::Maze(n) => n,
        }
    }

    pub fn seq_len(self) -> usize {
        self.side() * self.side()
    }

    /// The model's vocabulary: PAD = 0 and the cell tokens.
    pub fn vocab_size(self) -> i64 {
        match self {
            PuzzleKind::Sudoku(b) => b.n() as i64 + 2,
            PuzzleKind::Maze(_) => maze::CHARSET.len() as i64 + 1,
        }
    }

    /// TRM's token of a stored cell: sudoku value v → v + 1 (blank = 1), a maze cell is stored as
    /// its token. Every cell is supervised.
    pub fn token(self, v: u8) -> i64 {
        match self {
            PuzzleKind::Sudoku(_) => v as i64 + 1,
            PuzzleKind::Maze(_) => v as i64,
        }
    }

    /// The reference's augmentation of a pair, from `rng`.
    pub fn augment(self, pair: &Pair, rng: &mut ChaCha8Rng) -> Pair {
        match self {
            PuzzleKind::Sudoku(b) => {
                let mut out = sudoku::augment(&[&pair.0, &pair.1], b, rng);
                let a = out.pop().expect("two grids");
                (out.pop().expect("two grids"), a)
            }
            PuzzleKind::Maze(_) => maze::augment(pair, rng),
        }
    }

    fn cell_char(self, v: u8) -> char {
        match self {
            PuzzleKind::Sudoku(_) => sudoku::cell_char(v),
            PuzzleKind::Maze(_) => maze::cell_char(v),
        }
    }

    /// Reads one CSV row's pair; the message says what is wrong.
    fn parse_pair(self, q: &str, a: &str, check: bool) -> Result<Pair, String> {
        let (kind, pair) = match self {
            PuzzleKind::Sudoku(_) => {
                sudoku::parse_pair(q, a, check).map(|(b, p)| (PuzzleKind::Sudoku(b), p))?
            }
            PuzzleKind::Maze(_) => {
                maze::parse_pair(q, a, check).map(|(n, p)| (PuzzleKind::Maze(n), p))?
            }
        };
        if kind != self {
            return Err(format!("a {kind} among {self} puzzles"));
        }
        Ok(pair)
    }

    /// The kind a CSV row's question reads as: a maze if it holds any of `# SG`, else sudoku.
    fn sniff(q: &str) -> Result<PuzzleKind, String> {
        let n = (q.len() as f64).sqrt().round() as usize;
        if q.bytes().any(|c| b"# SG".contains(&c)) {
            Ok(PuzzleKind::Maze(n))
        } else {
            Boxes::for_size(n)
                .map(PuzzleKind::Sudoku)
                .ok_or_else(|| format!("no sudoku box shape for a {}-cell question", q.len()))
        }
    }
}

impl std::fmt::Display for PuzzleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.side();
        match self {
            PuzzleKind::Sudoku(b) => write!(f, "{n}×{n} sudoku ({b} boxes)"),
            PuzzleKind::Maze(_) => write!(f, "{n}×{n} maze"),
        }
    }
}

/// Writes pairs as a `question,answer,rating` CSV; `rating` is the number of blanks of a sudoku,
/// the path length of a maze.
pub fn write_csv(path: &Path, kind: PuzzleKind, pairs: &[Pair]) -> Result<()> {
    let mut text = String::from("question,answer,rating\n");
    for (q, a) in pairs {
        let rating = match kind {
            PuzzleKind::Sudoku(_) => q.iter().filter(|&&v| v == 0).count(),
            PuzzleKind::Maze(_) => a.iter().filter(|&&v| v == maze::PATH).count(),
        };
        text.extend(q.iter().map(|&v| kind.cell_char(v)));
        text.push(',');
        text.extend(a.iter().map(|&v| kind.cell_char(v)));
        text.push_str(&format!(",{rating}\n"));
    }
    crate::atomic::write_file(path, text.as_bytes())
}

/// Reads a CSV in the Sudoku-Extreme or Maze-Hard layout (a header naming `question` and `answer`
/// among any other columns, e.g. `source,question,answer,rating`). The first row says which kind
/// (a maze holds `# SGo`); every row must then be a valid pair of that kind and size (see
/// [`sudoku::parse_pair`], [`maze::parse_pair`]; `check`: sudoku uniqueness, maze shortest path).
/// Errors name the file and row.
pub fn read_csv(path: &Path, check: bool) -> Result<PuzzleSet> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header = lines
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .with_context(|| format!("reading {}", path.display()))?;
    let cols: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).with_context(|| {
            format!(
                "{}: no `{name}` column in the header `{header}`",
                path.display()
            )
        })
    };
    let (qc, ac) = (col("question")?, col("answer")?);
    let (mut kind, mut pairs) = (None::<PuzzleKind>, Vec::new());
    for (i, line) in lines.enumerate() {
        let row = i + 2;
        let line = line.with_context(|| format!("reading {} row {row}", path.display()))?;
        // A maze's open cells are spaces: only the line ending may go.
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} row {row}", path.display());
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        ensure!(
            fields.len() == cols.len(),
            "{}: {} fields, the header has {}",
            at(),
            fields.len(),
            cols.len()
        );
        let (q, a) = (fields[qc], fields[ac]);
        let k = match kind {
            Some(k) => k,
            None => {
                *kind.insert(PuzzleKind::sniff(q).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?)
            }
        };
        let pair = k
            .parse_pair(q, a, check)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        pairs.push(pair);
    }
    let kind = kind.with_context(|| format!("{} has no puzzles", path.display()))?;
    Ok(PuzzleSet { kind, pairs })
}

/// How a generated puzzle dataset was made (`muninn data sudoku|maze`, or `[data] generate` in a
/// run config): the same spec always writes the same puzzles. Written with one kind key:
/// `{ sudoku = "2x3", train = 1000, test = 500, seed = 0 }` or `{ maze = 11, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawSpec", into = "RawSpec")]
pub struct GenerateSpec {
    pub kind: PuzzleKind,
    pub train: usize,
    pub test: usize,
    pub seed: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sudoku: Option<Boxes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maze: Option<usize>,
    train: usize,
    test: usize,
    #[serde(default)]
    seed: u64,
}

impl TryFrom<RawSpec> for GenerateSpec {
    type Error = anyhow::Error;
    fn try_from(r: RawSpec) -> Result<Self> {
        let kind = match (r.sudoku, r.maze) {
            (Some(b), None) => PuzzleKind::Sudoku(b),
            (None, Some(n)) => {
                ensure!(
                    n % 2 == 1 && n >= 5,
                    "maze = {n}: the generator makes mazes of odd side >= 5"
                );
                PuzzleKind::Maze(n)
            }
            _ => bail!("name one kind of puzzle: sudoku = \"RxC\" or maze = SIDE"),
        };
        ensure!(
            r.train >= 1 && r.test >= 1,
            "train and test: at least one puzzle each"
        );
        Ok(GenerateSpec {
            kind,
            train: r.train,
            test: r.test,
            seed: r.seed,
        })
    }
}

impl From<GenerateSpec> for RawSpec {
    fn from(s: GenerateSpec) -> RawSpec {
        let (sudoku, maze) = match s.kind {
            PuzzleKind::Sudoku(b) => (Some(b), None),
            PuzzleKind::Maze(n) => (None, Some(n)),
        };
        RawSpec {
            sudoku,
            maze,
            train: s.train,
            test: s.test,
            seed: s.seed,
        }
    }
}

/// `puzzles.json`: what a puzzle dataset directory holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PuzzleInfo {
    pub format: String,
    pub version: u32,
    pub kind: PuzzleKind,
    pub train: usize,
    pub test: usize,
    /// Set when the generator wrote it.
    pub generated: Option<GenerateSpec>,
    /// [`PuzzleSet::digest`] of train and test.
    pub train_sha256: String,
    pub test_sha256: String,
}

pub const INFO_FILE: &str = "puzzles.json";
const FORMAT: &str = "muninn-puzzles";
const VERSION: u32 = 2;

/// A puzzle dataset directory: `puzzles.json`, `train.csv`, `test.csv`.
pub struct PuzzleData {
    pub info: PuzzleInfo,
    pub train: PuzzleSet,
    pub test: PuzzleSet,
}

impl PuzzleData {
    /// Writes the new directory `out` from train and test sets.
    pub fn write(
        out: &Path,
        train: &PuzzleSet,
        test: &PuzzleSet,
        generated: Option<GenerateSpec>,
    ) -> Result<PuzzleInfo> {
        ensure!(
            train.kind == test.kind,
            "train puzzles are {}, test puzzles {}",
            train.kind,
            test.kind
        );
        let info = PuzzleInfo {
            format: FORMAT.into(),
            version: VERSION,
            kind: train.kind,
            train: train.pairs.len(),
            test: test.pairs.len(),
            generated,
            train_sha256: train.digest(),
            test_sha256: test.digest(),
        };
        crate::atomic::write_new_dir(out, |dir| {
            write_csv(&dir.join("train.csv"), train.kind, &train.pairs)?;
            write_csv(&dir.join("test.csv"), test.kind, &test.pairs)?;
            std::fs::write(dir.join(INFO_FILE), serde_json::to_string_pretty(&info)?)?;
            Ok(())
        })?;
        Ok(info)
    }

    /// Reads a directory and checks it against its `puzzles.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (not a puzzle dataset? write one with `muninn data sudoku` or `muninn data maze`)",
                path.display()
            )
        })?;
        let head: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            head["format"] == FORMAT && head["version"] == VERSION,
            "{}: format {} v{}, this Muninn reads {FORMAT} v{VERSION} (an older dataset: move it away and write it again)",
            path.display(),
            head["format"],
            head["version"]
        );
        let info: PuzzleInfo =
            serde_json::from_value(head).with_context(|| format!("parsing {}", path.display()))?;
        let read = |name: &str, want: &str, count: usize| -> Result<PuzzleSet> {
            let p = dir.join(name);
            let set = read_csv(&p, false)?;
            ensure!(
                set.kind == info.kind,
                "{}: {} puzzles, {INFO_FILE} says {}",
                p.display(),
                set.kind,
                info.kind
            );
            ensure!(set.pairs.len() == count && set.digest() == want, "{}: does not match {INFO_FILE} ({} puzzles, expected {count} with digest {want}); was it edited?", p.display(), set.pairs.len());
            Ok(set)
        };
        let train = read("train.csv", &info.train_sha256, info.train)?;
        let test = read("test.csv", &info.test_sha256, info.test)?;
        Ok(PuzzleData { info, train, test })
    }

    /// The dataset `spec` generates, at `dir`: created when missing (and said so on stderr), or
    /// checked to be exactly that when present. An existing directory is never overwritten.
    pub fn ensure(dir: &Path, spec: &GenerateSpec) -> Result<Self> {
        if !dir.exists() {
            let start = std::time::Instant::now();
            write_generated(dir, spec)?;
            eprintln!(
                "generated {} ({} training and {} test puzzles, {}, seed {}) in {:.1} s",
                dir.display(),
                spec.train,
                spec.test,
                spec.kind,
                spec.seed,
                start.elapsed().as_secs_f64(),
            );
        }
        let data = Self::open(dir)?;
        ensure!(
            data.info.generated.as_ref() == Some(spec),
            "{} exists but was not generated by this config's data.generate ({INFO_FILE}: {:?}); move it away or point data.dir elsewhere",
            dir.display(), data.info.generated
        );
        Ok(data)
    }
}

/// Writes the new directory `out` of generated puzzles (streams 0 and 1 of the seed, so the test
/// sudoku never depend on the training count; held-out mazes are distinct from the training ones
/// up to symmetry, since augmentation would otherwise show them).
pub fn write_generated(out: &Path, spec: &GenerateSpec) -> Result<PuzzleInfo> {
    let (train, test) = match spec.kind {
        PuzzleKind::Sudoku(b) => (
            sudoku::generate(b, spec.train, spec.seed, 0),
            sudoku::generate(b, spec.test, spec.seed, 1),
        ),
        PuzzleKind::Maze(n) => {
            let train = maze::generate(n, spec.train, spec.seed, 0, &Default::default())?;
            let seen = train.iter().map(|p| maze::canonical(&p.0)).collect();
            let test = maze::generate(n, spec.test, spec.seed, 1, &seen)?;
            (train, test)
        }
    };
    let set = |pairs| PuzzleSet {
        kind: spec.kind,
        pairs,
    };
    PuzzleData::write(out, &set(train), &set(test), Some(spec.clone()))
}

/// TRM's tokens for pairs (§4): row-major inputs and labels [pairs × N²] and the vocabulary.
pub fn tokens(pairs: &[Pair], kind: PuzzleKind) -> (Vec<i64>, Vec<i64>, i64) {
    let enc = |g: &[u8]| g.iter().map(|&v| kind.token(v)).collect::<Vec<_>>();
    let inputs = pairs.iter().flat_map(|(q, _)| enc(q)).collect();
    let labels = pairs.iter().flat_map(|(_, a)| enc(a)).collect();
    (inputs, labels, kind.vocab_size())
}

/// A set of puzzles of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct PuzzleSet {
    pub kind: PuzzleKind,
    pub pairs: Vec<Pair>,
}

impl PuzzleSet {
    pub fn open_csv(path: &Path, check: bool) -> Result<Self> {
        read_csv(path, check)
    }

    /// Cells per puzzle, N².
    pub fn seq_len(&self) -> usize {
        self.kind.seq_len()
    }

    /// SHA-256 of the kind and every pair: what a resumed loader must find again.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(
            serde_json::to_string(&self.kind)
                .expect("a kind")
                .as_bytes(),
        );
        for (q, a) in &self.pairs {
            h.update(q);
            h.update(a);
        }
        format!("{:x}", h.finalize())
    }

    fn batch(&self, ids: Vec<u64>, pairs: &[Pair]) -> Batch {
        let (inputs, targets, _) = tokens(pairs, self.kind);
        Batch {
            inputs,
            targets,
            rows: ids.len(),
            block: self.seq_len(),
            puzzle_ids: vec![0; ids.len()],
            row_ids: ids,
            padded: None,
        }
    }
}

/// The puzzle loader. Global sample g is puzzle perm(seed, epoch = g / n)(g mod n), augmented
/// (when asked) from a ChaCha8 stream of (seed, g): a pure function of (seed, g), so its whole state
/// is the number of samples consumed and it resumes exactly on any number of ranks, as the text
/// loader does. Rank r of a step takes samples [g + r·mb, g + (r + 1)·mb). Sudoku and Maze have
/// one puzzle id (0), as in the reference.
pub struct PuzzleLoader<'a> {
    set: &'a PuzzleSet,
    seed: u64,
    augment: bool,
    cursor: crate::loader::Cursor,
}

impl<'a> PuzzleLoader<'a> {
    pub fn new(set: &'a PuzzleSet, seed: u64, augment: bool) -> Self {
        PuzzleLoader {
            set,
            seed,
            augment,
            cursor: crate::loader::Cursor::new(set.digest(), seed),
        }
    }

    /// The (puzzle, solution) of global sample `g`.
    pub fn sample(&self, g: u64) -> Pair {
        let n = self.set.pairs.len() as u64;
        let row = crate::perm::Permutation::new(n, self.seed, g / n).apply(g % n);
        let pair = &self.set.pairs[row as usize];
        if !self.augment {
            return pair.clone();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7375_646f_6b75_2d61);
        rng.set_stream(g);
        self.set.kind.augment(pair, &mut rng)
    }
}

impl crate::loader::Source for PuzzleLoader<'_> {
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        let ids: Vec<u64> = self.cursor.take(rank, world, micro_batch).collect();
        let pairs: Vec<Pair> = ids.iter().map(|&g| self.sample(g)).collect();
        self.set.batch(ids, &pairs)
    }

    fn state(&self) -> LoaderState {
        self.cursor.state()
    }

    fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        self.cursor.load_state(s)
    }
}

/// Validation rows: the first `max_rows` puzzles of `set` in order, not augmented, rank `rank` of
/// `world` taking every world-th batch of `micro_batch`.
pub fn val_batches(
    set: &PuzzleSet,
    micro_batch: usize,
    max_rows: u64,
    rank: usize,
    world: usize,
) -> Vec<Batch> {
    let n = set.pairs.len().min(max_rows as usize);
    let ids: Vec<u64> = (0..n as u64).collect();
    crate::loader::rank_chunks(&ids, micro_batch, rank, world)
        .map(|c| {
            let pairs: Vec<Pair> = c.iter().map(|&i| set.pairs[i as usize].clone()).collect();
            set.batch(c.to_vec(), &pairs)
        })
        .collect()
}

/// Any TRM dataset directory: grid puzzles (`puzzles.json`) or ARC (`arc.json`).
pub enum Dataset {
    Grid(PuzzleData),
    Arc(crate::arc::ArcData),
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self> {
        if crate::arc::ArcData::is_arc(dir) {
            crate::arc::ArcData::open(dir).map(Dataset::Arc)
        } else {
            PuzzleData::open(dir).map(Dataset::Grid)
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            Dataset::Grid(d) => d.info.kind.vocab_size(),
            Dataset::Arc(_) => crate::arc::VOCAB,
        }
    }

    pub fn seq_len(&self) -> usize {
        match self {
            Dataset::Grid(d) => d.info.kind.seq_len(),
            Dataset::Arc(d) => d.seq_len(),
        }
    }

    /// Rows the model's puzzle table needs.
    pub fn num_puzzle_identifiers(&self) -> usize {
        match self {
            Dataset::Grid(_) => 1,
            Dataset::Arc(d) => d.info.num_puzzle_identifiers,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Dataset::Grid(d) => d.info.kind.to_string(),
            Dataset::Arc(d) => format!(
                "ARC ({} training + {} evaluation tasks, {}×{} canvas)",
                d.info.training_tasks,
                d.info.evaluation_tasks,
                d.info.spec.canvas,
                d.info.spec.canvas
            ),
        }
    }

    /// The training stream. `augment` is the grid puzzles' online augmentation; ARC's copies are
    /// fixed when the dataset is built (`--num-aug`).
    pub fn loader(&self, seed: u64, augment: bool) -> Box<dyn crate::loader::Source + '_> {
        match self {
            Dataset::Grid(d) => Box::new(PuzzleLoader::new(&d.train, seed, augment)),
            Dataset::Arc(d) => Box::new(crate::arc::ArcLoader::new(d, seed)),
        }
    }

    /// Held-out rows: the first `max_rows`, rank `rank` of `world` taking every world-th batch.
    pub fn val_batches(
        &self,
        micro_batch: usize,
        max_rows: u64,
        rank: usize,
        world: usize,
    ) -> Vec<Batch> {
        match self {
            Dataset::Grid(d) => val_batches(&d.test, micro_batch, max_rows, rank, world),
            Dataset::Arc(d) => crate::arc::val_batches(d, micro_batch, max_rows, rank, world),
        }
    }
}

impl Dataset {
    /// A dataset of held-out puzzles only (`muninn eval --puzzles FILE.csv`).
    pub fn test_csv(test: PuzzleSet) -> Self {
        let kind = test.kind;
        Dataset::Grid(PuzzleData {
            info: PuzzleInfo {
                format: FORMAT.into(),
                version: VERSION,
                kind,
                train: 0,
                test: test.pairs.len(),
                generated: None,
                train_sha256: String::new(),
                test_sha256: test.digest(),
            },
            train: PuzzleSet {
                kind,
                pairs: Vec::new(),
            },
            test,
        })
    }
}
