//! The sudoku generator and the Sudoku-Extreme CSV importer (`trm-reference.md` §4, §6).

use muninn_data::loader::Source;
use muninn_data::puzzles::{read_csv, write_generated, GenerateSpec, PuzzleData, PuzzleKind};
use muninn_data::sudoku::{augment, count_solutions, generate, is_solution, solved_grid, Boxes};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SHAPES: [Boxes; 3] = [
    Boxes { rows: 2, cols: 2 },
    Boxes { rows: 2, cols: 3 },
    Boxes { rows: 3, cols: 3 },
];

#[test]
fn generated_grids_are_solved_and_augmentations_keep_them_solved() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for b in SHAPES {
        for _ in 0..20 {
            let g = solved_grid(b, &mut rng);
            assert!(is_solution(&g, b), "{b:?}: {g:?}");
            let aug = augment(&[&g], b, &mut rng);
            assert!(is_solution(&aug[0], b));
        }
    }
    // A broken grid is not a solution.
    let mut g = solved_grid(SHAPES[1], &mut rng);
    g.swap(0, 1);
    assert!(!is_solution(&g, SHAPES[1]));
}

#[test]
fn puzzles_have_one_solution_and_no_clue_to_spare() {
    for (b, count, blanks) in [(SHAPES[0], 40, (9.0, 13.0)), (SHAPES[1], 20, (22.0, 30.0))] {
        let pairs = generate(b, count, 7, 0);
        let mut total = 0usize;
        for (q, a) in &pairs {
            let (n, sol) = count_solutions(q, b, 2);
            assert_eq!(n, 1, "{b:?}: {q:?}");
            assert_eq!(sol.as_ref(), Some(a));
            // Minimal: removing any remaining clue allows a second solution.
            for cell in (0..q.len()).filter(|&c| q[c] != 0) {
                let mut fewer = q.clone();
                fewer[cell] = 0;
                assert!(
                    count_solutions(&fewer, b, 2).0 > 1,
                    "{b:?}: clue {cell} was spare"
                );
            }
            total += q.iter().filter(|&&v| v == 0).count();
        }
        // The specification's minimal puzzles: about 12/16 (4×4) and 26/36 (6×6) blanks.
        let mean = total as f64 / pairs.len() as f64;
        assert!(
            mean > blanks.0 && mean < blanks.1,
            "{b:?}: {mean} blanks on average"
        );
        // Deterministic by seed and stream.
        assert_eq!(generate(b, 3, 7, 0), pairs[..3].to_vec());
        assert_ne!(generate(b, 3, 8, 0), pairs[..3].to_vec());
    }
    // A 9×9 puzzle too (slower: one).
    let (q, _) = &generate(SHAPES[2], 1, 3, 0)[0];
    assert_eq!(count_solutions(q, SHAPES[2], 2).0, 1);
}

#[test]
fn the_csv_round_trips_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let spec = |train, test| GenerateSpec {
        kind: PuzzleKind::Sudoku(SHAPES[1]),
        train,
        test,
        seed: 4,
    };
    write_generated(&p.join("s6"), &spec(12, 5)).unwrap();
    // The directory's record: the spec, and digests that the reader checks.
    let data = PuzzleData::open(&p.join("s6")).unwrap();
    assert_eq!(data.info.generated, Some(spec(12, 5)));
    assert_eq!((data.info.train, data.info.test), (12, 5));
    let train = read_csv(&p.join("s6/train.csv"), true).unwrap();
    assert_eq!(train.kind, PuzzleKind::Sudoku(SHAPES[1]));
    assert_eq!(train.pairs, generate(SHAPES[1], 12, 4, 0));
    let test = read_csv(&p.join("s6/test.csv"), true).unwrap();
    assert_eq!(test.pairs.len(), 5);
    assert!(
        write_generated(&p.join("s6"), &spec(1, 1)).is_err(),
        "an existing dataset is never overwritten"
    );

    let good = std::fs::read_to_string(p.join("s6/train.csv")).unwrap();
    let row2: Vec<&str> = good.lines().nth(1).unwrap().split(',').collect();
    let (q, a) = (row2[0], row2[1]);
    let bad = |name: &str, body: &str, unique: bool| {
        let f = p.join(name);
        std::fs::write(&f, format!("question,answer,rating\n{}", body)).unwrap();
        format!("{:#}", read_csv(&f, unique).unwrap_err())
    };
    let e = bad("short.csv", &format!("{},{a},1\n", &q[1..]), false);
    assert!(e.contains("short.csv row 2") && e.contains("N×N"), "{e}");
    let e = bad("digit.csv", &format!("{}7,{a},1\n", &q[..35]), false);
    assert!(e.contains("row 2") && e.contains("`7`"), "{e}");
    let mut wrong = a.to_string().into_bytes();
    wrong.swap(0, 1);
    let e = bad(
        "wrong.csv",
        &format!("{q},{},1\n", String::from_utf8(wrong).unwrap()),
        false,
    );
    assert!(e.contains("not a solved"), "{e}");
    let blank = ".".repeat(36);
    let e = bad("many.csv", &format!("{blank},{a},36\n"), true);
    assert!(e.contains("more than one solution"), "{e}");
    // Sudoku-Extreme's own layout reads as is (a 9×9 row, `.` blanks).
    let (q9, a9) = &generate(SHAPES[2], 1, 5, 0)[0];
    let s = |g: &[u8]| {
        g.iter()
            .map(|&v| if v == 0 { '.' } else { (b'0' + v) as char })
            .collect::<String>()
    };
    std::fs::write(
        p.join("x.csv"),
        format!("source,question,answer,rating\nhf,{},{},30\n", s(q9), s(a9)),
    )
    .unwrap();
    let set = read_csv(&p.join("x.csv"), true).unwrap();
    assert_eq!(
        (set.kind, set.pairs.len()),
        (PuzzleKind::Sudoku(SHAPES[2]), 1)
    );
}

