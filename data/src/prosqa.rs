//! ProsQA-style graph questions (Hao et al. 2024, App. A.2; `coconut-reference.md` §4): a random
//! DAG of "is a" facts over fictional concepts, and the question whether a person is one of two
//! concepts, exactly one of which it reaches. Written in the upstream JSON layout, so generated
//! training data and the upstream splits read alike.
//!
//! Construction: nodes 0 and 1 are two people who found two families (labels 1 and 2); every new
//! node takes parents among the earlier nodes, weighted toward deep ones, and its label is the OR
//! of theirs. With probability 0.35 a node may not descend from node 1, with 0.35 not from node 0.
//! The question asks about one founder; the answer is a leaf only it reaches, the distractor a leaf
//! only the other reaches; the steps follow a shortest path.

use std::collections::VecDeque;

use anyhow::{ensure, Context, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use crate::qa::QaExample;

/// The person names of the upstream splits.
pub const PERSONS: [&str; 17] = [
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly",
    "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
];

/// The concept names of the upstream splits.
pub const CONCEPTS: [&str; 38] = [
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus",
    "grimpus", "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus",
    "numpus", "quimpus", "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus",
    "terpus", "timpus", "tumpus", "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus",
    "zhorpus", "zumpus",
];

/// One example in the upstream layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProsQa {
    pub question: String,
    pub answer: String,
    pub steps: Vec<String>,
    pub idx_to_symbol: Vec<String>,
    pub edges: Vec<[usize; 2]>,
    pub root: usize,
    pub target: usize,
    pub neg_target: usize,
}

/// How an example's question, steps and answer are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The upstream sentences: `Every wumpus is a yumpus. … Is Tom a wumpus or zumpus?`, steps
    /// `Tom is a wumpus.`, answer `Tom is a wumpus.` (about 230 tokens a row at upstream sizes).
    #[default]
    Sentences,
    /// Graph tokens (coconut-reference.md §6): one `parent child |` per fact in the question's
    /// order, then `? person option option`; steps `parent child`, answer the concept. The same
    /// graphs in about a third of the tokens, each name one token of the generated tokenizer.
    Graph,
}

impl std::str::FromStr for Encoding {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sentences" => Ok(Encoding::Sentences),
            "graph" => Ok(Encoding::Graph),
            _ => {
                anyhow::bail!("unknown prosqa encoding {s:?}: expected \"sentences\" or \"graph\"")
            }
        }
    }
}

impl Encoding {
    /// Rewrites an example written in the upstream sentences (generated or an upstream split).
    pub fn encode(self, e: &QaExample) -> Result<QaExample> {
        match self {
            Encoding::Sentences => Ok(e.clone()),
            Encoding::Graph => graph_tokens(e),
        }
    }
}

impl ProsQa {
    /// This example with its question, steps and answer written in `encoding`.
    pub fn encoded(mut self, encoding: Encoding) -> Result<ProsQa> {
        let qa = encoding.encode(&QaExample {
            question: self.question,
            steps: self.steps,
            answer: self.answer,
        })?;
        (self.question, self.steps, self.answer) = (qa.question, qa.steps, qa.answer);
        Ok(self)
    }
}

/// Rewrites a JSON list of ProsQA examples (an upstream split) in `encoding` into the new file
/// `out`, keeping every other field of each entry (`edges`, `root`, …). Returns the entry count.
pub fn encode_file(
    input: &std::path::Path,
    encoding: Encoding,
    out: &std::path::Path,
) -> Result<usize> {
    ensure!(
        !out.exists(),
        "{} exists: prosqa-encode writes a new file",
        out.display()
    );
    let mut rows = crate::qa::read_list(input)?;
    for (i, row) in rows.iter_mut().enumerate() {
        let e = encoding
            .encode(&crate::qa::example(row, input, i)?)
            .with_context(|| format!("{} entry {i}", input.display()))?;
        let fields = row
            .as_object_mut()
            .with_context(|| format!("{} entry {i}: expected an object", input.display()))?;
        fields.insert("question".into(), e.question.into());
        fields.insert("steps".into(), e.steps.into());
        fields.insert("answer".into(), e.answer.into());
    }
    crate::atomic::write_file(out, &serde_json::to_vec(&rows)?)?;
    Ok(rows.len())
}

