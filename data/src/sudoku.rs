//! Sudoku for TRM (`trm-reference.md` §4, §6): an in-tree generator of r×c-box puzzles with a
//! unique solution, the reference's augmentations, and the Sudoku-Extreme CSV layout
//! (`question,answer,rating`; `.` for a blank) that both the generator writes and the importer reads.
//!
//! A grid is N×N with N = r·c (boxes of r rows × c columns), in raster order, cells 0 (blank) or
//! 1..=N.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::loader::{Batch, LoaderState};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A puzzle (0 = blank) and its solution, cells in raster order.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Box shape: `rows` × `cols` cells per box; N = rows·cols. Written `RxC` (`2x3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Boxes {
    pub rows: usize,
    pub cols: usize,
}

impl Boxes {
    pub fn n(self) -> usize {
        self.rows * self.cols
    }

    /// The box shape of an N×N grid as the CSV importer infers it: the most square r×c with r ≤ c.
    pub fn for_size(n: usize) -> Option<Boxes> {
        (1..=n)
            .rev()
            .filter(|r| n % r == 0 && r * r <= n)
            .map(|r| Boxes {
                rows: r,
                cols: n / r,
            })
            .next()
            .filter(|b| b.rows > 1 || n == 1)
    }
}

impl std::fmt::Display for Boxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl From<Boxes> for String {
    fn from(b: Boxes) -> String {
        b.to_string()
    }
}

impl TryFrom<String> for Boxes {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::str::FromStr for Boxes {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parse = || -> Option<Boxes> {
            let (r, c) = s.split_once('x')?;
            Some(Boxes {
                rows: r.parse().ok()?,
                cols: c.parse().ok()?,
            })
        };
        match parse() {
            Some(b) if b.rows >= 1 && b.cols >= 1 && b.n() <= 9 && b.n() >= 2 => Ok(b),
            _ => bail!("--box {s}: expected RxC with 2 <= R·C <= 9, e.g. 2x2, 2x3, 3x3"),
        }
    }
}

/// Whether `grid` (no blanks) is a solved sudoku for `b`.
pub fn is_solution(grid: &[u8], b: Boxes) -> bool {
    let n = b.n();
    if grid.len() != n * n || grid.iter().any(|&v| v == 0 || v as usize > n) {
        return false;
    }
    let full = (1u32 << n) - 1;
    (0..n).all(|i| {
        let (mut row, mut col, mut bx) = (0u32, 0u32, 0u32);
        for j in 0..n {
            row |= 1 << (grid[i * n + j] - 1);
            col |= 1 << (grid[j * n + i] - 1);
            let (br, bc) = ((i / b.rows) * b.rows, (i % b.rows) * b.cols);
            let (r, c) = (br + j / b.cols, bc + j % b.cols);
            bx |= 1 << (grid[r * n + c] - 1);
        }
        row == full && col == full && bx == full
    })
}

