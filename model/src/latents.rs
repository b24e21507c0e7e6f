//! Measures of a latent trajectory s_0 … s_R ([`crate::Huginn::trajectory`]): how each token's state
//! converges, and its path in the first principal components.

use anyhow::Result;
use tch::{Kind, Tensor};

/// convergence[t][i] = ‖s_{i+1} − s_i‖ / ‖s_{i+1}‖ at token t, for states s_0..s_R of one sequence,
/// each [T, d].
pub fn convergence(states: &[Tensor]) -> Result<Vec<Vec<f64>>> {
    let per_iter: Vec<Vec<f64>> = states
        .windows(2)
        .map(|w| {
            let v = (&w[1] - &w[0]).norm_scalaropt_dim(2.0, [-1], false)
                / w[1].norm_scalaropt_dim(2.0, [-1], false).clamp_min(1e-30);
            Vec::<f64>::try_from(v.to_kind(Kind::Double)).map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    let tokens = states.first().map_or(0, |s| s.size()[0] as usize);
    Ok((0..tokens)
        .map(|t| per_iter.iter().map(|it| it[t]).collect())
        .collect())
}

/// The first k principal components of `x` [N, d]: (coordinates [N, k], explained variance ratios).
pub fn pca(x: &Tensor, k: i64) -> Result<(Tensor, Vec<f64>)> {
    let centred = x - x.mean_dim(0, true, x.kind());
    let (_, s, v) = centred.svd(true, true); // v [d, min(N, d)]
    let k = k.min(v.size()[1]);
    let coords = centred.matmul(&v.narrow(1, 0, k));
    let var = s.square();
    let ratio =
        (var.narrow(0, 0, k) / var.sum(Kind::Double).clamp_min(1e-30)).to_kind(Kind::Double);
    Ok((coords, Vec::<f64>::try_from(ratio)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_and_pca_on_known_points() {
        // Two tokens; token 0 moves by 1 then 0, token 1 by 0 then 1 (states of norm 1 or 2).
        let s0 = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let s1 = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0]).view([2, 2]);
        let s2 = Tensor::from_slice(&[0.0f32, 1.0, 0.0, -1.0]).view([2, 2]);
        let c = convergence(&[s0, s1, s2]).unwrap();
        assert_eq!(c.len(), 2);
        assert!(
            (c[0][0] - 2f64.sqrt()).abs() < 1e-6 && c[0][1] == 0.0,
            "{c:?}"
        );
        assert!(c[1][0] == 0.0 && (c[1][1] - 2.0).abs() < 1e-6, "{c:?}");
        // Points on a line: one component explains everything.
        let x = Tensor::from_slice(&[0.0f64, 0.0, 1.0, 2.0, 2.0, 4.0]).view([3, 2]);
        let (coords, ratio) = pca(&x, 2).unwrap();
        assert!(
            (ratio[0] - 1.0).abs() < 1e-9 && ratio[1].abs() < 1e-9,
            "{ratio:?}"
        );
        assert_eq!(coords.size(), [3, 2]);
    }
}