/// `Every a is a b` or `a is a b` (trailing period optional) → (a, b).
fn fact_of(sentence: &str) -> Result<(&str, &str)> {
    let s = sentence.trim().trim_end_matches('.');
    let s = s.strip_prefix("Every ").unwrap_or(s);
    s.split_once(" is a ")
        .ok_or_else(|| anyhow::anyhow!("{sentence:?} is not a ProsQA fact (`[Every] X is a Y.`)"))
}

fn graph_tokens(e: &QaExample) -> Result<QaExample> {
    let q = &e.question;
    let split = q
        .rfind(". Is ")
        .ok_or_else(|| anyhow::anyhow!("{q:?}: no `. Is X a A or B?` at the end"))?;
    let (facts, query) = (&q[..split], &q[split + 5..]);
    let mut edges = Vec::new();
    for f in facts.split('.') {
        let (a, b) = fact_of(f)?;
        edges.push(format!("{a} {b} |"));
    }
    let query = query.trim_end_matches('?');
    let (person, options) = query
        .split_once(" a ")
        .and_then(|(p, o)| Some((p, o.split_once(" or ")?)))
        .ok_or_else(|| anyhow::anyhow!("{q:?}: the question is not `Is X a A or B?`"))?;
    let steps = e
        .steps
        .iter()
        .map(|s| fact_of(s).map(|(a, b)| format!("{a} {b}")))
        .collect::<Result<_>>()?;
    let (_, answer) = fact_of(&e.answer)?;
    Ok(QaExample {
        question: format!("{} ? {person} {} {}", edges.join(" "), options.0, options.1),
        steps,
        answer: answer.to_string(),
    })
}

/// The sizes of generated graphs; a key left out keeps the upstream value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProsQaSpec {
    /// Nodes per graph, drawn uniformly from this inclusive range (upstream: 19–26, mean 22.8).
    pub nodes: [usize; 2],
    /// Hops from the person to the answer, inclusive (upstream: 3–6).
    pub hops: [usize; 2],
    /// How many of [`CONCEPTS`] to use (at most 38).
    pub concepts: usize,
    /// How many of [`PERSONS`] to use (at most 17, at least 2).
    pub persons: usize,
}

impl Default for ProsQaSpec {
    fn default() -> Self {
        ProsQaSpec {
            nodes: [19, 26],
            hops: [3, 6],
            concepts: CONCEPTS.len(),
            persons: PERSONS.len(),
        }
    }
}

/// Mean number of parents of a new node.
const PARENTS_MEAN: f64 = 1.5;
/// Chance that a new node has no parents (a new person). The paper's Poisson(1.5) alone would give
/// 22 %; the upstream valid split has 2.5 % of non-founder nodes parentless, so a draw of 0 becomes
/// one parent otherwise (inferred from that split: the tail of 2+ parents matches Poisson(1.5)).
const NEW_PERSON: f64 = 0.025;
/// Chance of each restriction on a new node's parents.
const NOT_FROM_ONE: f64 = 0.35;
const NOT_FROM_ZERO: f64 = 0.35;

impl ProsQaSpec {
    pub fn validate(&self) -> Result<()> {
        let [lo, hi] = self.nodes;
        ensure!(
            lo >= 4 && lo <= hi,
            "prosqa nodes = [{lo}, {hi}]: need 4 <= min <= max"
        );
        let [h0, h1] = self.hops;
        ensure!(
            h0 >= 1 && h0 <= h1 && h1 < hi,
            "prosqa hops = [{h0}, {h1}]: need 1 <= min <= max < the largest graph ({hi} nodes)"
        );
        ensure!(
            (2..=PERSONS.len()).contains(&self.persons),
            "prosqa persons = {}: must be 2..={}",
            self.persons,
            PERSONS.len()
        );
        ensure!(
            self.concepts >= hi.min(CONCEPTS.len()).min(4) && self.concepts <= CONCEPTS.len(),
            "prosqa concepts = {}: must be at most {} and leave room for the graph",
            self.concepts,
            CONCEPTS.len()
        );
        Ok(())
    }
}