#[test]
fn trm_tokens_shift_values_by_one_and_supervise_every_cell() {
    let b = Boxes { rows: 2, cols: 3 };
    let pairs = generate(b, 2, 1, 0);
    let (x, y, vocab) = muninn_data::puzzles::tokens(&pairs, PuzzleKind::Sudoku(b));
    assert_eq!((x.len(), y.len(), vocab), (72, 72, 8));
    assert!(x.iter().all(|&t| (1..=7).contains(&t)) && y.iter().all(|&t| (2..=7).contains(&t)));
    for (i, (&t, &q)) in x
        .iter()
        .zip(pairs[0].0.iter().chain(&pairs[1].0))
        .enumerate()
    {
        assert_eq!(t, q as i64 + 1, "cell {i}");
    }
}

#[test]
fn the_puzzle_loader_is_a_pure_function_of_seed_and_sample() {
    use muninn_data::puzzles::{PuzzleLoader, PuzzleSet};
    let b = Boxes { rows: 2, cols: 2 };
    let set = PuzzleSet {
        kind: PuzzleKind::Sudoku(b),
        pairs: generate(b, 10, 3, 0),
    };
    // Without augmentation an epoch visits every puzzle once.
    let plain = PuzzleLoader::new(&set, 1, false);
    let mut seen: Vec<Vec<u8>> = (0..10).map(|g| plain.sample(g).0).collect();
    seen.sort();
    let mut all: Vec<Vec<u8>> = set.pairs.iter().map(|p| p.0.clone()).collect();
    all.sort();
    assert_eq!(seen, all);
    // Augmented samples stay valid puzzles of their (augmented) solution.
    let aug = PuzzleLoader::new(&set, 1, true);
    for g in 0..50 {
        let (q, a) = aug.sample(g);
        assert!(is_solution(&a, b));
        assert!(q.iter().zip(&a).all(|(&x, &y)| x == 0 || x == y));
        assert_eq!(count_solutions(&q, b, 2).0, 1);
    }
    // Two ranks take the halves of one rank's global batch; a resumed loader continues exactly.
    let mut one = PuzzleLoader::new(&set, 1, true);
    let (mut r0, mut r1) = (
        PuzzleLoader::new(&set, 1, true),
        PuzzleLoader::new(&set, 1, true),
    );
    for _ in 0..3 {
        let whole = one.next_batch(0, 1, 8);
        let (a, b2) = (r0.next_batch(0, 2, 4), r1.next_batch(1, 2, 4));
        assert_eq!([a.inputs, b2.inputs].concat(), whole.inputs);
    }
    let mut resumed = PuzzleLoader::new(&set, 1, true);
    resumed.load_state(&one.state()).unwrap();
    assert_eq!(resumed.next_batch(0, 1, 8), one.next_batch(0, 1, 8));
    assert_ne!(
        PuzzleLoader::new(&set, 2, true).sample(0),
        PuzzleLoader::new(&set, 1, true).sample(0)
    );
}
