//! The CUDA kernels' logic, tested on the CPU: every `trainer/kernels/*.cu` is compiled with g++ against a small
//! emulation of the CUDA execution model (`kernels/emulate/cuda_on_cpu.h`: one std::thread per thread of a block,
//! `__syncthreads()` a barrier, blocks one after another; `driver.h` launches a kernel by name with its buffers in
//! files), and each op's kernels are launched in the sequence, with the grids and scratch sizes, that the op's
//! `cuda_fwd` uses (the launch shapes are `erc_train::ops::cuda`'s functions). Their outputs are compared with
//! the CPU kernels' (the ops' `cpu_fwd` and `bwd`, through candle on the CPU): forward values, the gradients of
//! x and of the parameters, BatchNorm's running statistics, to [`TOL`] norm-wise (`max|a − r| / max|r|`).
//!
//! The emulator runs under AddressSanitizer and UndefinedBehaviorSanitizer (an out-of-bounds index in a kernel
//! fails the launch), every output buffer starts as NaN (an element a kernel forgets to write fails the
//! comparison), and a kernel file's test fails unless it launched every `extern "C" __global__` kernel the file
//! has. What only a GPU can show — PTX code generation, the real scheduler, warp-level timing — is left to the
//! device check (`erc_train::ops::check::compare_with_cpu`).
//!
//! Needs g++ (C++17, with libasan/libubsan: Debian's build-essential has both). `ERC_EMULATE_SANITIZER=thread`
//! builds the emulator with ThreadSanitizer instead (slower): it reports any race on shared memory that a missing
//! `__syncthreads()` would leave in a kernel.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use erc_train::ops::{self, cuda};

mod adamw;
mod conv1d;
mod conv2d;
mod exec;
mod pool;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Norm-wise relative tolerance of a kernel against the CPU kernel.
const TOL: f64 = 1e-5;

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

// ---------------------------------------------------------------------------------------------------------------
// The emulated device

/// A device buffer: a file of f32 or f64 values in the test's folder.
pub struct Buf {
    path: PathBuf,
    len: usize,
    f64: bool,
}