/// `count` examples from `seed`; example i depends only on (seed, i).
pub fn generate(spec: &ProsQaSpec, seed: u64, count: usize) -> Result<Vec<ProsQa>> {
    spec.validate()?;
    (0..count)
        .map(|i| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // Most graphs qualify; a bounded number of retries keeps bad specs from spinning.
            for _ in 0..10_000 {
                if let Some(e) = one(spec, &mut rng) {
                    return Ok(e);
                }
            }
            anyhow::bail!(
                "no graph of {:?} nodes has an answer {:?} hops away within 10000 tries",
                spec.nodes,
                spec.hops
            )
        })
        .collect()
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, below(rng, i + 1));
    }
}

/// One graph and question, or None if this graph has no qualifying answer.
fn one(spec: &ProsQaSpec, rng: &mut ChaCha8Rng) -> Option<ProsQa> {
    let n = spec.nodes[0] + below(rng, spec.nodes[1] - spec.nodes[0] + 1);
    let mut label = vec![1u8, 2u8];
    let mut depth = vec![0usize, 0];
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(), Vec::new()];
    let poisson = Poisson::new(PARENTS_MEAN).expect("a positive mean");
    for v in 2..n {
        let r = uniform(rng);
        let allowed = |l: u8| {
            if r < NOT_FROM_ONE {
                l & 2 == 0
            } else if r < NOT_FROM_ONE + NOT_FROM_ZERO {
                l & 1 == 0
            } else {
                true
            }
        };
        let mut cand: Vec<usize> = (0..v).filter(|&u| allowed(label[u])).collect();
        let want = match poisson.sample(rng) as usize {
            0 if uniform(rng) < NEW_PERSON / (-PARENTS_MEAN).exp() => 0,
            0 => 1,
            k => k,
        };
        let mut ps = Vec::new();
        while ps.len() < want && !cand.is_empty() {
            let w: Vec<f64> = cand.iter().map(|&u| depth[u] as f64 * 1.5 + 1.0).collect();
            let mut x = uniform(rng) * w.iter().sum::<f64>();
            let mut pick = cand.len() - 1;
            for (i, wi) in w.iter().enumerate() {
                if x < *wi {
                    pick = i;
                    break;
                }
                x -= wi;
            }
            ps.push(cand.swap_remove(pick));
        }
        ps.sort_unstable();
        label.push(ps.iter().fold(0, |l, &p| l | label[p]));
        depth.push(ps.iter().map(|&p| depth[p] + 1).max().unwrap_or(0));
        parents.push(ps);
    }
    let mut children = vec![Vec::new(); n];
    for (v, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(v);
        }
    }
    let root = below(rng, 2);
    let (mine, theirs) = (label[root], label[1 - root]);
    let dist = bfs(&children, root);
    let leaf = |v: usize| children[v].is_empty() && v > 1;
    let targets: Vec<usize> = (0..n)
        .filter(|&v| leaf(v) && label[v] == mine)
        .filter(|&v| dist[v].is_some_and(|d| (spec.hops[0]..=spec.hops[1]).contains(&d)))
        .collect();
    let negs: Vec<usize> = (0..n).filter(|&v| leaf(v) && label[v] == theirs).collect();
    if targets.is_empty() || negs.is_empty() {
        return None;
    }
    let target = targets[below(rng, targets.len())];
    let neg_target = negs[below(rng, negs.len())];

    // Names: people for parentless nodes, concepts for the rest, each used once.
    let mut persons: Vec<&str> = PERSONS[..spec.persons].to_vec();
    let mut concepts: Vec<&str> = CONCEPTS[..spec.concepts].to_vec();
    shuffle(&mut persons, rng);
    shuffle(&mut concepts, rng);
    let (mut pi, mut ci) = (0, 0);
    let mut names = Vec::with_capacity(n);
    for ps in &parents {
        let pool = if ps.is_empty() { &persons } else { &concepts };
        let i = if ps.is_empty() { &mut pi } else { &mut ci };
        names.push((*pool.get(*i)?).to_string());
        *i += 1;
    }
    let fact = |a: usize, b: usize| match parents[a].is_empty() {
        true => format!("{} is a {}.", names[a], names[b]),
        false => format!("Every {} is a {}.", names[a], names[b]),
    };
    let edges: Vec<[usize; 2]> = (0..n)
        .flat_map(|v| parents[v].iter().map(move |&p| [p, v]))
        .collect();
    let mut facts: Vec<String> = edges.iter().map(|&[a, b]| fact(a, b)).collect();
    shuffle(&mut facts, rng);
    let mut options = [target, neg_target];
    shuffle(&mut options, rng);
    let question = format!(
        "{} Is {} a {} or {}?",
        facts.join(" "),
        names[root],
        names[options[0]],
        names[options[1]]
    );
    let path = shortest_path(&children, root, target)?;
    let steps = path.windows(2).map(|w| fact(w[0], w[1])).collect();
    Some(ProsQa {
        question,
        answer: format!("{} is a {}.", names[root], names[target]),
        steps,
        idx_to_symbol: names,
        edges,
        root,
        target,
        neg_target,
    })
}

