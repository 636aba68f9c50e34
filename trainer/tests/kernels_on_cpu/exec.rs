//! [`cuda::Exec`] on the CPU emulator: the CUDA bodies written against the trait (conv2d, conv1d) run here with
//! the very launches, grids, offsets and leading dimensions the GPU gets. Kernels run through [`Emu`] (one
//! compiled emulator per kernel file, built on first use), products through [`reference_gemm`], a plain f64
//! implementation of the row-major contract of [`cuda::Gemm`].

use std::cell::RefCell;
use std::collections::BTreeMap;

use erc_train::ops::cuda::{self, Exec, Gemm, Grid, Module};

use super::{Arg, Buf, Emu};

/// The emulated device: buffers are files in one folder.
pub struct EmuExec {
    dir: tempfile::TempDir,
    next: RefCell<usize>,
    emus: RefCell<BTreeMap<&'static str, Emu>>,
    /// Products run, for tests that assert a body's shape of work.
    pub gemms: RefCell<Vec<Gemm>>,
}

impl EmuExec {
    pub fn new() -> EmuExec {
        EmuExec {
            dir: tempfile::tempdir().unwrap(),
            next: RefCell::new(0),
            emus: RefCell::new(BTreeMap::new()),
            gemms: RefCell::new(Vec::new()),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        let mut next = self.next.borrow_mut();
        *next += 1;
        self.dir.path().join(format!("exec{next}.bin"))
    }

    /// A buffer holding `values`.
    pub fn upload(&self, values: &[f32]) -> Buf {
        let path = self.path();
        write(&path, values);
        Buf {
            path,
            len: values.len(),
            f64: false,
        }
    }

    /// The values of `b` (NaN where nothing wrote).
    pub fn read(&self, b: &Buf) -> Vec<f32> {
        if !b.path.exists() {
            return vec![f32::NAN; b.len];
        }
        read(&b.path, b.len)
    }

    /// Runs `f` on the emulator of `file` (built on first use): its launched kernels, its checks.
    pub fn with_emu<R>(&self, file: &'static str, f: impl FnOnce(&Emu) -> R) -> R {
        let mut emus = self.emus.borrow_mut();
        let emu = emus.entry(file).or_insert_with(|| Emu::new(file));
        f(emu)
    }
}

fn write(path: &std::path::Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read(path: &std::path::Path, len: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), 4 * len, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `c ← α·op(a)·op(b) + β·c` for every matrix of the batch, row-major as [`Gemm`] documents it, in f64. β = 0
/// ignores c's old values (NaN included), as cuBLAS does.
pub fn reference_gemm(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (ea, eb, ec) = g.extents();
    assert!(
        ea <= a.len() && eb <= b.len() && ec <= c.len(),
        "gemm past its buffers: {g:?}"
    );
    for i in 0..g.batch {
        let (a0, b0, c0) = (
            g.a.offset + i * g.a.stride,
            g.b.offset + i * g.b.stride,
            g.c.offset + i * g.c.stride,
        );
        for r in 0..g.m {
            for col in 0..g.n {
                let mut sum = 0f64;
                for k in 0..g.k {
                    let av = if g.trans_a {
                        a[a0 + k * g.a.ld + r]
                    } else {
                        a[a0 + r * g.a.ld + k]
                    };
                    let bv = if g.trans_b {
                        b[b0 + col * g.b.ld + k]
                    } else {
                        b[b0 + k * g.b.ld + col]
                    };
                    sum += av as f64 * bv as f64;
                }
                let at = c0 + r * g.c.ld + col;
                let old = if g.beta == 0.0 {
                    0.0
                } else {
                    g.beta as f64 * c[at] as f64
                };
                c[at] = (g.alpha as f64 * sum + old) as f32;
            }
        }
    }
}

impl Exec for EmuExec {
    type Buf = Buf;

    fn alloc(&self, n: usize) -> candle_core::Result<Buf> {
        Ok(Buf {
            path: self.path(),
            len: n,
            f64: false,
        })
    }

    fn len(&self, buf: &Buf) -> usize {
        buf.len
    }

    fn launch(
        &self,
        module: &Module,
        kernel: &'static str,
        grid: Grid,
        args: &mut [cuda::Arg<'_, Buf>],
    ) -> candle_core::Result<()> {
        assert!(
            grid.x >= 1 && grid.y >= 1 && grid.y <= cuda::MAX_GRID_Y,
            "{kernel}: grid {grid}"
        );
        let args: Vec<Arg<'_>> = args
            .iter()
            .map(|a| match a {
                cuda::Arg::In(b) => Arg::R(b),
                cuda::Arg::Out(b) => Arg::W(b),
                cuda::Arg::U32(v) => Arg::U32(*v),
                cuda::Arg::U64(v) => Arg::U64(*v),
                cuda::Arg::I32(v) => Arg::I32(*v),
                cuda::Arg::F32(v) => Arg::F32(*v),
            })
            .collect();
        self.with_emu(module.file, |emu| emu.launch(kernel, grid, &args));
        Ok(())
    }

    fn gemm(&self, g: &Gemm, a: &Buf, b: &Buf, c: &mut Buf) -> candle_core::Result<()> {
        g.check("gemm", (a.len, b.len, c.len))?;
        assert!(
            a.path.exists() && b.path.exists(),
            "gemm reads a buffer nothing wrote"
        );
        let (av, bv) = (read(&a.path, a.len), read(&b.path, b.len));
        let mut cv = self.read(c);
        reference_gemm(g, &av, &bv, &mut cv);
        write(&c.path, &cv);
        self.gemms.borrow_mut().push(*g);
        Ok(())
    }
}

#[test]
fn reference_gemm_follows_the_row_major_contract() {
    // A (2×3), B (3×2) stored as given and transposed, batch of two with strides, β accumulation
    let a = [1., 2., 3., 4., 5., 6.];
    let b = [7., 8., 9., 10., 11., 12.];
    let op = cuda::Operand::at;
    let mut c = vec![f32::NAN; 4];
    reference_gemm(
        &Gemm::new(2, 2, 3, op(0, 3), op(0, 2), op(0, 2)),
        &a,
        &b,
        &mut c,
    );
    assert_eq!(c, [58., 64., 139., 154.]);
    // the same product from Aᵀ (3×2) and Bᵀ (2×3) stored, β = 1 adds the old C
    let at = [1., 4., 2., 5., 3., 6.];
    let bt = [7., 9., 11., 8., 10., 12.];
    let g = Gemm {
        trans_a: true,
        trans_b: true,
        beta: 1.0,
        ..Gemm::new(2, 2, 3, op(0, 2), op(0, 3), op(0, 2))
    };
    reference_gemm(&g, &at, &bt, &mut c);
    assert_eq!(c, [116., 128., 278., 308.]);
    // a batch of two 1×1 products with offsets and strides
    let g = Gemm {
        batch: 2,
        ..Gemm::new(
            1,
            1,
            2,
            op(1, 2).strided(2),
            op(0, 1).strided(2),
            op(1, 1).strided(1),
        )
    };
    let mut c = vec![0.0; 3];
    reference_gemm(&g, &[0., 1., 2., 3., 4.], &[1., 1., 2., 2.], &mut c);
    assert_eq!(c, [0., 3., 14.]);
}

/// Through the emulated device: a batch of two products read from offsets inside larger buffers, written with a
/// row stride wider than the row, equals candle's matmul of the same sub-matrices; what the product does not
/// cover stays unwritten (NaN).
#[test]
fn emulated_products_read_and_write_where_the_gemm_says() {
    use candle_core::{Device, Tensor};
    let exec = EmuExec::new();
    let a: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..30).map(|i| (i as f32 * 0.11).cos()).collect();
    let (ab, bb) = (exec.upload(&a), exec.upload(&b));
    let mut c = exec.alloc(2 * 3 * 5).unwrap();
    let op = cuda::Operand::at;
    // batch i: A_i (3×4) at 2 + 16i with row stride 5, B_i (4×2) at 1 + 12i with row stride 3, C_i (3×2) at 15i
    // with row stride 5
    let g = Gemm {
        batch: 2,
        ..Gemm::new(
            3,
            2,
            4,
            op(2, 5).strided(16),
            op(1, 3).strided(12),
            op(0, 5).strided(15),
        )
    };
    exec.gemm(&g, &ab, &bb, &mut c).unwrap();
    let got = exec.read(&c);
    for i in 0..2 {
        let sub = |v: &[f32], at: usize, rows: usize, cols: usize, ld: usize| {
            let values: Vec<f32> = (0..rows)
                .flat_map(|r| v[at + r * ld..at + r * ld + cols].to_vec())
                .collect();
            Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
        };
        let expected = sub(&a, 2 + 16 * i, 3, 4, 5)
            .matmul(&sub(&b, 1 + 12 * i, 4, 2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for r in 0..3 {
            for col in 0..5 {
                let v = got[15 * i + 5 * r + col];
                if col < 2 {
                    assert!(
                        (v - expected[2 * r + col]).abs() < 1e-5,
                        "batch {i} ({r}, {col})"
                    );
                } else {
                    assert!(v.is_nan(), "batch {i} ({r}, {col}) was written");
                }
            }
        }
    }
}
