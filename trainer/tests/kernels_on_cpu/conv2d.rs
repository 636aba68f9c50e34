//! `kernels/conv2d.cu` with its products: the CUDA body (`ops::conv2d::cuda_body`) run through [`EmuExec`] —
//! its im2col, reordering and col2im launches in the emulator, its GEMMs in f64 — against the CPU kernel
//! (`ops::conv2d`: im2col + candle's matmul): y, ∂x and ∂W, for every convolution ResNet-50 has, on odd heights and
//! widths of the other parity, three images, with workspaces that hold one and two images a chunk (the last chunk
//! short).

use candle_core::{Device, Shape, Tensor};
use erc_train::ops;
use erc_train::ops::conv2d::cuda_body::{self, Conv};

use super::exec::EmuExec;
use super::{cpu_forward_backward, seeded, Errors};

#[test]
fn conv2d_body_matches_the_cpu_kernel() {
    let exec = EmuExec::new();
    let mut errors = Errors::new("conv2d.cu");
    // (k, stride, padding, x, C_out): the stem 7×7/s2/p3, the bottlenecks' 3×3/s1/p1 and 3×3/s2/p1, 1×1/s1/p0 and
    // the downsampling 1×1/s2/p0
    for (k, stride, padding, dims, c_out) in [
        (7, 2, 3, [3, 3, 11, 10], 5),
        (3, 1, 1, [3, 5, 9, 8], 7),
        (3, 2, 1, [3, 5, 9, 8], 7),
        (1, 1, 0, [3, 5, 9, 8], 7),
        (1, 2, 0, [3, 5, 7, 10], 7),
    ] {
        let [b, c, _, _] = dims;
        let x = seeded(&dims, 1.0, 0.0, 61);
        let w = seeded(&[c_out, c, k, k], 0.5, 0.0, 62);
        let conv = Conv::of(x.shape(), w.shape(), stride, padding).unwrap();
        let y_dims = conv.output_dims();
        let upstream = seeded(&y_dims, 1.0, 0.0, 63);
        let (y_ref, g_ref) = cpu_forward_backward(&[&x, &w], &upstream, |t| {
            ops::conv2d(&t[0], &t[1], stride, padding).unwrap()
        });
        let (xb, wb, gb) = (
            exec.upload(&values(&x)),
            exec.upload(&values(&w)),
            exec.upload(&values(&upstream)),
        );
        let pointwise = k == 1 && stride == 1;
        for images in [1, 2] {
            let case = format!("k {k} s {stride} p {padding} {dims:?}, {images} image(s) a chunk");
            let chunks = b.div_ceil(images);

            let before = exec.gemms.borrow().len();
            let workspace = images * conv.forward_values_per_image();
            let y = cuda_body::forward(&exec, &xb, &wb, &conv, workspace).unwrap();
            // one product per chunk, each over its images (a 1×1/s1 forward: the whole batch, no columns)
            let batches: Vec<usize> = exec.gemms.borrow()[before..]
                .iter()
                .map(|g| g.batch)
                .collect();
            let expected: Vec<usize> = if pointwise {
                vec![b]
            } else {
                (0..chunks).map(|i| images.min(b - i * images)).collect()
            };
            assert_eq!(batches, expected, "{case}: the forward's products");
            errors.check(format!("{case}: y"), &tensor(&exec, &y, &y_dims), &y_ref);

            let before = exec.gemms.borrow().len();
            let workspace = images * conv.backward_values_per_image();
            let packed = cuda_body::backward(&exec, &xb, &wb, &gb, &conv, workspace).unwrap();
            // per chunk ∂W (then ∂cols), and a 1×1/s1's ∂x at the end
            let products = exec.gemms.borrow().len() - before;
            assert_eq!(
                products,
                if pointwise { chunks + 1 } else { 2 * chunks },
                "{case}: the backward's products"
            );
            let all = exec.read(&packed);
            let len = x.elem_count();
            let part = |range: std::ops::Range<usize>, shape: &[usize]| {
                Tensor::from_vec(all[range].to_vec(), shape, &Device::Cpu).unwrap()
            };
            errors.check(format!("{case}: ∂x"), &part(0..len, &dims), &g_ref[0]);
            errors.check(
                format!("{case}: ∂W"),
                &part(len..all.len(), w.dims()),
                &g_ref[1],
            );
        }
    }
    exec.with_emu("conv2d.cu", |emu| errors.finish(emu));
}

/// Shapes the body refuses: channels that differ, a kernel larger than the padded input, a zero stride.
#[test]
fn conv2d_body_refuses_shapes_that_do_not_fit() {
    let shape = |d: [usize; 4]| Shape::from(&d);
    assert!(Conv::of(&shape([1, 3, 8, 8]), &shape([4, 2, 3, 3]), 1, 1).is_err());
    assert!(Conv::of(&shape([1, 3, 2, 8]), &shape([4, 3, 7, 7]), 2, 1).is_err());
    assert!(Conv::of(&shape([1, 3, 8, 8]), &shape([4, 3, 3, 3]), 0, 1).is_err());
    assert!(Conv::of(&shape([1, 3, 2, 8]), &shape([4, 3, 7, 7]), 2, 3).is_ok());
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn tensor(exec: &EmuExec, b: &super::Buf, shape: &[usize]) -> Tensor {
    Tensor::from_vec(exec.read(b), shape, &Device::Cpu).unwrap()
}
