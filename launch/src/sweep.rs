//! Sweep grids: `--grid section.key=v1,v2,...` axes, their cartesian product, and a run name per
//! point.

use anyhow::{bail, ensure, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Axis {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Axis> {
        let (key, values) = s
            .split_once('=')
            .with_context(|| format!("--grid {s}: expected section.key=v1,v2,..."))?;
        let key = key.trim();
        ensure!(
            key.contains('.') && !key.starts_with('.') && !key.ends_with('.'),
            "--grid {s}: name the section too, e.g. recurrence.mean_backprop_depth=1,2,4"
        );
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        ensure!(
            values.iter().all(|v| !v.is_empty()),
            "--grid {s}: an empty value"
        );
        Ok(Axis {
            key: key.to_string(),
            values,
        })
    }
}

/// One combination of grid values.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub index: usize,
    /// (key, value) per axis, in the order the axes were given.
    pub assignments: Vec<(String, String)>,
}

impl GridPoint {
    /// `--set`-style overrides.
    pub fn overrides(&self) -> Vec<String> {
        self.assignments
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// `<base>-<key>-<value>...`, with the last part of each key: `tiny-mean_backprop_depth-4`.
    pub fn run_name(&self, base: &str) -> String {
        let mut name = base.to_string();
        for (k, v) in &self.assignments {
            let short = k.rsplit('.').next().unwrap_or(k);
            let v: String = v
                .chars()
                .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
                    true => c,
                    false => '_',
                })
                .collect();
            name.push_str(&format!("-{short}-{v}"));
        }
        name
    }
}

/// The cartesian product of the axes, the first axis varying slowest.
pub fn grid(axes: &[Axis]) -> Result<Vec<GridPoint>> {
    ensure!(!axes.is_empty(), "a sweep needs at least one --grid");
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            bail!("--grid {} is given twice", a.key);
        }
    }
    let mut points = vec![Vec::new()];
    for axis in axes {
        points = points
            .into_iter()
            .flat_map(|p: Vec<(String, String)>| {
                axis.values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push((axis.key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    Ok(points
        .into_iter()
        .enumerate()
        .map(|(index, assignments)| GridPoint { index, assignments })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_and_names() {
        let axes: Vec<Axis> = [
            "recurrence.mean_backprop_depth=1,2",
            "optimizer.lr=1e-3,3e-3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let g = grid(&axes).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(
            g[1].overrides(),
            ["recurrence.mean_backprop_depth=1", "optimizer.lr=3e-3"]
        );
        assert_eq!(g[3].run_name("t"), "t-mean_backprop_depth-2-lr-3e-3");
        assert!("k=1".parse::<Axis>().is_err());
        assert!("a.k=1,,2".parse::<Axis>().is_err());
        let twice: Vec<Axis> = vec!["a.k=1".parse().unwrap(), "a.k=2".parse().unwrap()];
        assert!(grid(&twice).is_err());
    }
}
