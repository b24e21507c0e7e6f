//! Sudoku for TRM (`trm-reference.md` §4, §6): an in-tree generator of r×c-box puzzles with a
//! unique solution, the reference's augmentations, and the rows of the Sudoku-Extreme CSV layout
//! (`question,answer,rating`; `.` for a blank) that [`crate::puzzles`] reads and writes.
//!
//! A grid is N×N with N = r·c (boxes of r rows × c columns), in raster order, cells 0 (blank) or
//! 1..=N.

use anyhow::{bail, Result};
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

pub fn cell_char(v: u8) -> char {
    match v {
        0 => '.',
        v => (b'0' + v) as char,
    }
}

/// Reads one question/answer pair (`.` or `0` for a blank; any N×N grid with 2 ≤ N ≤ 9); the
/// message says what is wrong (the caller adds the file and row). The answer must be a solved
/// grid that agrees with every clue and, with `check_unique`, the question's only solution.
pub fn parse_pair(q: &str, a: &str, check_unique: bool) -> Result<(Boxes, Pair), String> {
    let n = (q.len() as f64).sqrt().round() as usize;
    if n * n != q.len() || !(2..=9).contains(&n) {
        return Err(format!(
            "a question of {} cells is not an N×N grid with 2 <= N <= 9",
            q.len()
        ));
    }
    if a.len() != q.len() {
        return Err(format!(
            "the answer has {} cells, the question {}",
            a.len(),
            q.len()
        ));
    }
    let b = Boxes::for_size(n).ok_or_else(|| format!("no box shape for N = {n}"))?;
    let digits = |s: &str, what: &str| -> Result<Vec<u8>, String> {
        s.chars()
            .enumerate()
            .map(|(k, ch)| match ch {
                '.' | '0' => Ok(0),
                d if d.is_ascii_digit() && (d as u8 - b'0') as usize <= n => Ok(d as u8 - b'0'),
                other => Err(format!(
                    "{what} cell {k} is `{other}`, not a digit 1..={n} or `.`"
                )),
            })
            .collect()
    };
    let (q, a) = (digits(q, "question")?, digits(a, "answer")?);
    if !is_solution(&a, b) {
        return Err(format!("the answer is not a solved {n}×{n} sudoku"));
    }
    if !q.iter().zip(&a).all(|(&x, &y)| x == 0 || x == y) {
        return Err("the answer contradicts a clue of the question".into());
    }
    if check_unique && count_solutions(&q, b, 2).0 != 1 {
        return Err("the question has more than one solution".into());
    }
    Ok((b, (q, a)))
}
