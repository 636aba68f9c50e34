//! Seed system 3 (README "Faces and landmarks"): its NN1 (a small CNN on grey face crops) and NN2 (an MLP on
//! facial landmarks), applied to each frame of a row and averaged over the frames that have a face, and their
//! feature-level fusion (the two 16-d feature vectors concatenated, the seed's better fusion). The model's head
//! (`feedforward_layers`, then the class layer and softmax) is the seed's last dense layer(s).
//!
//! * [`FaceCnn`] — three groups `conv 3x3 (padding 1) → ReLU → max-pool 2x2` of [`CNN_CHANNELS`] channels,
//!   flatten, a dense layer of `visual_out_features` (16) with sigmoid: the seed's "features". The ReLU is applied
//!   after the pooling: max-pooling and ReLU commute (ReLU is monotone), so the values are the seed's, the
//!   gradients too (a window's maximum gets the gradient either way, and ReLU zeroes it either way), on a quarter
//!   of the elements. The pooling is [`ops::max_pool_2x2`] (candle's `max_pool2d` backward is wrong: see there).
//! * [`LandmarksMlp`] — the seed split 68 dlib points into 8 face parts, each through a dense layer of 4
//!   (sigmoid); RetinaFace gives 5 points, split the same way into 3 parts (eyes: points 1–2, nose: 3, mouth
//!   corners: 4–5), each part's normalised coordinates through a dense layer of 4 (sigmoid), concatenated, two
//!   dense layers of [`LANDMARK_HIDDEN`] (sigmoid), then the feature layer of 16 (sigmoid).
//!
//! Parameter names (under `visual.`): `cnn.conv{1,2,3}.{weight,bias}`, `cnn.features.*`,
//! `landmarks.part{1,2,3}.*`, `landmarks.dense{1,2}.*`, `landmarks.features.*` — PyTorch's for the fixture
//! module of the same layout.

use candle_core::{Tensor, D};

use crate::data::face_crops::{FaceBatch, LANDMARK_VALUES};
use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::nn::Linear;
use crate::ops;

/// The CNN's channels per group (the seed does not publish its widths: small, doubling).
pub const CNN_CHANNELS: [usize; 3] = [16, 32, 64];
/// The landmark MLP's hidden widths after the parts.
pub const LANDMARK_HIDDEN: usize = 32;
/// The landmark coordinates (x, y pairs, normalised) of each face part: eyes, nose, mouth corners.
const PARTS: [(usize, usize); 3] = [(0, 4), (4, 2), (6, 4)];
const PART_FEATURES: usize = 4;

/// 1/(1 + e^−x), composed of candle ops (gradient-safe on every device).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// A bias-carrying 3x3 convolution, PyTorch-initialised (U(±1/√fan_in) for weight and bias).
struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
}

impl Conv3x3 {
    fn new(store: &mut ParamStore, name: &str, cin: usize, cout: usize) -> Result<Self> {
        let bound = 1.0 / ((cin * 9) as f64).sqrt();
        Ok(Conv3x3 {
            weight: store.uniform(&format!("{name}.weight"), &[cout, cin, 3, 3], bound)?,
            bias: store.uniform(&format!("{name}.bias"), &[cout], bound)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::conv2d(x, &self.weight, 1, 1)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?)
    }
}

/// NN1: grey S x S crops (N, 1, S, S) → features (N, F) in (0, 1).
pub struct FaceCnn {
    convs: Vec<Conv3x3>,
    features: Linear,
}

impl FaceCnn {
    /// `channels`: each group's ([`CNN_CHANNELS`] in the configs; smaller in the parity fixtures).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        channels: [usize; 3],
        size: usize,
        features: usize,
    ) -> Result<Self> {
        let mut convs = Vec::new();
        let mut cin = 1;
        for (i, cout) in channels.iter().enumerate() {
            convs.push(Conv3x3::new(
                store,
                &format!("{name}.conv{}", i + 1),
                cin,
                *cout,
            )?);
            cin = *cout;
        }
        let side = size / 8; // three 2x2 poolings, floored as PyTorch does
        if side == 0 {
            return Err(Error::Other(format!(
                "face crops of {size} pixels leave nothing after three 2x2 poolings (at least 8)"
            )));
        }
        let features = Linear::new(
            store,
            &format!("{name}.features"),
            cin * side * side,
            features,
        )?;
        Ok(FaceCnn { convs, features })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for conv in &self.convs {
            // = max_pool(relu(conv(x))): see the module doc
            x = ops::max_pool_2x2(&conv.forward(&x)?)?.relu()?;
        }
        sigmoid(&self.features.forward(&x.flatten_from(1)?)?)
    }
}