/// A kernel argument: a buffer read (`in:`) or written (`out:`, or `inout:` once it exists), or a number.
#[derive(Clone)]
enum Arg<'a> {
    R(&'a Buf),
    W(&'a Buf),
    /// A table of buffer addresses (`const unsigned long long*`): each buffer read and written back.
    T(Vec<&'a Buf>),
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
    F64(f64),
}

/// One kernel file, compiled with the emulator.
struct Emu {
    file: &'static str,
    bin: PathBuf,
    kernels: BTreeSet<String>,
    launched: RefCell<BTreeSet<String>>,
    dir: tempfile::TempDir,
    next: RefCell<usize>,
}

/// The `extern "C" __global__` kernels of a `.cu` source.
fn kernel_names(source: &str) -> BTreeSet<String> {
    let marker = "extern \"C\" __global__ void";
    source
        .match_indices(marker)
        .map(|(at, _)| {
            let rest = source[at + marker.len()..].trim_start();
            rest[..rest.find('(').expect("a kernel's parameter list")]
                .trim()
                .to_string()
        })
        .collect()
}

impl Emu {
    /// Compiles `kernels/<file>` with the emulator and a generated `main` naming its kernels.
    fn new(file: &'static str) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let source_path = kernels_dir().join(file);
        let source = std::fs::read_to_string(&source_path).unwrap();
        let kernels = kernel_names(&source);
        assert!(!kernels.is_empty(), "{file}: no kernels");
        let table: Vec<String> = kernels.iter().map(|k| format!("ERC_KERNEL({k})")).collect();
        let main = format!(
            "#include \"{}\"\n#include \"driver.h\"\nint main(int argc, char** argv) {{\n    return cuda_on_cpu::run(argc, argv, {{{}}});\n}}\n",
            source_path.display(),
            table.join(", ")
        );
        let main_path = dir.path().join("main.cpp");
        std::fs::write(&main_path, main).unwrap();
        let bin = dir.path().join("emulated");
        let emulate = kernels_dir().join("emulate");
        let out = Command::new(std::env::var("CXX").unwrap_or_else(|_| "g++".into()))
            .args([
                "-std=c++17",
                "-O2",
                "-g",
                "-pthread",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .arg(format!(
                "-fsanitize={}",
                std::env::var("ERC_EMULATE_SANITIZER")
                    .unwrap_or_else(|_| "address,undefined".into())
            ))
            .arg("-fno-sanitize-recover=all")
            .arg("-include")
            .arg(emulate.join("cuda_on_cpu.h"))
            .arg("-I")
            .arg(kernels_dir())
            .arg("-I")
            .arg(&emulate)
            .arg(&main_path)
            .arg("-o")
            .arg(&bin)
            .output()
            .expect("running g++ (the emulation test needs a C++17 compiler)");
        assert!(
            out.status.success(),
            "compiling {file} for the emulator:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Emu {
            file,
            bin,
            kernels,
            launched: RefCell::new(BTreeSet::new()),
            dir,
            next: RefCell::new(0),
        }
    }

    fn path(&self) -> PathBuf {
        let mut next = self.next.borrow_mut();
        *next += 1;
        self.dir.path().join(format!("buf{next}.bin"))
    }

    fn upload(&self, values: &[f32]) -> Buf {
        let path = self.path();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        Buf {
            path,
            len: values.len(),
            f64: false,
        }
    }

    fn upload_tensor(&self, t: &Tensor) -> Buf {
        self.upload(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    }

    /// An uninitialised buffer (`alloc`): it exists once a kernel has written it.
    fn alloc_f32(&self, len: usize) -> Buf {
        Buf {
            path: self.path(),
            len,
            f64: false,
        }
    }

    /// A buffer of u64 values (tables of a multi-tensor launch).
    fn upload_u64(&self, values: &[u64]) -> Buf {
        let path = self.path();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        Buf {
            path,
            len: values.len(),
            f64: true,
        }
    }

    fn read_f64(&self, b: &Buf) -> Vec<f64> {
        assert!(b.f64);
        let bytes = std::fs::read(&b.path).unwrap();
        assert_eq!(bytes.len(), 8 * b.len);
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn alloc_f64(&self, len: usize) -> Buf {
        Buf {
            path: self.path(),
            len,
            f64: true,
        }
    }

    fn launch(&self, kernel: &str, grid: impl Into<cuda::Grid>, args: &[Arg<'_>]) {
        let grid = grid.into();
        assert!(
            self.kernels.contains(kernel),
            "{}: no kernel {kernel}",
            self.file
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| match a {
                Arg::R(b) => {
                    assert!(b.path.exists(), "{kernel} reads a buffer nothing wrote");
                    format!("in:{}", b.path.display())
                }
                Arg::W(b) if b.path.exists() => format!("inout:{}", b.path.display()),
                Arg::W(b) => format!("out:{}:{}", b.len, b.path.display()),
                Arg::T(bufs) => {
                    let paths: Vec<String> = bufs
                        .iter()
                        .map(|b| {
                            assert!(b.path.exists(), "{kernel}: a table entry nothing wrote");
                            b.path.display().to_string()
                        })
                        .collect();
                    format!("table:{}", paths.join(","))
                }
                Arg::U32(v) => v.to_string(),
                Arg::U64(v) => v.to_string(),
                Arg::I32(v) => v.to_string(),
                Arg::F32(v) => v.to_string(),
                Arg::F64(v) => v.to_string(),
            })
            .collect();
        let out = Command::new(&self.bin)
            .arg(kernel)
            .arg(grid.to_string())
            .arg(cuda::BLOCK.to_string())
            .args(&text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {kernel} <<<{grid}, {}>>> failed:\n{}",
            self.file,
            cuda::BLOCK,
            String::from_utf8_lossy(&out.stderr)
        );
        self.launched.borrow_mut().insert(kernel.to_string());
    }

    fn read_f32(&self, b: &Buf) -> Vec<f32> {
        assert!(!b.f64);
        let bytes = std::fs::read(&b.path).unwrap();
        assert_eq!(bytes.len(), 4 * b.len);
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// `b[range]` as a CPU tensor of `shape`.
    fn tensor(&self, b: &Buf, range: std::ops::Range<usize>, shape: &[usize]) -> Tensor {
        let values = self.read_f32(b)[range].to_vec();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Every kernel of the file was launched by the test.
    fn assert_all_launched(&self) {
        let launched = self.launched.borrow();
        let missing: Vec<&String> = self.kernels.difference(&launched).collect();
        assert!(
            missing.is_empty(),
            "{}: kernels never launched: {missing:?}",
            self.file
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Comparison

/// Norm-wise relative error `max|a − r| / max|r|` (NaN: infinite).
fn rel_error(a: &Tensor, r: &Tensor) -> f64 {
    assert_eq!(a.dims(), r.dims(), "shapes differ");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (a, r) in a.iter().zip(&r) {
        let d = (*a as f64 - *r as f64).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        diff = diff.max(d);
        scale = scale.max((*r as f64).abs());
    }
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// The errors of one kernel file's test, printed at its end (`--nocapture`) and held to [`TOL`].
struct Errors {
    file: &'static str,
    rows: Vec<(String, f64)>,
}

impl Errors {
    fn new(file: &'static str) -> Errors {
        Errors {
            file,
            rows: Vec::new(),
        }
    }

    fn check(&mut self, what: impl Into<String>, ours: &Tensor, reference: &Tensor) {
        self.rows.push((what.into(), rel_error(ours, reference)));
    }

    /// The four results of an affine normalisation — y, ∂x, ∂γ, ∂β — against the CPU kernel's `y_ref` and
    /// `g_ref` (the gradients of x, γ, β).
    fn check_affine(&mut self, case: &str, ours: [Tensor; 4], y_ref: &Tensor, g_ref: &[Tensor]) {
        let [y, dx, dgamma, dbeta] = ours;
        self.check(format!("{case}: y"), &y, y_ref);
        for (name, got, reference) in [
            ("∂x", dx, &g_ref[0]),
            ("∂γ", dgamma, &g_ref[1]),
            ("∂β", dbeta, &g_ref[2]),
        ] {
            self.check(format!("{case}: {name}"), &got, reference);
        }
    }

    fn finish(self, emu: &Emu) {
        emu.assert_all_launched();
        let worst = self.rows.iter().map(|r| r.1).fold(0f64, f64::max);
        println!("{}: max rel. error {worst:.2e}", self.file);
        for (what, err) in &self.rows {
            println!("  {what:<58} {err:.2e}");
        }
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.1.is_nan() || r.1 > TOL)
            .map(|r| format!("{} {:.2e}", r.0, r.1))
            .collect();
        assert!(
            failed.is_empty(),
            "{}: beyond {TOL:e}: {failed:?}",
            self.file
        );
    }
}

fn seeded(shape: &[usize], scale: f32, offset: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.gen_range(-scale..scale) + offset)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// `f` of variables holding `inputs`, then the gradients of Σ f(…)·upstream: (output, gradients).
fn cpu_forward_backward(
    inputs: &[&Tensor],
    upstream: &Tensor,
    f: impl Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors);
    let grads = (&y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = tensors
        .iter()
        .map(|t| grads.get(t).expect("a gradient").clone())
        .collect();
    (y, grads)
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel files

#[test]
fn block_constants_agree_with_the_kernels() {
    let common = std::fs::read_to_string(kernels_dir().join("common.cuh")).unwrap();
    assert!(common.contains(&format!("#define ERC_BLOCK {}\n", cuda::BLOCK)));
    assert!(common.contains(&format!("#define ERC_COLS {}\n", cuda::COLS)));
    // every .cu file is a module of `ops::cuda` (and each has a test in this file or its modules)
    let mut files: Vec<String> = std::fs::read_dir(kernels_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".cu"))
        .collect();
    files.sort();
    let mut modules: Vec<String> = cuda::MODULES.iter().map(|m| m.file.to_string()).collect();
    modules.sort();
    assert_eq!(files, modules);
}

#[test]
fn softmax_dropout_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("softmax_dropout.cu");
    let mut errors = Errors::new(emu.file);
    // widths above, below and not a multiple of the block; the mask drawn inside the kernels from its counter,
    // the reference the CPU softmax times the counter's host factors
    for (shape, p) in [
        (vec![2, 3, 5, 300], 0.1),
        (vec![4, 9, 7], 0.5),
        (vec![3, 600], 0.0),
    ] {
        let x = seeded(&shape, 4.0, 0.0, 1);
        let upstream = seeded(&shape, 1.0, 0.0, 2);
        let counter = ops::dropout::Counter { key: 3, p };
        let mask =
            Tensor::from_vec(counter.factors(x.elem_count()), x.shape(), &Device::Cpu).unwrap();
        let (y_ref, g_ref) = cpu_forward_backward(&[&x], &upstream, |t| {
            let probs = ops::softmax(&t[0]).unwrap();
            if p > 0.0 {
                (&probs * &mask).unwrap()
            } else {
                probs
            }
        });
        let width = *shape.last().unwrap();
        let rows = x.elem_count() / width;
        let (xb, gb) = (emu.upload_tensor(&x), emu.upload_tensor(&upstream));
        let (y, dx) = (emu.alloc_f32(x.elem_count()), emu.alloc_f32(x.elem_count()));
        let w = || Arg::U32(u32_of(width));
        if p > 0.0 {
            let drop = || {
                [
                    Arg::U64(counter.key),
                    Arg::U32(counter.threshold()),
                    Arg::F32(counter.scale()),
                ]
            };
            emu.launch(
                "softmax_dropout_fwd",
                u32_of(rows),
                &[[Arg::R(&xb), Arg::W(&y), w()].as_slice(), &drop()].concat(),
            );
            emu.launch(
                "softmax_dropout_bwd",
                u32_of(rows),
                &[
                    [Arg::R(&xb), Arg::R(&gb), Arg::W(&dx), w()].as_slice(),
                    &drop(),
                ]
                .concat(),
            );
        } else {
            emu.launch("softmax_fwd", u32_of(rows), &[Arg::R(&xb), Arg::W(&y), w()]);
            emu.launch(
                "softmax_bwd",
                u32_of(rows),
                &[Arg::R(&xb), Arg::R(&gb), Arg::W(&dx), w()],
            );
        }
        let n = x.elem_count();
        let case = format!("{shape:?} p {p}");
        errors.check(format!("{case}: y"), &emu.tensor(&y, 0..n, &shape), &y_ref);
        errors.check(
            format!("{case}: ∂x"),
            &emu.tensor(&dx, 0..n, &shape),
            &g_ref[0],
        );
    }
    errors.finish(&emu);
}

/// The counter-based dropout: the kernel's factors are the host generator's (`Counter::factors`), bit for bit,
/// for sizes that are and are not multiples of a Philox block, and applying them to ∂L/∂y is the backward.
#[test]
fn dropout_kernels_draw_the_host_generators_masks() {
    let emu = Emu::new("dropout.cu");
    let mut errors = Errors::new(emu.file);
    for (n, p, key) in [
        (1027usize, 0.3, 11u64),
        (8, 0.5, u64::MAX),
        (5000, 0.0, 7),
        (33, 1.0, 3),
    ] {
        let counter = ops::dropout::Counter { key, p };
        let factors = counter.factors(n);
        let x = seeded(&[n], 2.0, 0.0, 5);
        let xb = emu.upload_tensor(&x);
        let (mask, y) = (emu.alloc_f32(n), emu.alloc_f32(n));
        let groups = n.div_ceil(4);
        let drop = [
            Arg::U64(key),
            Arg::U32(counter.threshold()),
            Arg::F32(counter.scale()),
        ];
        emu.launch(
            "dropout_mask",
            cuda::elementwise(groups),
            &[[Arg::W(&mask), Arg::U64(n as u64)].as_slice(), &drop].concat(),
        );
        emu.launch(
            "dropout_apply",
            cuda::elementwise(groups),
            &[
                [Arg::R(&xb), Arg::W(&y), Arg::U64(n as u64)].as_slice(),
                &drop,
            ]
            .concat(),
        );
        assert_eq!(
            emu.read_f32(&mask),
            factors,
            "n {n} p {p}: the kernel's mask"
        );
        let expected: Vec<f32> = x
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(&factors)
            .map(|(x, f)| x * f)
            .collect();
        let expected = Tensor::from_vec(expected, n, &Device::Cpu).unwrap();
        errors.check(
            format!("n {n} p {p}: y"),
            &emu.tensor(&y, 0..n, &[n]),
            &expected,
        );
    }
    errors.finish(&emu);
}

#[test]
fn layer_norm_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("layer_norm.cu");
    let mut errors = Errors::new(emu.file);
    let eps = 1e-5;
    // d above the block and not a multiple of it, d below the block and of the column block; rows over two
    // chunks of the γ/β sums (the second partial)
    for dims in [
        vec![2, 13, 300],
        vec![37, 7],
        vec![3, 2, 64],
        vec![cuda::LAYER_NORM_ROWS as usize + 45, 40],
    ] {
        let d = *dims.last().unwrap();
        let rows = dims.iter().product::<usize>() / d;
        let x = seeded(&dims, 3.0, 2.0, 11);
        let gamma = seeded(&[d], 0.3, 1.0, 12);
        let beta = seeded(&[d], 0.3, 0.0, 13);
        let upstream = seeded(&dims, 1.0, 0.0, 14);
        let (y_ref, g_ref) = cpu_forward_backward(&[&x, &gamma, &beta], &upstream, |t| {
            ops::layer_norm(&t[0], &t[1], &t[2], eps).unwrap()
        });
        let (xb, gmb, btb, gb) = (
            emu.upload_tensor(&x),
            emu.upload_tensor(&gamma),
            emu.upload_tensor(&beta),
            emu.upload_tensor(&upstream),
        );
        let len = x.elem_count();
        let y = emu.alloc_f32(len);
        emu.launch(
            "layer_norm_fwd",
            u32_of(rows),
            &[
                Arg::R(&xb),
                Arg::R(&gmb),
                Arg::R(&btb),
                Arg::W(&y),
                Arg::U32(u32_of(d)),
                Arg::F64(eps),
            ],
        );
        // the backward's packed [∂x | ∂γ | ∂β], written by two kernels as three views of one buffer
        let (dx, stats) = (emu.alloc_f32(len), emu.alloc_f32(2 * rows));
        emu.launch(
            "layer_norm_bwd_rows",
            u32_of(rows),
            &[
                Arg::R(&xb),
                Arg::R(&gmb),
                Arg::R(&gb),
                Arg::W(&dx),
                Arg::W(&stats),
                Arg::U32(u32_of(d)),
                Arg::F64(eps),
            ],
        );
        let (grid, chunks) = cuda::layer_norm_partials(rows, d).unwrap();
        let partials = emu.alloc_f64(2 * d * chunks as usize);
        emu.launch(
            "layer_norm_bwd_partials",
            grid,
            &[
                Arg::R(&xb),
                Arg::R(&gb),
                Arg::R(&stats),
                Arg::W(&partials),
                Arg::U32(u32_of(rows)),
                Arg::U32(u32_of(d)),
                Arg::U32(cuda::LAYER_NORM_ROWS),
                Arg::U32(chunks),
            ],
        );
        let (dgamma, dbeta) = (emu.alloc_f32(d), emu.alloc_f32(d));
        emu.launch(
            "layer_norm_bwd_params",
            cuda::per_thread(d).unwrap(),
            &[
                Arg::R(&partials),
                Arg::W(&dgamma),
                Arg::W(&dbeta),
                Arg::U32(u32_of(d)),
                Arg::U32(chunks),
            ],
        );
        let case = format!("{dims:?}");
        let ours = [
            emu.tensor(&y, 0..len, &dims),
            emu.tensor(&dx, 0..len, &dims),
            emu.tensor(&dgamma, 0..d, &[d]),
            emu.tensor(&dbeta, 0..d, &[d]),
        ];
        errors.check_affine(&case, ours, &y_ref, &g_ref);
    }
    errors.finish(&emu);
}

#[test]
fn gelu_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("gelu.cu");
    let mut errors = Errors::new(emu.file);
    // not a multiple of the block; and more blocks than the grid cap, so the grid-stride loop goes round
    for shape in [vec![3, 7, 503], vec![cuda::MAX_GRID as usize + 3, 257]] {
        let x = seeded(&shape, 6.0, 0.0, 21);
        let upstream = seeded(&shape, 1.0, 0.0, 22);
        let n = x.elem_count();
        let (xb, gb) = (emu.upload_tensor(&x), emu.upload_tensor(&upstream));
        for tanh in [false, true] {
            let (y_ref, g_ref) = cpu_forward_backward(&[&x], &upstream, |t| {
                if tanh {
                    ops::gelu_tanh(&t[0]).unwrap()
                } else {
                    ops::gelu_erf(&t[0]).unwrap()
                }
            });
            let form = if tanh { "tanh" } else { "erf" };
            let (y, dx) = (emu.alloc_f32(n), emu.alloc_f32(n));
            let grid = cuda::elementwise(n);
            emu.launch(
                &format!("gelu_{form}_fwd"),
                grid,
                &[Arg::R(&xb), Arg::W(&y), Arg::U64(n as u64)],
            );
            emu.launch(
                &format!("gelu_{form}_bwd"),
                grid,
                &[Arg::R(&xb), Arg::R(&gb), Arg::W(&dx), Arg::U64(n as u64)],
            );
            let case = format!("{form} {shape:?}");
            errors.check(format!("{case}: y"), &emu.tensor(&y, 0..n, &shape), &y_ref);
            errors.check(
                format!("{case}: ∂x"),
                &emu.tensor(&dx, 0..n, &shape),
                &g_ref[0],
            );
        }
    }
    errors.finish(&emu);
}

/// `kernel` once per launch of a plane grid, its `y0` (the launch's first plane) after `args`.
fn launch_planes(emu: &Emu, kernel: &str, launches: &[(u32, cuda::Grid)], args: &[Arg<'_>]) {
    for &(y0, grid) in launches {
        let mut with_y0 = args.to_vec();
        with_y0.push(Arg::U32(y0));
        emu.launch(kernel, grid, &with_y0);
    }
}

#[test]
fn group_norm_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("group_norm.cu");
    let mut errors = Errors::new(emu.file);
    let eps = 1e-5;
    // T over several chunks (the last partial), C over two column blocks (the second partial), B > 1; with grids
    // at most 2 planes tall, the (b, chunk) planes run as several launches (a chunk boundary inside a launch and
    // between launches)
    for (b, t, c, gelu, max_y) in [
        (2, 600, 5, true, cuda::MAX_GRID_Y),
        (3, 37, 40, false, cuda::MAX_GRID_Y),
        (1, 257, 33, true, cuda::MAX_GRID_Y),
        (3, 600, 40, true, 2),
    ] {
        let shape = [b, t, c];
        let x = seeded(&shape, 3.0, 1.5, 31);
        let gamma = seeded(&[c], 0.3, 1.0, 32);
        let beta = seeded(&[c], 0.3, 0.0, 33);
        let upstream = seeded(&shape, 1.0, 0.0, 34);
        let (y_ref, g_ref) = cpu_forward_backward(&[&x, &gamma, &beta], &upstream, |v| {
            ops::group_norm_per_channel(&v[0], &v[1], &v[2], eps, gelu).unwrap()
        });
        let (xb, gmb, btb, gb) = (
            emu.upload_tensor(&x),
            emu.upload_tensor(&gamma),
            emu.upload_tensor(&beta),
            emu.upload_tensor(&upstream),
        );
        let len = x.elem_count();
        let (launches, chunks) = cuda::group_norm_launches(b, t, c, max_y).unwrap();
        assert_eq!(
            launches.len(),
            (b * chunks as usize).div_ceil(max_y as usize),
            "one launch per {max_y} planes"
        );
        let (t_a, c_a, steps) = (u32_of(t), u32_of(c), cuda::GROUP_NORM_STEPS);
        let gelu_a = gelu as i32;
        // statistics, as both directions compute them
        let stats_of = |emu: &Emu| {
            let partials = emu.alloc_f64(2 * b * c * chunks as usize);
            launch_planes(
                emu,
                "gn_partials",
                &launches,
                &[
                    Arg::R(&xb),
                    Arg::W(&partials),
                    Arg::U32(t_a),
                    Arg::U32(c_a),
                    Arg::U32(steps),
                    Arg::U32(chunks),
                ],
            );
            let stats = emu.alloc_f32(2 * b * c);
            emu.launch(
                "gn_stats",
                cuda::per_block(b * c).unwrap(),
                &[
                    Arg::R(&partials),
                    Arg::W(&stats),
                    Arg::U32(chunks),
                    Arg::U32(t_a),
                    Arg::F64(eps),
                ],
            );
            stats
        };
        let stats = stats_of(&emu);
        let y = emu.alloc_f32(len);
        launch_planes(
            &emu,
            "gn_fwd",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&gmb),
                Arg::R(&btb),
                Arg::R(&stats),
                Arg::W(&y),
                Arg::U32(t_a),
                Arg::U32(c_a),
                Arg::U32(steps),
                Arg::U32(chunks),
                Arg::I32(gelu_a),
            ],
        );
        // backward
        let stats = stats_of(&emu);
        let partials = emu.alloc_f64(2 * b * c * chunks as usize);
        launch_planes(
            &emu,
            "gn_bwd_partials",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&gb),
                Arg::R(&gmb),
                Arg::R(&btb),
                Arg::R(&stats),
                Arg::W(&partials),
                Arg::U32(t_a),
                Arg::U32(c_a),
                Arg::U32(steps),
                Arg::U32(chunks),
                Arg::I32(gelu_a),
            ],
        );
        let (means, dgamma, dbeta) = (emu.alloc_f32(2 * b * c), emu.alloc_f32(c), emu.alloc_f32(c));
        emu.launch(
            "gn_bwd_finish",
            cuda::per_block(c).unwrap(),
            &[
                Arg::R(&partials),
                Arg::W(&means),
                Arg::W(&dgamma),
                Arg::W(&dbeta),
                Arg::U32(u32_of(b)),
                Arg::U32(c_a),
                Arg::U32(chunks),
                Arg::U32(t_a),
            ],
        );
        let dx = emu.alloc_f32(len);
        launch_planes(
            &emu,
            "gn_bwd_dx",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&gb),
                Arg::R(&gmb),
                Arg::R(&btb),
                Arg::R(&stats),
                Arg::R(&means),
                Arg::W(&dx),
                Arg::U32(t_a),
                Arg::U32(c_a),
                Arg::U32(steps),
                Arg::U32(chunks),
                Arg::I32(gelu_a),
            ],
        );
        let case = format!("({b}, {t}, {c}) gelu {gelu}, {} launches", launches.len());
        let ours = [
            emu.tensor(&y, 0..len, &shape),
            emu.tensor(&dx, 0..len, &shape),
            emu.tensor(&dgamma, 0..c, &[c]),
            emu.tensor(&dbeta, 0..c, &[c]),
        ];
        errors.check_affine(&case, ours, &y_ref, &g_ref);
    }
    errors.finish(&emu);
}

#[test]
fn batch_norm_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("batch_norm.cu");
    let mut errors = Errors::new(emu.file);
    let (eps, momentum) = (1e-5, 0.1);
    // Planes smaller than a block (a thread's walk wraps planes), of exactly a block and of one value (no wrap),
    // larger than a block; one chunk per channel, and two (N·H·W > BATCH_NORM_CHUNK) with the chunk boundary
    // inside a plane; with grids at most 2 channels tall, the channels run as several launches.
    for (shape, train, relu, max_y) in [
        ([3, 5, 7, 9], true, false, cuda::MAX_GRID_Y),
        ([3, 5, 7, 9], true, true, 2),
        ([2, 3, 50, 45], true, true, cuda::MAX_GRID_Y),
        ([3, 5, 40, 37], true, false, 2),
        ([3, 4, 16, 16], true, true, cuda::MAX_GRID_Y),
        ([300, 3, 1, 1], true, false, 2),
        ([3, 5, 7, 9], false, true, cuda::MAX_GRID_Y),
        ([2, 3, 50, 45], false, false, 2),
    ] {
        let [n, c, h, w] = shape;
        let (hw, len) = (h * w, n * c * h * w);
        let x = seeded(&shape, 2.0, 3.0, 41);
        let gamma = seeded(&[c], 0.3, 1.0, 42);
        let beta = seeded(&[c], 0.3, 0.0, 43);
        let running_mean = seeded(&[c], 1.0, 0.0, 44);
        let running_var = seeded(&[c], 0.5, 1.0, 45);
        let upstream = seeded(&shape, 1.0, 0.0, 46);
        let (mean_var, var_var) = (
            Var::from_tensor(&running_mean.copy().unwrap()).unwrap(),
            Var::from_tensor(&running_var.copy().unwrap()).unwrap(),
        );
        let (y_ref, g_ref) = cpu_forward_backward(&[&x, &gamma, &beta], &upstream, |v| {
            let t = ops::batch_norm::BatchNormTensors {
                weight: &v[1],
                bias: &v[2],
                running_mean: &mean_var,
                running_var: &var_var,
            };
            ops::batch_norm(&v[0], &t, train, relu).unwrap()
        });
        let (xb, gmb, btb) = (
            emu.upload_tensor(&x),
            emu.upload_tensor(&gamma),
            emu.upload_tensor(&beta),
        );
        let (c_a, hw_a, count, count_a, len_a, chunk) = (
            u32_of(c),
            u32_of(hw),
            (n * hw) as u64,
            u32_of(n * hw),
            len as u64,
            cuda::BATCH_NORM_CHUNK,
        );
        let (launches, chunks) = cuda::batch_norm_launches(n, c, hw, max_y).unwrap();
        assert_eq!(launches.len(), c.div_ceil(max_y as usize));
        let out = emu.alloc_f32(len + 3 * c);
        if train {
            let partials = emu.alloc_f64(c * chunks as usize);
            launch_planes(
                &emu,
                "bn_sum_partials",
                &launches,
                &[
                    Arg::R(&xb),
                    Arg::W(&partials),
                    Arg::U32(c_a),
                    Arg::U32(hw_a),
                    Arg::U32(count_a),
                    Arg::U32(chunk),
                ],
            );
            emu.launch(
                "bn_mean",
                cuda::per_block(c).unwrap(),
                &[
                    Arg::R(&partials),
                    Arg::W(&out),
                    Arg::U32(chunks),
                    Arg::U64(count),
                    Arg::U64(len_a),
                ],
            );
            launch_planes(
                &emu,
                "bn_sqdev_partials",
                &launches,
                &[
                    Arg::R(&xb),
                    Arg::R(&out),
                    Arg::W(&partials),
                    Arg::U32(c_a),
                    Arg::U32(hw_a),
                    Arg::U32(count_a),
                    Arg::U32(chunk),
                    Arg::U64(len_a),
                ],
            );
            emu.launch(
                "bn_var",
                cuda::per_block(c).unwrap(),
                &[
                    Arg::R(&partials),
                    Arg::W(&out),
                    Arg::U32(c_a),
                    Arg::U32(chunks),
                    Arg::U64(count),
                    Arg::U64(len_a),
                    Arg::F64(eps),
                ],
            );
        } else {
            let (rm, rv) = (
                emu.upload_tensor(&running_mean),
                emu.upload_tensor(&running_var),
            );
            emu.launch(
                "bn_eval_stats",
                cuda::per_thread(c).unwrap(),
                &[
                    Arg::R(&rm),
                    Arg::R(&rv),
                    Arg::W(&out),
                    Arg::U32(c_a),
                    Arg::U64(len_a),
                    Arg::F64(eps),
                ],
            );
        }
        launch_planes(
            &emu,
            "bn_fwd",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&gmb),
                Arg::R(&btb),
                Arg::W(&out),
                Arg::U32(c_a),
                Arg::U32(hw_a),
                Arg::U32(count_a),
                Arg::U32(chunk),
                Arg::U64(len_a),
                Arg::I32(relu as i32),
            ],
        );
        // backward: the upstream gradient as it reaches the op, padded with zeros over the statistics
        let mut padded = upstream.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        padded.extend(std::iter::repeat_n(0.0, 3 * c));
        let gb = emu.upload(&padded);
        let partials = emu.alloc_f64(2 * c * chunks as usize);
        launch_planes(
            &emu,
            "bn_bwd_partials",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&out),
                Arg::R(&gb),
                Arg::W(&partials),
                Arg::U32(c_a),
                Arg::U32(hw_a),
                Arg::U32(count_a),
                Arg::U32(chunk),
                Arg::U64(len_a),
                Arg::I32(relu as i32),
            ],
        );
        let (grads, coef) = (emu.alloc_f32(len + 2 * c), emu.alloc_f32(2 * c));
        emu.launch(
            "bn_bwd_finish",
            cuda::per_block(c).unwrap(),
            &[
                Arg::R(&partials),
                Arg::R(&out),
                Arg::W(&grads),
                Arg::W(&coef),
                Arg::U32(c_a),
                Arg::U32(chunks),
                Arg::U64(count),
                Arg::U64(len_a),
            ],
        );
        launch_planes(
            &emu,
            "bn_bwd_dx",
            &launches,
            &[
                Arg::R(&xb),
                Arg::R(&out),
                Arg::R(&gb),
                Arg::R(&gmb),
                Arg::R(&coef),
                Arg::W(&grads),
                Arg::U32(c_a),
                Arg::U32(hw_a),
                Arg::U32(count_a),
                Arg::U32(chunk),
                Arg::U64(len_a),
                Arg::I32(relu as i32),
                Arg::I32(train as i32),
            ],
        );
        let case = format!(
            "{shape:?} {} relu {relu}, {} launches × {chunks} chunks",
            if train { "train" } else { "eval" },
            launches.len()
        );
        let ours = [
            emu.tensor(&out, 0..len, &shape),
            emu.tensor(&grads, 0..len, &shape),
            emu.tensor(&grads, len..len + c, &[c]),
            emu.tensor(&grads, len + c..len + 2 * c, &[c]),
        ];
        errors.check_affine(&case, ours, &y_ref, &g_ref);
        // the statistics the kernel normalised with move the running ones as the CPU kernel moved them (the
        // running update itself is tensor ops on the device)
        let stats = emu.read_f32(&out)[len..].to_vec();
        let unbias = (n * hw) as f64 / (n * hw - 1) as f64;
        let moved = |old: &Tensor, new: &[f32], factor: f64| -> Tensor {
            if !train {
                return old.clone();
            }
            let old = old.to_vec1::<f32>().unwrap();
            let v: Vec<f32> = old
                .iter()
                .zip(new)
                .map(|(&r, &s)| ((1.0 - momentum) * r as f64 + momentum * s as f64 * factor) as f32)
                .collect();
            Tensor::from_vec(v, c, &Device::Cpu).unwrap()
        };
        errors.check(
            format!("{case}: running mean"),
            &moved(&running_mean, &stats[..c], 1.0),
            mean_var.as_tensor(),
        );
        errors.check(
            format!("{case}: running var"),
            &moved(&running_var, &stats[c..2 * c], unbias),
            var_var.as_tensor(),
        );
    }
    errors.finish(&emu);
}

