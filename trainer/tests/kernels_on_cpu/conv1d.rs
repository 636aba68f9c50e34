//! `kernels/conv1d.cu` with the products of the conv1d CUDA body (`ops::conv1d::{forward_on, backward_on}`),
//! run through the emulated device [`EmuExec`] against the CPU kernel (`ops::conv1d` on the CPU): values, ∂x and
//! ∂w, on wav2vec2's shapes in small — the first layer (C = 1, k = 10, s = 5), odd C with k = 3, s = 2, k = 2,
//! s = 2, the positional conv's groups with padding k/2 and an even k (k = 128 once) — batches of 3 in chunks of
//! 1, 2 or all, with and without GELU (on the GPU `ops::conv1d` runs gelu.cu's kernels after the convolution,
//! and so does the test).

use candle_core::{Device, Tensor};
use erc_train::ops;
use erc_train::ops::conv1d::{backward_on, forward_on, rearranged_weight, Conv1dShape};
use erc_train::ops::cuda::{self, Exec};

use super::exec::EmuExec;
use super::{cpu_forward_backward, seeded, Buf, Errors};

/// `values` of `buf[range]` as a CPU tensor of `shape`.
fn tensor(exec: &EmuExec, buf: &Buf, range: std::ops::Range<usize>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(exec.read(buf)[range].to_vec(), shape, &Device::Cpu).unwrap()
}

/// The rearranged weight's gradient (groups, O_g, k·C_g) as PyTorch's (C_out, C_g, k).
fn as_pytorch_weight(grad: Tensor, (c_out, c_g, k): (usize, usize, usize)) -> Tensor {
    grad.reshape((c_out, k, c_g))
        .unwrap()
        .permute((0, 2, 1))
        .unwrap()
        .contiguous()
        .unwrap()
}

#[test]
fn conv1d_body_matches_the_cpu_kernel() {
    let exec = EmuExec::new();
    let mut errors = Errors::new("conv1d.cu");
    // (batch, length, c_in, c_out, kernel, stride, padding, groups, gelu, batch elements per chunk)
    for (b, l, c_in, c_out, k, s, p, groups, gelu, per_chunk) in [
        (3, 53, 1, 8, 10, 5, 0, 1, true, 2),
        (3, 17, 7, 6, 3, 2, 0, 1, true, 1),
        (3, 16, 5, 4, 2, 2, 0, 1, false, 3),
        (3, 24, 8, 8, 16, 1, 8, 4, false, 2),
        (3, 12, 16, 16, 128, 1, 64, 16, false, 1),
        (4, 14, 8, 12, 4, 1, 2, 4, true, 3),
    ] {
        let case = format!("b{b} l{l} c{c_in}→{c_out} k{k} s{s} p{p} g{groups} gelu {gelu}");
        let t = (l + 2 * p - k) / s + 1;
        let c_g = c_in / groups;
        let x = seeded(&[b, l, c_in], 1.0, 0.0, 61);
        let w = seeded(&[c_out, c_g, k], 0.5, 0.0, 62);
        let upstream = seeded(&[b, t, c_out], 1.0, 0.0, 63);
        let (y_ref, g_ref) = cpu_forward_backward(&[&x, &w], &upstream, |v| {
            ops::conv1d(&v[0], &v[1], s, p, groups, gelu).unwrap()
        });

        let w_rearranged = rearranged_weight(&w, groups).unwrap();
        let shape = Conv1dShape::new((b, l, c_in), w_rearranged.dims3().unwrap(), k, s, p).unwrap();
        assert_eq!(shape.steps, t, "{case}");
        let workspace = per_chunk * t * shape.row() * groups;
        let chunks = shape.chunks(workspace);
        assert_eq!(
            chunks.len(),
            b.div_ceil(per_chunk),
            "{case}: chunks {chunks:?}"
        );
        let upload = |t: &Tensor| exec.upload(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let (xb, wb, ub) = (upload(&x), upload(&w_rearranged), upload(&upstream));
        let n = b * t * c_out;
        let products_before = exec.gemms.borrow().len();

        let z = forward_on(&exec, &xb, &wb, &shape, workspace).unwrap();
        // one product per chunk, batched over the groups, written into z's rows of C_out
        let forward: Vec<_> = exec.gemms.borrow()[products_before..].to_vec();
        assert_eq!(forward.len(), chunks.len(), "{case}");
        assert!(
            forward.iter().all(|g| g.batch == groups && g.c.ld == c_out),
            "{case}: {forward:?}"
        );
        let (y, grad_z) = if gelu {
            let (mut y, mut grad_z) = (exec.alloc(n).unwrap(), exec.alloc(n).unwrap());
            let grid = cuda::Grid::from(cuda::elementwise(n));
            exec.launch(
                &cuda::GELU,
                "gelu_erf_fwd",
                grid,
                &mut [
                    cuda::Arg::In(&z),
                    cuda::Arg::Out(&mut y),
                    cuda::Arg::U64(n as u64),
                ],
            )
            .unwrap();
            exec.launch(
                &cuda::GELU,
                "gelu_erf_bwd",
                grid,
                &mut [
                    cuda::Arg::In(&z),
                    cuda::Arg::In(&ub),
                    cuda::Arg::Out(&mut grad_z),
                    cuda::Arg::U64(n as u64),
                ],
            )
            .unwrap();
            (y, grad_z)
        } else {
            (z, ub)
        };
        errors.check(
            format!("{case}: y"),
            &tensor(&exec, &y, 0..n, &[b, t, c_out]),
            &y_ref,
        );

        let products_before = exec.gemms.borrow().len();
        let packed = backward_on(&exec, (&xb, &wb, &grad_z), &shape, workspace, true).unwrap();
        assert_eq!(
            exec.gemms.borrow().len() - products_before,
            2 * chunks.len(),
            "{case}: ∂w and ∂cols per chunk"
        );
        let len_x = b * l * c_in;
        let len_w = c_out * c_g * k;
        errors.check(
            format!("{case}: ∂x"),
            &tensor(&exec, &packed, 0..len_x, &[b, l, c_in]),
            &g_ref[0],
        );
        errors.check(
            format!("{case}: ∂w"),
            &as_pytorch_weight(
                tensor(&exec, &packed, len_x..len_x + len_w, &[len_w]),
                (c_out, c_g, k),
            ),
            &g_ref[1],
        );
        // the first layer's input is data: only ∂w, packed alone
        if c_in == 1 {
            let only_w = backward_on(&exec, (&xb, &wb, &grad_z), &shape, workspace, false).unwrap();
            assert_eq!(exec.len(&only_w), len_w, "{case}");
            errors.check(
                format!("{case}: ∂w without ∂x"),
                &as_pytorch_weight(tensor(&exec, &only_w, 0..len_w, &[len_w]), (c_out, c_g, k)),
                &g_ref[1],
            );
        }
    }
    exec.with_emu("conv1d.cu", |emu| errors.finish(emu));
}
