//! Rectangular grids in raster order and the 8 dihedral symmetries, numbered as the reference's
//! `dataset/common.py` numbers them (so augmentation ids mean the same thing on both sides).

/// A grid of cells in raster order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    pub cells: Vec<u8>,
}

/// `DIHEDRAL_INVERSE[t]` undoes transform `t`.
pub const DIHEDRAL_INVERSE: [u8; 8] = [0, 3, 2, 1, 4, 5, 6, 7];

impl Grid {
    pub fn new(rows: usize, cols: usize, cells: Vec<u8>) -> Self {
        assert_eq!(rows * cols, cells.len(), "a {rows}×{cols} grid");
        Grid { rows, cols, cells }
    }

    /// A square grid of side √len.
    pub fn square(cells: Vec<u8>) -> Self {
        let n = (cells.len() as f64).sqrt().round() as usize;
        Grid::new(n, n, cells)
    }

    pub fn at(&self, i: usize, j: usize) -> u8 {
        self.cells[i * self.cols + j]
    }

    /// Symmetry `t` of the dihedral group, as numpy computes it in the reference: 0 identity,
    /// 1–3 `rot90` by k = t (counter-clockwise), 4 `fliplr`, 5 `flipud`, 6 transpose, 7
    /// `fliplr(rot90)` (the anti-diagonal reflection).
    pub fn dihedral(&self, t: u8) -> Grid {
        let (h, w) = (self.rows, self.cols);
        let swapped = matches!(t, 1 | 3 | 6 | 7);
        let (rows, cols) = if swapped { (w, h) } else { (h, w) };
        let cells = (0..rows * cols)
            .map(|k| {
                let (i, j) = (k / cols, k % cols);
                let (si, sj) = match t {
                    0 => (i, j),
                    1 => (j, w - 1 - i),
                    2 => (h - 1 - i, w - 1 - j),
                    3 => (h - 1 - j, i),
                    4 => (i, w - 1 - j),
                    5 => (h - 1 - i, j),
                    6 => (j, i),
                    7 => (h - 1 - j, w - 1 - i),
                    _ => panic!("dihedral transform {t} of 0..8"),
                };
                self.at(si, sj)
            })
            .collect();
        Grid { rows, cols, cells }
    }

    pub fn map(&self, f: impl Fn(u8) -> u8) -> Grid {
        Grid {
            rows: self.rows,
            cols: self.cols,
            cells: self.cells.iter().map(|&v| f(v)).collect(),
        }
    }
}
