//! Mazes for TRM (`trm-reference.md` §4): the Maze-Hard CSV layout (`question`, `answer`; grids of
//! `# SGo` in raster order) and a small generator for CPU runs. A cell is stored as its token,
//! the character's place in [`CHARSET`] plus one, so the vocabulary is 6 with PAD = 0.

use std::collections::VecDeque;

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha8Rng;

use crate::grid::Grid;
use crate::sudoku::Pair;

/// The reference's charset: wall, open, start, goal, path → tokens 1..=5.
pub const CHARSET: &[u8; 5] = b"# SGo";
pub const WALL: u8 = 1;
pub const OPEN: u8 = 2;
pub const START: u8 = 3;
pub const GOAL: u8 = 4;
pub const PATH: u8 = 5;

pub fn cell_char(v: u8) -> char {
    CHARSET[v as usize - 1] as char
}

fn neighbours(cell: usize, n: usize) -> impl Iterator<Item = usize> {
    let (i, j) = (cell / n, cell % n);
    [
        (i > 0).then(|| cell - n),
        (i + 1 < n).then(|| cell + n),
        (j > 0).then(|| cell - 1),
        (j + 1 < n).then(|| cell + 1),
    ]
    .into_iter()
    .flatten()
}

/// BFS distances from `from` over the cells `open` lets through (`usize::MAX`: unreachable).
fn distances(n: usize, from: usize, open: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut dist = vec![usize::MAX; n * n];
    dist[from] = 0;
    let mut queue = VecDeque::from([from]);
    while let Some(c) = queue.pop_front() {
        for d in neighbours(c, n) {
            if dist[d] == usize::MAX && open(d) {
                dist[d] = dist[c] + 1;
                queue.push_back(d);
            }
        }
    }
    dist
}