#[test]
fn loss_kernels_match_the_cpu_kernels() {
    let emu = Emu::new("loss.cu");
    let mut errors = Errors::new(emu.file);
    let g = 1.7f32; // the upstream gradient of the scalar loss
    let grad = emu.upload(&[g]);
    let upstream = Tensor::new(g, &Device::Cpu).unwrap();
    let one_hot = |b: usize, c: usize, seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut y = vec![0f32; b * c];
        for r in 0..b {
            y[r * c + rng.gen_range(0..c)] = 1.0;
        }
        Tensor::from_vec(y, (b, c), &Device::Cpu).unwrap()
    };
    let finish = |emu: &Emu, parts: &Buf, n: usize, scale: f64, offset: f64| -> Tensor {
        let out = emu.alloc_f32(1);
        emu.launch(
            "loss_finish",
            1,
            &[
                Arg::R(parts),
                Arg::W(&out),
                Arg::U32(u32_of(n)),
                Arg::F64(scale),
                Arg::F64(offset),
            ],
        );
        Tensor::new(emu.read_f32(&out)[0], &Device::Cpu).unwrap()
    };
    // (B, C): classes beyond a block (rows looped), a batch beyond a block (Dice's classes looped over rows,
    // cross-entropy's 300 row parts added by a looping loss_finish; focal's row kernels are covered by the others
    // and skipped there: 300 blocks of 256 threads each cost seconds in the emulator)
    for (b, c) in [(13, 7), (5, 300), (300, 7)] {
        let case = format!("({b}, {c})");
        let logits = seeded(&[b, c], 3.0, 0.0, 51);
        let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
        // soft targets in one case: every class weighs in the row sums
        let y = if c == 300 {
            candle_nn::ops::softmax(&seeded(&[b, c], 2.0, 0.0, 52), 1).unwrap()
        } else {
            one_hot(b, c, 52)
        };
        let n = b * c;
        let (yb, xb, pb) = (
            emu.upload_tensor(&y),
            emu.upload_tensor(&logits),
            emu.upload_tensor(&probs),
        );
        let (b_a, c_a) = (u32_of(b), u32_of(c));

        // cross-entropy on the logits
        let (l_ref, g_ref) = cpu_forward_backward(&[&logits], &upstream, |v| {
            ops::loss::cross_entropy(&v[0], &y).unwrap()
        });
        let parts = emu.alloc_f64(b);
        emu.launch(
            "ce_rows",
            b_a,
            &[Arg::R(&xb), Arg::R(&yb), Arg::W(&parts), Arg::U32(c_a)],
        );
        errors.check(
            format!("{case} cross-entropy: loss"),
            &finish(&emu, &parts, b, -1.0 / b as f64, 0.0),
            &l_ref,
        );
        let dx = emu.alloc_f32(n);
        emu.launch(
            "ce_bwd",
            b_a,
            &[
                Arg::R(&xb),
                Arg::R(&yb),
                Arg::R(&grad),
                Arg::W(&dx),
                Arg::U32(c_a),
                Arg::F32(b as f32),
            ],
        );
        errors.check(
            format!("{case} cross-entropy: ∂x"),
            &emu.tensor(&dx, 0..n, &[b, c]),
            &g_ref[0],
        );

        // Dice on the probabilities
        let eps = 1e-8;
        let (l_ref, g_ref) = cpu_forward_backward(&[&probs], &upstream, |v| {
            ops::loss::dice(&v[0], &y, eps).unwrap()
        });
        let (counts, ratios) = (emu.alloc_f64(2 * c), emu.alloc_f64(c));
        emu.launch(
            "dice_counts",
            c_a,
            &[
                Arg::R(&pb),
                Arg::R(&yb),
                Arg::W(&counts),
                Arg::W(&ratios),
                Arg::U32(b_a),
                Arg::U32(c_a),
                Arg::F64(eps),
            ],
        );
        errors.check(
            format!("{case} dice: loss"),
            &finish(&emu, &ratios, c, -1.0 / c as f64, 1.0),
            &l_ref,
        );
        let dp = emu.alloc_f32(n);
        emu.launch(
            "dice_bwd",
            cuda::elementwise(n),
            &[
                Arg::R(&yb),
                Arg::R(&counts),
                Arg::R(&grad),
                Arg::W(&dp),
                Arg::U64(n as u64),
                Arg::U32(c_a),
            ],
        );
        errors.check(
            format!("{case} dice: ∂p"),
            &emu.tensor(&dp, 0..n, &[b, c]),
            &g_ref[0],
        );

        // focal on the probabilities, with clamping exercised by a tiny and a huge ε
        if b > 256 {
            continue;
        }
        let alpha = seeded(&[c], 10.0, 12.0, 53);
        let ab = emu.upload_tensor(&alpha);
        for (gamma, mean, eps) in [
            (2.0, true, 1e-8),
            (0.5, false, 1e-8),
            (0.0, true, 1e-8),
            (2.0, true, 0.2),
        ] {
            let (l_ref, g_ref) = cpu_forward_backward(&[&probs], &upstream, |v| {
                ops::loss::focal(&v[0], &y, &alpha, gamma, eps, mean).unwrap()
            });
            let (lo, hi) = (eps as f32, (1.0 - eps) as f32);
            let scale = if mean { 1.0 / b as f64 } else { 1.0 };
            let parts = emu.alloc_f64(b);
            emu.launch(
                "focal_rows",
                b_a,
                &[
                    Arg::R(&pb),
                    Arg::R(&yb),
                    Arg::R(&ab),
                    Arg::W(&parts),
                    Arg::U32(c_a),
                    Arg::F32(lo),
                    Arg::F32(hi),
                    Arg::F64(gamma),
                ],
            );
            let what = format!("{case} focal γ {gamma} mean {mean} ε {eps}");
            errors.check(
                format!("{what}: loss"),
                &finish(&emu, &parts, b, scale, 0.0),
                &l_ref,
            );
            let dp = emu.alloc_f32(n);
            emu.launch(
                "focal_bwd",
                b_a,
                &[
                    Arg::R(&pb),
                    Arg::R(&yb),
                    Arg::R(&ab),
                    Arg::R(&grad),
                    Arg::W(&dp),
                    Arg::U32(c_a),
                    Arg::F32(lo),
                    Arg::F32(hi),
                    Arg::F64(gamma),
                    Arg::F64(scale),
                ],
            );
            errors.check(
                format!("{what}: ∂p"),
                &emu.tensor(&dp, 0..n, &[b, c]),
                &g_ref[0],
            );
        }
    }
    errors.finish(&emu);
}