fn bfs(children: &[Vec<usize>], from: usize) -> Vec<Option<usize>> {
    let mut dist = vec![None; children.len()];
    dist[from] = Some(0);
    let mut queue = VecDeque::from([from]);
    while let Some(u) = queue.pop_front() {
        for &v in &children[u] {
            if dist[v].is_none() {
                dist[v] = dist[u].map(|d| d + 1);
                queue.push_back(v);
            }
        }
    }
    dist
}

fn shortest_path(children: &[Vec<usize>], from: usize, to: usize) -> Option<Vec<usize>> {
    let mut prev = vec![None; children.len()];
    let mut queue = VecDeque::from([from]);
    let mut seen = vec![false; children.len()];
    seen[from] = true;
    while let Some(u) = queue.pop_front() {
        if u == to {
            let mut path = vec![to];
            while let Some(p) = prev[*path.last()?] {
                path.push(p);
            }
            path.reverse();
            return Some(path);
        }
        for &v in &children[u] {
            if !seen[v] {
                seen[v] = true;
                prev[v] = Some(u);
                queue.push_back(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(e: &ProsQa, from: usize) -> Vec<bool> {
        let n = e.idx_to_symbol.len();
        let mut children = vec![Vec::new(); n];
        for &[a, b] in &e.edges {
            children[a].push(b);
        }
        bfs(&children, from).iter().map(Option::is_some).collect()
    }

    #[test]
    fn generated_graphs_have_the_upstream_shape() {
        let spec = ProsQaSpec::default();
        let set = generate(&spec, 7, 200).unwrap();
        for e in &set {
            let n = e.idx_to_symbol.len();
            assert!((19..=26).contains(&n), "{n} nodes");
            assert!(e.edges.iter().all(|&[a, b]| a < b && b < n));
            let (mine, theirs) = (reach(e, e.root), reach(e, 1 - e.root));
            assert!(mine[e.target] && !theirs[e.target], "{e:?}");
            assert!(theirs[e.neg_target] && !mine[e.neg_target], "{e:?}");
            assert!((3..=6).contains(&e.steps.len()), "{:?}", e.steps);
            let root = &e.idx_to_symbol[e.root];
            assert!(e.steps[0].starts_with(&format!("{root} is a ")));
            assert_eq!(
                e.answer,
                format!("{root} is a {}.", e.idx_to_symbol[e.target])
            );
            assert!(e.question.ends_with('?'));
            for s in &e.steps {
                assert!(
                    e.question.contains(s.as_str()),
                    "step {s} is one of the facts"
                );
            }
            let names: std::collections::HashSet<_> = e.idx_to_symbol.iter().collect();
            assert_eq!(names.len(), n, "each name once");
        }
        let mean_nodes =
            set.iter().map(|e| e.idx_to_symbol.len()).sum::<usize>() as f64 / set.len() as f64;
        let mean_steps = set.iter().map(|e| e.steps.len()).sum::<usize>() as f64 / set.len() as f64;
        assert!((21.0..24.5).contains(&mean_nodes), "{mean_nodes}");
        assert!((3.2..4.8).contains(&mean_steps), "{mean_steps}");
    }

    #[test]
    fn graph_tokens_keep_the_facts_order_steps_and_answer() {
        let e = QaExample {
            question: "Every shumpus is a rempus. Tom is a terpus. Every terpus is a lempus. Is Tom a lempus or rempus?".into(),
            steps: vec!["Tom is a terpus.".into(), "Every terpus is a lempus.".into()],
            answer: "Tom is a lempus.".into(),
        };
        let g = Encoding::Graph.encode(&e).unwrap();
        assert_eq!(
            g.question,
            "shumpus rempus | Tom terpus | terpus lempus | ? Tom lempus rempus"
        );
        assert_eq!(g.steps, ["Tom terpus", "terpus lempus"]);
        assert_eq!(g.answer, "lempus");
        assert_eq!(Encoding::Sentences.encode(&e).unwrap(), e);
        let bad = QaExample {
            question: "Tom likes a terpus. Is Tom a lempus or rempus?".into(),
            ..e
        };
        let err = Encoding::Graph.encode(&bad).unwrap_err().to_string();
        assert!(err.contains("Tom likes a terpus"), "{err}");
        assert!("graphs".parse::<Encoding>().is_err());
    }

    #[test]
    fn an_encoded_file_keeps_other_fields_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (input, out) = (dir.path().join("valid.json"), dir.path().join("graph.json"));
        let row = serde_json::json!({
            "question": "Tom is a terpus. Every terpus is a lempus. Is Tom a lempus or rempus?",
            "steps": ["Tom is a terpus.", "Every terpus is a lempus."],
            "answer": "Tom is a lempus.",
            "edges": [[0, 1], [1, 2]],
        });
        std::fs::write(&input, serde_json::to_vec(&[&row]).unwrap()).unwrap();
        assert_eq!(encode_file(&input, Encoding::Graph, &out).unwrap(), 1);
        let back = crate::qa::read_list(&out).unwrap();
        assert_eq!(
            back[0]["question"],
            "Tom terpus | terpus lempus | ? Tom lempus rempus"
        );
        assert_eq!(back[0]["answer"], "lempus");
        assert_eq!(back[0]["edges"], row["edges"]);
        let err = encode_file(&input, Encoding::Graph, &out).unwrap_err();
        assert!(format!("{err:#}").contains("exists"), "{err:#}");

        std::fs::write(&input, br#"[{"question": "Tom is a terpus."}]"#).unwrap();
        let err = encode_file(&input, Encoding::Graph, &dir.path().join("x.json")).unwrap_err();
        assert!(
            format!("{err:#}").contains("valid.json entry 0: expected question"),
            "{err:#}"
        );
    }

    #[test]
    fn generation_is_a_function_of_seed_and_index() {
        let spec = ProsQaSpec {
            nodes: [10, 14],
            hops: [2, 4],
            concepts: 20,
            persons: 6,
        };
        let a = generate(&spec, 3, 20).unwrap();
        assert_eq!(a, generate(&spec, 3, 20).unwrap());
        assert_eq!(a[..5], generate(&spec, 3, 5).unwrap()[..]);
        assert_ne!(a, generate(&spec, 4, 20).unwrap());
        assert!(a.iter().all(|e| e.idx_to_symbol.iter().all(|s| {
            PERSONS[..6].contains(&s.as_str()) || CONCEPTS[..20].contains(&s.as_str())
        })));
        let bad = ProsQaSpec {
            hops: [5, 30],
            ..spec
        };
        assert!(generate(&bad, 0, 1).is_err());
    }
}