/// NN2 on 5 landmarks: (N, 10) normalised coordinates → features (N, F) in (0, 1).
pub struct LandmarksMlp {
    parts: Vec<Linear>,
    dense: [Linear; 2],
    features: Linear,
}

impl LandmarksMlp {
    pub fn new(store: &mut ParamStore, name: &str, features: usize) -> Result<Self> {
        let parts = PARTS
            .iter()
            .enumerate()
            .map(|(i, (_, n))| {
                Linear::new(store, &format!("{name}.part{}", i + 1), *n, PART_FEATURES)
            })
            .collect::<Result<Vec<_>>>()?;
        let dense = [
            Linear::new(
                store,
                &format!("{name}.dense1"),
                PARTS.len() * PART_FEATURES,
                LANDMARK_HIDDEN,
            )?,
            Linear::new(
                store,
                &format!("{name}.dense2"),
                LANDMARK_HIDDEN,
                LANDMARK_HIDDEN,
            )?,
        ];
        let features = Linear::new(
            store,
            &format!("{name}.features"),
            LANDMARK_HIDDEN,
            features,
        )?;
        Ok(LandmarksMlp {
            parts,
            dense,
            features,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let parts = PARTS
            .iter()
            .zip(&self.parts)
            .map(|((start, n), layer)| {
                sigmoid(&layer.forward(&x.narrow(D::Minus1, *start, *n)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut h = Tensor::cat(&parts, D::Minus1)?;
        for layer in &self.dense {
            h = sigmoid(&layer.forward(&h)?)?;
        }
        sigmoid(&self.features.forward(&h)?)
    }
}

/// The mean of x (B, F, D) over the frames where `mask` (B, F) is 1; the zero vector for a row without any.
pub fn frame_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.maximum(1f32)?;
    Ok(sum.broadcast_div(&count)?)
}

/// The visual encoder of `visual_crop: faces`: NN1, NN2 or both (features concatenated), per frame, averaged
/// over the frames with a face.
pub struct FaceNet {
    cnn: Option<FaceCnn>,
    landmarks: Option<LandmarksMlp>,
    features: usize,
}

impl FaceNet {
    /// `cnn`: the CNN's channels, `None` without the CNN; `landmarks`: with the landmarks MLP.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        cnn: Option<[usize; 3]>,
        landmarks: bool,
        size: usize,
        features: usize,
    ) -> Result<Self> {
        Ok(FaceNet {
            cnn: cnn
                .map(|channels| {
                    FaceCnn::new(store, &format!("{name}.cnn"), channels, size, features)
                })
                .transpose()?,
            landmarks: landmarks
                .then(|| LandmarksMlp::new(store, &format!("{name}.landmarks"), features))
                .transpose()?,
            features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.features * (usize::from(self.cnn.is_some()) + usize::from(self.landmarks.is_some()))
    }

    pub fn forward(&self, faces: &FaceBatch) -> Result<Tensor> {
        let (b, frames) = faces.mask.dims2()?;
        let mut out = Vec::new();
        if let Some(cnn) = &self.cnn {
            let (_, _, c, h, w) = faces.crops.dims5()?;
            let y = cnn.forward(&faces.crops.reshape((b * frames, c, h, w))?)?;
            out.push(frame_mean(&y.reshape((b, frames, ()))?, &faces.mask)?);
        }
        if let Some(mlp) = &self.landmarks {
            let y = mlp.forward(&faces.landmarks.reshape((b * frames, LANDMARK_VALUES))?)?;
            out.push(frame_mean(&y.reshape((b, frames, ()))?, &faces.mask)?);
        }
        Ok(Tensor::cat(&out, D::Minus1)?)
    }
}
