//! `kernels/pool.cu`: the 3×3/s2/p1 max-pool forward and its gather backward against the CPU kernel
//! (`ops::max_pool_3x3_s2`), bit for bit — values, and ∂x summed in the CPU kernel's order — on odd and even sizes,
//! ties (ReLU zeros, repeated values: the first maximum takes the gradient) and NaNs. Under `ERC_OPS=generic` the
//! op is its generic composition, which sums in another order and treats NaN otherwise: then to the tolerance,
//! without the NaN case.

use candle_core::{Device, Tensor};
use erc_train::ops::{self, cuda};

use super::{cpu_forward_backward, seeded, Arg, Emu, Errors};

#[test]
fn max_pool_kernels_match_the_cpu_kernel_bit_for_bit() {
    let emu = Emu::new("pool.cu");
    let mut errors = Errors::new(emu.file);
    let out = |n: usize| (n - 1) / 2 + 1;
    let cpu_kernel = !ops::forced_generic();
    for (case, dims) in [
        ("ties", [3, 2, 7, 8]),
        ("ties", [2, 3, 6, 9]),
        ("distinct", [2, 2, 9, 11]),
        ("ties", [1, 1, 1, 1]),
        ("ties", [1, 2, 2, 3]),
        ("NaN", [2, 2, 7, 6]),
    ] {
        if case == "NaN" && !cpu_kernel {
            continue;
        }
        let [b, c, h, w] = dims;
        let n = b * c * h * w;
        let mut x = match case {
            // ReLU zeros and a few repeated values: most windows have several maxima
            "ties" => (0..n)
                .map(|i| ((i * 7 % 5) as f32 - 2.0).max(0.0))
                .collect::<Vec<f32>>(),
            _ => seeded(&dims, 1.0, 0.0, 71)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
        };
        if case == "NaN" {
            // a window's first value; NaNs in two rows of one window (the later row's wins, as the CPU kernel
            // ends only the row at a NaN); two in one row of a window (the first wins); the last value
            for at in [0, w + 1, 2 * w + 3, 3 * w + 4, 4 * w + 1, 4 * w + 2, n - 1] {
                x[at] = f32::NAN;
            }
        }
        let x = Tensor::from_vec(x, &dims, &Device::Cpu).unwrap();
        let y_dims = [b, c, out(h), out(w)];
        let upstream = seeded(&y_dims, 1.0, 0.5, 72);
        let (y_ref, g_ref) =
            cpu_forward_backward(&[&x], &upstream, |t| ops::max_pool_3x3_s2(&t[0]).unwrap());
        let (xb, gb) = (emu.upload_tensor(&x), emu.upload_tensor(&upstream));
        let m = y_ref.elem_count();
        let plane = [h, w, out(h), out(w)].map(|v| Arg::U32(super::u32_of(v)));
        let (y, dx) = (emu.alloc_f32(m), emu.alloc_f32(n));
        emu.launch(
            "max_pool_fwd",
            cuda::elementwise(m),
            &[
                [Arg::R(&xb), Arg::W(&y)].as_slice(),
                &plane,
                &[Arg::U64(m as u64)],
            ]
            .concat(),
        );
        emu.launch(
            "max_pool_bwd",
            cuda::elementwise(n),
            &[
                [Arg::R(&xb), Arg::R(&gb), Arg::W(&dx)].as_slice(),
                &plane,
                &[Arg::U64(n as u64)],
            ]
            .concat(),
        );
        let name = format!("{case} {dims:?}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        let (y_ours, dx_ours) = (emu.read_f32(&y), emu.read_f32(&dx));
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if cpu_kernel {
            assert_eq!(bits(&y_ours), bits(&flat(&y_ref)), "{name}: y");
            assert_eq!(bits(&dx_ours), bits(&flat(&g_ref[0])), "{name}: ∂x");
        }
        if case != "NaN" {
            errors.check(format!("{name}: y"), &emu.tensor(&y, 0..m, &y_dims), &y_ref);
        }
        errors.check(
            format!("{name}: ∂x"),
            &emu.tensor(&dx, 0..n, &dims),
            &g_ref[0],
        );
    }
    errors.finish(&emu);
}
