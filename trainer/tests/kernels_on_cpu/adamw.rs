//! `kernels/adamw.cu`: the multi-tensor launches (Σ g², the clipping coefficient, a group's update) against the
//! CPU kernel's per-tensor update (`ops::adamw` with host moments) — parameters, moments, the norm and the
//! coefficient — over tensors shorter than, equal to and longer than a chunk, with and without clipping.

use candle_core::{Device, Tensor, Var};
use erc_train::ops::adamw::{adamw_update, Clip, GradNorm, Moments, Step};
use erc_train::ops::cuda;

use super::{seeded, Arg, Buf, Emu, Errors};

/// A table of the buffers' addresses.
fn table(bufs: &[Buf]) -> Arg<'_> {
    Arg::T(bufs.iter().collect())
}

#[test]
fn adamw_multi_tensor_kernels_match_the_cpu_kernel() {
    let emu = Emu::new("adamw.cu");
    let mut errors = Errors::new(emu.file);
    let lens = [cuda::ADAMW_CHUNK + 904, 1, cuda::ADAMW_CHUNK, 333];
    for (case, grad_scale, decay, t) in [("clipped", 3.0f32, 0.99, 1), ("unclipped", 1e-3, 1.0, 7)]
    {
        let theta: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| seeded(&[n], 1.0, 0.0, 10 + i as u64))
            .collect();
        let grads: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| (seeded(&[n], 1.0, 0.0, 20 + i as u64) * grad_scale as f64).unwrap())
            .collect();
        let m0: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| seeded(&[n], 0.1, 0.0, 30 + i as u64))
            .collect();
        let v0: Vec<Tensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| seeded(&[n], 0.01, 0.011, 40 + i as u64))
            .collect();
        let step = Step {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay,
            step_size: 1e-3 / (1.0 - 0.9f64.powi(t)),
            bias2_sqrt: (1.0 - 0.999f64.powi(t)).sqrt(),
        };

        // the CPU kernel, tensor by tensor
        let vars: Vec<Var> = theta
            .iter()
            .map(|t| Var::from_tensor(&t.copy().unwrap()).unwrap())
            .collect();
        let mut moments: Vec<Moments> = vars
            .iter()
            .zip(m0.iter().zip(&v0))
            .map(|(var, (m, v))| {
                let mut moments = Moments::zeros(var.as_tensor()).unwrap();
                moments.set_from(m, v, var.as_tensor()).unwrap();
                moments
            })
            .collect();
        let mut norm = GradNorm::default();
        for (g, m) in grads.iter().zip(&moments) {
            norm.add(g, m).unwrap();
        }
        let clip = norm.clip(1.0).unwrap();
        let Clip::Host(clip_ref) = clip else {
            panic!("host gradients give a host coefficient")
        };
        for ((var, g), m) in vars.iter().zip(&grads).zip(moments.iter_mut()) {
            adamw_update(var, g, m, &clip, &step).unwrap();
        }

        // the kernels, all tensors per launch
        let upload =
            |ts: &[Tensor]| -> Vec<Buf> { ts.iter().map(|t| emu.upload_tensor(t)).collect() };
        let (tb, gb, mb, vb) = (upload(&theta), upload(&grads), upload(&m0), upload(&v0));
        let chunks = cuda::adamw_chunks(&lens);
        let count = chunks.len() / 2;
        let chunks_b = emu.upload_u64(&chunks);
        let lens_b = emu.upload_u64(&lens.iter().map(|&n| n as u64).collect::<Vec<_>>());
        let partials = emu.alloc_f64(count);
        emu.launch(
            "adamw_sumsq",
            super::u32_of(count),
            &[
                table(&gb),
                Arg::R(&chunks_b),
                Arg::R(&lens_b),
                Arg::W(&partials),
            ],
        );
        let (squares, clip_b) = (emu.alloc_f64(1), emu.alloc_f32(1));
        emu.launch(
            "adamw_clip",
            1u32,
            &[
                Arg::R(&partials),
                Arg::U32(super::u32_of(count)),
                Arg::F64(0.0),
                Arg::F64(1.0),
                Arg::W(&squares),
                Arg::W(&clip_b),
            ],
        );
        emu.launch(
            "adamw_update",
            super::u32_of(count),
            &[
                table(&tb),
                table(&gb),
                table(&mb),
                table(&vb),
                Arg::R(&chunks_b),
                Arg::R(&lens_b),
                Arg::R(&clip_b),
                Arg::F32(step.beta1 as f32),
                Arg::F32(step.beta2 as f32),
                Arg::F32(step.decay as f32),
                Arg::F32(step.step_size as f32),
                Arg::F32(step.bias2_sqrt as f32),
                Arg::F32(step.eps as f32),
            ],
        );

        let norm_ref = norm.value().unwrap();
        let norm_ours = emu.read_f64(&squares)[0].sqrt();
        let scalar = |v: f64| Tensor::new(&[v as f32], &Device::Cpu).unwrap();
        errors.check(
            format!("{case}: norm"),
            &scalar(norm_ours),
            &scalar(norm_ref),
        );
        let clip_ours = emu.read_f32(&clip_b)[0];
        errors.check(
            format!("{case}: clip"),
            &scalar(clip_ours as f64),
            &scalar(clip_ref as f64),
        );
        assert_eq!(
            clip_ours < 1.0,
            grad_scale > 1.0,
            "{case}: clipping applies to the large gradients only"
        );
        for (i, &n) in lens.iter().enumerate() {
            let (m_ref, v_ref) = moments[i].to_tensors(vars[i].as_tensor()).unwrap();
            errors.check(
                format!("{case} tensor {i} ({n}): θ"),
                &emu.tensor(&tb[i], 0..n, &[n]),
                vars[i].as_tensor(),
            );
            errors.check(
                format!("{case} tensor {i} ({n}): m"),
                &emu.tensor(&mb[i], 0..n, &[n]),
                &m_ref,
            );
            errors.check(
                format!("{case} tensor {i} ({n}): v"),
                &emu.tensor(&vb[i], 0..n, &[n]),
                &v_ref,
            );
        }
    }
    errors.finish(&emu);
}