/// Solutions of `grid` (0 = blank), counted up to `limit`, by bitmask DFS on the cell with the
/// fewest candidates. Returns the count and the first solution found.
pub fn count_solutions(grid: &[u8], b: Boxes, limit: usize) -> (usize, Option<Vec<u8>>) {
    let n = b.n();
    let box_of = |cell: usize| (cell / n / b.rows) * b.rows + (cell % n) / b.cols;
    let (mut rows, mut cols, mut boxes) = (vec![0u32; n], vec![0u32; n], vec![0u32; n]);
    for (cell, &v) in grid.iter().enumerate() {
        if v > 0 {
            let bit = 1 << (v - 1);
            if rows[cell / n] & bit != 0
                || cols[cell % n] & bit != 0
                || boxes[box_of(cell)] & bit != 0
            {
                return (0, None);
            }
            rows[cell / n] |= bit;
            cols[cell % n] |= bit;
            boxes[box_of(cell)] |= bit;
        }
    }
    struct S<'a> {
        n: usize,
        box_of: &'a dyn Fn(usize) -> usize,
        rows: Vec<u32>,
        cols: Vec<u32>,
        boxes: Vec<u32>,
        g: Vec<u8>,
        count: usize,
        first: Option<Vec<u8>>,
        limit: usize,
    }
    fn dfs(s: &mut S) {
        let full = (1u32 << s.n) - 1;
        let mut best: Option<(usize, u32)> = None;
        for cell in 0..s.g.len() {
            if s.g[cell] == 0 {
                let free =
                    full & !(s.rows[cell / s.n] | s.cols[cell % s.n] | s.boxes[(s.box_of)(cell)]);
                if best.is_none_or(|(_, f)| free.count_ones() < f.count_ones()) {
                    best = Some((cell, free));
                    if free.count_ones() <= 1 {
                        break;
                    }
                }
            }
        }
        let Some((cell, mut free)) = best else {
            s.count += 1;
            if s.first.is_none() {
                s.first = Some(s.g.clone());
            }
            return;
        };
        let (r, c, bx) = (cell / s.n, cell % s.n, (s.box_of)(cell));
        while free != 0 && s.count < s.limit {
            let bit = free & free.wrapping_neg();
            free &= free - 1;
            s.rows[r] |= bit;
            s.cols[c] |= bit;
            s.boxes[bx] |= bit;
            s.g[cell] = bit.trailing_zeros() as u8 + 1;
            dfs(s);
            s.g[cell] = 0;
            s.rows[r] &= !bit;
            s.cols[c] &= !bit;
            s.boxes[bx] &= !bit;
        }
    }
    let mut s = S {
        n,
        box_of: &box_of,
        rows,
        cols,
        boxes,
        g: grid.to_vec(),
        count: 0,
        first: None,
        limit,
    };
    dfs(&mut s);
    (s.count, s.first)
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// The reference's augmentation of a grid (or a puzzle and its answer alike, with the same `rng`
/// state): a permutation of the digits, shuffled bands (groups of box rows) and rows within each,
/// shuffled stacks and columns within each, and a transpose with p = 1/2 when the boxes are square.
pub fn augment(grids: &[&[u8]], b: Boxes, rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    let n = b.n();
    let digits = shuffled(n, rng);
    let order = |groups: usize, size: usize, rng: &mut ChaCha8Rng| -> Vec<usize> {
        shuffled(groups, rng)
            .into_iter()
            .flat_map(|g| {
                shuffled(size, rng)
                    .into_iter()
                    .map(move |k| g * size + k)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let rows = order(n / b.rows, b.rows, rng);
    let cols = order(n / b.cols, b.cols, rng);
    let transpose = b.rows == b.cols && rng.next_u64() % 2 == 1;
    grids
        .iter()
        .map(|g| {
            (0..n * n)
                .map(|cell| {
                    let (i, j) = (cell / n, cell % n);
                    let (i, j) = if transpose { (j, i) } else { (i, j) };
                    match g[rows[i] * n + cols[j]] {
                        0 => 0,
                        v => digits[v as usize - 1] as u8 + 1,
                    }
                })
                .collect()
        })
        .collect()
}

/// A solved grid: the pattern ((c·(i mod r) + ⌊i/r⌋ + j) mod N) + 1, augmented.
pub fn solved_grid(b: Boxes, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = b.n();
    let base: Vec<u8> = (0..n * n)
        .map(|cell| {
            let (i, j) = (cell / n, cell % n);
            ((b.cols * (i % b.rows) + i / b.rows + j) % n) as u8 + 1
        })
        .collect();
    augment(&[&base], b, rng).remove(0)
}

/// A minimal puzzle for `solution`: clues removed in random order while exactly one solution
/// remains, so no further clue can go.
pub fn minimal_puzzle(solution: &[u8], b: Boxes, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut puzzle = solution.to_vec();
    for cell in shuffled(solution.len(), rng) {
        let v = puzzle[cell];
        puzzle[cell] = 0;
        if count_solutions(&puzzle, b, 2).0 != 1 {
            puzzle[cell] = v;
        }
    }
    puzzle
}

/// `count` (puzzle, solution) pairs from the ChaCha8 stream `stream` of `seed`.
pub fn generate(b: Boxes, count: usize, seed: u64, stream: u64) -> Vec<Pair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..count)
        .map(|_| {
            let solution = solved_grid(b, &mut rng);
            (minimal_puzzle(&solution, b, &mut rng), solution)
        })
        .collect()
}

fn cell_char(v: u8) -> char {
    match v {
        0 => '.',
        v => (b'0' + v) as char,
    }
}

/// Writes pairs in the Sudoku-Extreme layout; `rating` is the number of blanks.
pub fn write_csv(path: &Path, pairs: &[Pair]) -> Result<()> {
    let mut text = String::from("question,answer,rating\n");
    for (q, a) in pairs {
        let blanks = q.iter().filter(|&&v| v == 0).count();
        text.extend(q.iter().map(|&v| cell_char(v)));
        text.push(',');
        text.extend(a.iter().map(|&v| cell_char(v)));
        text.push_str(&format!(",{blanks}\n"));
    }
    crate::atomic::write_file(path, text.as_bytes())
}

/// Reads a CSV in the Sudoku-Extreme layout (header `question,answer,rating`, the columns in any
/// order; `.` or `0` for a blank; any N×N grid with N ≤ 9). Every row must have a square length, digits
/// in 1..=N, an answer that is a solved grid agreeing with every clue, and, with `check_unique`, no
/// other solution. Errors name the file and row. Returns the box shape and the pairs.
pub fn read_csv(path: &Path, check_unique: bool) -> Result<(Boxes, Vec<Pair>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header = lines
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .with_context(|| format!("reading {}", path.display()))?;
    let cols: Vec<&str> = header.trim().split(',').collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).with_context(|| {
            format!(
                "{}: no `{name}` column in the header `{header}`",
                path.display()
            )
        })
    };
    let (qc, ac) = (col("question")?, col("answer")?);
    let (mut boxes, mut pairs) = (None::<Boxes>, Vec::new());
    for (i, line) in lines.enumerate() {
        let row = i + 2;
        let line = line.with_context(|| format!("reading {} row {row}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} row {row}", path.display());
        let fields: Vec<&str> = line.trim().split(',').collect();
        ensure!(
            fields.len() == cols.len(),
            "{}: {} fields, the header has {}",
            at(),
            fields.len(),
            cols.len()
        );
        let (q, a) = (fields[qc], fields[ac]);
        let n = (q.len() as f64).sqrt().round() as usize;
        ensure!(
            n * n == q.len() && (2..=9).contains(&n),
            "{}: a question of {} cells is not an N×N grid with 2 <= N <= 9",
            at(),
            q.len()
        );
        ensure!(
            a.len() == q.len(),
            "{}: the answer has {} cells, the question {}",
            at(),
            a.len(),
            q.len()
        );
        let b =
            Boxes::for_size(n).with_context(|| format!("{}: no box shape for N = {n}", at()))?;
        match boxes {
            None => boxes = Some(b),
            Some(prev) => ensure!(
                prev == b,
                "{}: a {n}×{n} grid among {}×{} ones",
                at(),
                prev.n(),
                prev.n()
            ),
        }
        let digits = |s: &str, what: &str| -> Result<Vec<u8>> {
            s.chars()
                .enumerate()
                .map(|(k, ch)| match ch {
                    '.' | '0' => Ok(0),
                    d if d.is_ascii_digit() && (d as u8 - b'0') as usize <= n => Ok(d as u8 - b'0'),
                    other => bail!(
                        "{}: {what} cell {k} is `{other}`, not a digit 1..={n} or `.`",
                        at()
                    ),
                })
                .collect()
        };
        let (q, a) = (digits(q, "question")?, digits(a, "answer")?);
        ensure!(
            is_solution(&a, b),
            "{}: the answer is not a solved {n}×{n} sudoku",
            at()
        );
        ensure!(
            q.iter().zip(&a).all(|(&x, &y)| x == 0 || x == y),
            "{}: the answer contradicts a clue of the question",
            at()
        );
        if check_unique {
            ensure!(
                count_solutions(&q, b, 2).0 == 1,
                "{}: the question has more than one solution",
                at()
            );
        }
        pairs.push((q, a));
    }
    let boxes = boxes.with_context(|| format!("{} has no puzzles", path.display()))?;
    Ok((boxes, pairs))
}