/// Reads one question/answer pair of characters; the message says what is wrong (the caller
/// adds the file and row). The answer must be the question with a path of `o` joining S to G
/// through open cells; with `check_shortest`, no shorter path may exist.
pub fn parse_pair(q: &str, a: &str, check_shortest: bool) -> Result<(usize, Pair), String> {
    let n = (q.len() as f64).sqrt().round() as usize;
    if n * n != q.len() || n < 2 {
        return Err(format!(
            "a question of {} cells is not an N×N maze",
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
    let tokens = |s: &str, what: &str| -> Result<Vec<u8>, String> {
        s.bytes()
            .enumerate()
            .map(|(k, ch)| match CHARSET.iter().position(|&c| c == ch) {
                Some(p) => Ok(p as u8 + 1),
                None => Err(format!(
                    "{what} cell {k} is `{}`, not one of `# SGo`",
                    ch as char
                )),
            })
            .collect()
    };
    let (q, a) = (tokens(q, "question")?, tokens(a, "answer")?);
    let find = |g: &[u8], v: u8| -> Vec<usize> {
        g.iter()
            .enumerate()
            .filter(|(_, &x)| x == v)
            .map(|(c, _)| c)
            .collect()
    };
    let (starts, goals) = (find(&q, START), find(&q, GOAL));
    if starts.len() != 1 || goals.len() != 1 {
        return Err(format!(
            "the question has {} S and {} G cells, expected one of each",
            starts.len(),
            goals.len()
        ));
    }
    if !find(&q, PATH).is_empty() {
        return Err("the question already marks path cells `o`".into());
    }
    for (c, (&x, &y)) in q.iter().zip(&a).enumerate() {
        if x != y && !(x == OPEN && y == PATH) {
            return Err(format!(
                "answer cell {c} is `{}` where the question has `{}` (only open cells may become `o`)",
                cell_char(y),
                cell_char(x)
            ));
        }
    }
    let (s, g) = (starts[0], goals[0]);
    let on_path = distances(n, s, |c| a[c] == PATH || c == g);
    if on_path[g] == usize::MAX {
        return Err("the answer's `o` cells do not join S to G".into());
    }
    if check_shortest {
        let best = distances(n, s, |c| q[c] != WALL)[g];
        let marked = find(&a, PATH).len() + 1;
        if marked != best {
            return Err(format!(
                "the answer's path takes {marked} moves, the shortest {best}"
            ));
        }
    }
    Ok((n, (q, a)))
}

/// The 8 dihedral copies of a maze are mazes with the same solution, transformed alike.
pub fn augment(pair: &Pair, rng: &mut ChaCha8Rng) -> Pair {
    let t = (rng.next_u64() % 8) as u8;
    let f = |g: &[u8]| Grid::square(g.to_vec()).dihedral(t).cells;
    (f(&pair.0), f(&pair.1))
}

/// A maze of odd side `n` ≥ 5: a perfect maze carved by randomised depth-first search (so the
/// path between two cells is unique), S at a random cell and G at a random cell in the farthest
/// quarter of distances from it; the answer marks the path.
pub fn maze(n: usize, rng: &mut ChaCha8Rng) -> Pair {
    assert!(n % 2 == 1 && n >= 5, "maze side {n}: odd and at least 5");
    let mut g = vec![WALL; n * n];
    let rooms: Vec<usize> = (0..n * n)
        .filter(|c| (c / n) % 2 == 1 && (c % n) % 2 == 1)
        .collect();
    let first = rooms[(rng.next_u64() % rooms.len() as u64) as usize];
    g[first] = OPEN;
    let mut stack = vec![first];
    while let Some(&c) = stack.last() {
        let (i, j) = ((c / n) as isize, (c % n) as isize);
        let fresh: Vec<usize> = [(-2, 0), (2, 0), (0, -2), (0, 2)]
            .iter()
            .map(|(di, dj)| (i + di, j + dj))
            .filter(|&(a, b)| a > 0 && b > 0 && a < n as isize - 1 && b < n as isize - 1)
            .map(|(a, b)| a as usize * n + b as usize)
            .filter(|&d| g[d] == WALL)
            .collect();
        if fresh.is_empty() {
            stack.pop();
            continue;
        }
        let d = fresh[(rng.next_u64() % fresh.len() as u64) as usize];
        g[(c + d) / 2] = OPEN;
        g[d] = OPEN;
        stack.push(d);
    }
    let s = rooms[(rng.next_u64() % rooms.len() as u64) as usize];
    let dist = distances(n, s, |c| g[c] != WALL);
    let far = *rooms.iter().map(|&r| &dist[r]).max().expect("rooms");
    let goals: Vec<usize> = rooms
        .iter()
        .copied()
        .filter(|&r| r != s && 4 * dist[r] >= 3 * far)
        .collect();
    let goal = goals[(rng.next_u64() % goals.len() as u64) as usize];
    let mut q = g;
    q[s] = START;
    q[goal] = GOAL;
    // Walk back from G along decreasing distance: in a perfect maze that is the one path.
    let mut a = q.clone();
    let mut c = goal;
    while dist[c] > 1 {
        c = neighbours(c, n)
            .find(|&d| dist[d] == dist[c] - 1)
            .expect("a BFS predecessor");
        a[c] = PATH;
    }
    (q, a)
}

/// A maze's question up to symmetry: the least of its 8 dihedral images.
pub fn canonical(question: &[u8]) -> Vec<u8> {
    let g = Grid::square(question.to_vec());
    (0..8).map(|t| g.dihedral(t).cells).min().expect("8 images")
}

/// `count` mazes from the ChaCha8 stream `stream` of `seed`, distinct up to symmetry and none
/// in `exclude` (canonical questions; the training set, when drawing held-out mazes), so that
/// augmentation never shows a held-out maze in training. Refused when the side has too few mazes.
pub fn generate(
    n: usize,
    count: usize,
    seed: u64,
    stream: u64,
    exclude: &std::collections::HashSet<Vec<u8>>,
) -> anyhow::Result<Vec<Pair>> {
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_7a65);
    rng.set_stream(stream);
    let mut seen = exclude.clone();
    let mut out = Vec::with_capacity(count);
    let tries = 20 * count + 1000;
    for _ in 0..tries {
        if out.len() == count {
            break;
        }
        let pair = maze(n, &mut rng);
        if seen.insert(canonical(&pair.0)) {
            out.push(pair);
        }
    }
    anyhow::ensure!(
        out.len() == count,
        "only {} distinct {n}×{n} mazes (up to symmetry, apart from {} excluded) in {tries} draws, {count} asked: ask for fewer or a larger side",
        out.len(),
        exclude.len()
    );
    Ok(out)
}
