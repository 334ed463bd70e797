//! The dense f64 kernels FID and KID need, as plain (non-generic) functions over faer.
//!
//! faer's generic code is compiled in the crate that instantiates it, at that crate's opt-level:
//! unoptimised, a 2048-d eigendecomposition takes minutes instead of about a second. Keeping every
//! instantiation here means only this file needs optimising in dev/test builds (or it can move to
//! a tiny crate built with opt-level 3). Every function uses faer's global parallelism (rayon).

use anyhow::{anyhow, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{get_global_parallelism, Accum, Mat, MatRef, Side};

/// Lower triangle (diagonal included) of x^T x; the strict upper triangle is left zero.
pub(crate) fn gram_lower(x: MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(x.ncols(), x.ncols());
    // Only one triangle: half the flops of a full product, like BLAS syrk.
    triangular::matmul(
        c.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        1.0,
        get_global_parallelism(),
    );
    c
}

/// a^T b.
pub(crate) fn mul_tn(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(a.ncols(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a.transpose(), b, 1.0, get_global_parallelism());
    c
}

/// a b^T.
pub(crate) fn mul_nt(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(a.nrows(), b.nrows());
    matmul(c.as_mut(), Accum::Replace, a, b.transpose(), 1.0, get_global_parallelism());
    c
}

/// Eigenvalues (ascending) and eigenvectors of a symmetric matrix, read from its lower triangle.
pub(crate) fn sym_eigen(m: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let evd = m.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow!("eigensolver: {e:?}"))?;
    let values = evd.S().column_vector().iter().copied().collect();
    Ok((values, evd.U().to_owned()))
}

/// Singular values, nonincreasing.
pub(crate) fn singular_values(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    m.singular_values().map_err(|e| anyhow!("singular values did not converge: {e:?}"))
}

/// a b.
pub(crate) fn mul_nn(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0, get_global_parallelism());
    c
}

/// Eigenvalues only (ascending) of a symmetric matrix, read from its lower triangle.
pub(crate) fn sym_eigenvalues(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| anyhow!("eigensolver: {e:?}"))
}