/// How a generated puzzle dataset was made (`muninn data sudoku`, or `[data] generate` in a run
/// config): the same spec always writes the same puzzles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// Box shape RxC.
    pub sudoku: Boxes,
    pub train: usize,
    pub test: usize,
    #[serde(default)]
    pub seed: u64,
}

/// `puzzles.json`: what a puzzle dataset directory holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PuzzleInfo {
    pub format: String,
    pub version: u32,
    pub boxes: Boxes,
    pub train: usize,
    pub test: usize,
    /// Set when the generator wrote it.
    pub generated: Option<GenerateSpec>,
    /// [`PuzzleSet::digest`] of train and test.
    pub train_sha256: String,
    pub test_sha256: String,
}

pub const INFO_FILE: &str = "puzzles.json";

/// A puzzle dataset directory: `puzzles.json`, `train.csv`, `test.csv` (Sudoku-Extreme layout).
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
            train.boxes == test.boxes,
            "train puzzles are {}, test puzzles {}",
            train.boxes,
            test.boxes
        );
        let info = PuzzleInfo {
            format: "muninn-puzzles".into(),
            version: 1,
            boxes: train.boxes,
            train: train.pairs.len(),
            test: test.pairs.len(),
            generated,
            train_sha256: train.digest(),
            test_sha256: test.digest(),
        };
        crate::atomic::write_new_dir(out, |dir| {
            write_csv(&dir.join("train.csv"), &train.pairs)?;
            write_csv(&dir.join("test.csv"), &test.pairs)?;
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
                "reading {} (not a puzzle dataset? write one with `muninn data sudoku`)",
                path.display()
            )
        })?;
        let info: PuzzleInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            info.format == "muninn-puzzles" && info.version == 1,
            "{}: unknown format {} v{}",
            path.display(),
            info.format,
            info.version
        );
        let read = |name: &str, want: &str, count: usize| -> Result<PuzzleSet> {
            let p = dir.join(name);
            let set = PuzzleSet::open_csv(&p, false)?;
            ensure!(
                set.boxes == info.boxes,
                "{}: {} puzzles, {} says {}",
                p.display(),
                set.boxes,
                INFO_FILE,
                info.boxes
            );
            ensure!(set.pairs.len() == count && set.digest() == want, "{}: does not match {} ({} puzzles, expected {count} with digest {want}); was it edited?", p.display(), INFO_FILE, set.pairs.len());
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
                "generated {} ({} training and {} test {n}×{n} puzzles, seed {}) in {:.1} s",
                dir.display(),
                spec.train,
                spec.test,
                spec.seed,
                start.elapsed().as_secs_f64(),
                n = spec.sudoku.n()
            );
        }
        let data = Self::open(dir)?;
        ensure!(
            data.info.generated.as_ref() == Some(spec),
            "{} exists but was not generated by this config's data.generate ({}: {:?}); move it away or point data.dir elsewhere",
            dir.display(), INFO_FILE, data.info.generated
        );
        Ok(data)
    }
}

/// Writes the new directory `out` of generated puzzles (streams 0 and 1 of the seed, so the test
/// puzzles never depend on the training count).
pub fn write_generated(out: &Path, spec: &GenerateSpec) -> Result<PuzzleInfo> {
    let b = spec.sudoku;
    let set = |count, stream| PuzzleSet {
        boxes: b,
        pairs: generate(b, count, spec.seed, stream),
    };
    PuzzleData::write(
        out,
        &set(spec.train, 0),
        &set(spec.test, 1),
        Some(spec.clone()),
    )
}

/// TRM's tokens for sudoku pairs (§4): PAD = 0, a cell's value v → v + 1 (blank = 1, digits
/// 2..=N+1), so the vocabulary is N + 2; every cell is supervised. Returns row-major inputs and
/// labels [pairs × N²] and the vocabulary size.
pub fn tokens(pairs: &[Pair], b: Boxes) -> (Vec<i64>, Vec<i64>, i64) {
    let enc = |g: &[u8]| g.iter().map(|&v| v as i64 + 1).collect::<Vec<_>>();
    let inputs = pairs.iter().flat_map(|(q, _)| enc(q)).collect();
    let labels = pairs.iter().flat_map(|(_, a)| enc(a)).collect();
    (inputs, labels, b.n() as i64 + 2)
}

/// A set of puzzles read from the Sudoku-Extreme CSV layout, for TRM.
pub struct PuzzleSet {
    pub boxes: Boxes,
    pub pairs: Vec<Pair>,
}

impl PuzzleSet {
    pub fn open_csv(path: &Path, check_unique: bool) -> Result<Self> {
        let (boxes, pairs) = read_csv(path, check_unique)?;
        Ok(PuzzleSet { boxes, pairs })
    }

    /// Cells per puzzle, N².
    pub fn seq_len(&self) -> usize {
        self.boxes.n() * self.boxes.n()
    }

    /// SHA-256 of the box shape and every pair: what a resumed loader must find again.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.boxes.to_string().as_bytes());
        for (q, a) in &self.pairs {
            h.update(q);
            h.update(a);
        }
        format!("{:x}", h.finalize())
    }
}

/// The puzzle loader. Global sample g is puzzle perm(seed, epoch = g / n)(g mod n), augmented
/// (when asked) from a ChaCha8 stream of (seed, g): a pure function of (seed, g), so its whole state
/// is the number of samples consumed and it resumes exactly on any number of ranks, as the text
/// loader does. Rank r of a step takes samples [g + r·mb, g + (r + 1)·mb).
pub struct PuzzleLoader<'a> {
    set: &'a PuzzleSet,
    seed: u64,
    augment: bool,
    digest: String,
    pub consumed: u64,
}

impl<'a> PuzzleLoader<'a> {
    pub fn new(set: &'a PuzzleSet, seed: u64, augment: bool) -> Self {
        PuzzleLoader {
            set,
            seed,
            augment,
            digest: set.digest(),
            consumed: 0,
        }
    }

    /// The (puzzle, solution) of global sample `g`.
    pub fn sample(&self, g: u64) -> Pair {
        let n = self.set.pairs.len() as u64;
        let row = crate::perm::Permutation::new(n, self.seed, g / n).apply(g % n);
        let (q, a) = &self.set.pairs[row as usize];
        if !self.augment {
            return (q.clone(), a.clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7375_646f_6b75_2d61);
        rng.set_stream(g);
        let mut out = augment(&[q, a], self.set.boxes, &mut rng);
        let a = out.pop().expect("two grids");
        (out.pop().expect("two grids"), a)
    }
}

impl crate::loader::Source for PuzzleLoader<'_> {
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        let first = self.consumed + (rank * micro_batch) as u64;
        let ids: Vec<u64> = (first..first + micro_batch as u64).collect();
        let pairs: Vec<Pair> = ids.iter().map(|&g| self.sample(g)).collect();
        self.consumed += (world * micro_batch) as u64;
        let (inputs, targets, _) = tokens(&pairs, self.set.boxes);
        Batch {
            inputs,
            targets,
            rows: micro_batch,
            block: self.set.seq_len(),
            row_ids: ids,
            puzzle_ids: vec![0; micro_batch],
        }
    }

    fn state(&self) -> LoaderState {
        LoaderState {
            version: 1,
            data_digest: self.digest.clone(),
            seed: self.seed,
            global_samples_consumed: self.consumed,
        }
    }

    fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        crate::loader::check_resume(s, &self.digest, self.seed)?;
        self.consumed = s.global_samples_consumed;
        Ok(())
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
    ids.chunks(micro_batch)
        .enumerate()
        .filter(|(i, _)| i % world == rank)
        .map(|(_, c)| {
            let pairs: Vec<Pair> = c.iter().map(|&i| set.pairs[i as usize].clone()).collect();
            let (inputs, targets, _) = tokens(&pairs, set.boxes);
            Batch {
                inputs,
                targets,
                rows: c.len(),
                block: set.seq_len(),
                row_ids: c.to_vec(),
                puzzle_ids: vec![0; c.len()],
            }
        })
        .collect()
}
